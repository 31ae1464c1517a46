"""Griffe extension for the API reference: render Sphinx cross-reference roles as inline code.

diffusionkit's docstrings are Google style with Sphinx roles such as
``:class:`~diffusionkit.UNet``` or ``:func:`load_dataset```, which Markdown would show
literally. This turns each role into inline code: ``~`` keeps the last dotted component, as in
Sphinx, and an explicit title (``:meth:`the loss <DenoiseDiffusion.loss>```) is kept. It
changes only the rendered documentation, never the code. Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const|term):`([^`]+)`")
TITLED = re.compile(r"(?P<title>.*?)\s*<(?P<target>[^>]+)>")


def _render(match: re.Match[str]) -> str:
    text = match[1].strip()
    titled = TITLED.fullmatch(text)
    if titled:
        return f"`{titled['title']}`"
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def strip_roles(docstring: str) -> str:
    """``docstring`` with every Sphinx role replaced by inline code."""
    return ROLE.sub(_render, docstring)


class SphinxRoles(griffe.Extension):
    """Rewrites the docstring of every loaded object."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
