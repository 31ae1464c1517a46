"""MkDocs hook: serve MathJax from the site itself, so its math renders with no CDN.

MathJax 3.2.2 comes from the PyPI package ``django-static-mathjax`` (a dependency of the
``docs`` extra: a plain copy of MathJax's ``es5`` build, with no Django code or dependency).
This hook adds its files to the build under ``javascripts/mathjax/``, where ``mkdocs.yml``'s
``extra_javascript`` loads ``tex-mml-chtml.js``; MathJax finds its fonts and the extensions
it loads on demand (``\\require``, the accessibility menu, the SVG renderer) beside that file.
Only the one combined bundle the site loads is copied, not the eight others (about 10 MB
instead of 24). The files are part of the build, so ``mkdocs build`` and ``mkdocs serve``
both serve them, and nothing is committed. Loaded by ``hooks:`` in ``mkdocs.yml``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

DISTRIBUTION = "django-static-mathjax"
SITE_FOLDER = "javascripts/mathjax"  # where the site serves MathJax (see mkdocs.yml)
BUNDLE = "tex-mml-chtml.js"  # the one combined component the site loads


def mathjax_root() -> Path:
    """The installed MathJax ``es5`` folder (the one with ``tex-mml-chtml.js``)."""
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        raise PluginError(
            f"the docs need MathJax from the PyPI package {DISTRIBUTION!r}: "
            "pip install -e '.[docs]'"
        ) from None
    root = Path(str(dist.locate_file("mathjax/static/mathjax/es5")))
    if not (root / BUNDLE).is_file():
        raise PluginError(f"{DISTRIBUTION} {dist.version} has no {root / BUNDLE}")
    return root


def mathjax_files(root: Path) -> list[Path]:
    """The files of ``root`` the site needs, relative to it: the bundle it loads, the
    components and fonts in subfolders that MathJax loads on demand, and the licence."""
    needed = [Path(BUNDLE)]
    needed += sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.parent != root
    )
    return needed


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = mathjax_root()
    for rel in mathjax_files(root):
        files.append(
            File.generated(config, f"{SITE_FOLDER}/{rel.as_posix()}", abs_src_path=str(root / rel))
        )
    licence = root.parent / "LICENSE"  # Apache-2.0, shipped beside the MathJax it covers
    if licence.is_file():
        files.append(File.generated(config, f"{SITE_FOLDER}/LICENSE", abs_src_path=str(licence)))
    return files
