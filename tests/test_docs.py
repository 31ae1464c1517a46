"""Every ```python block of README.md and docs/**/*.md runs as written, so the docs cannot rot.

Each page's blocks run in order in one namespace (a later block may use an earlier one's
names), in a fresh temporary working directory. A block whose first line is
``# requires: network`` is skipped, and one whose first line is ``# requires: gpu`` runs only
where CUDA is available; the test report lists each skipped block with its page, line and
reason. Tracebacks point at the page and line of the Markdown file.

A block that is too slow to run as written (a real training run) may be preceded by HTML
comments, invisible on the site, that shrink it for the test, e.g.::

    <!-- docs-test: replace "steps=3000" with "steps=3" -->
    ```python
    trainer = Trainer(model, "digits", batch_size=128, lr=2e-3, steps=3000)
    ```

Each replaced text must occur in the block, so a directive cannot silently go stale.

``mkdocs build --strict`` itself runs in ``.ci/run``, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])

# A fenced block opened by ```python (optionally with attributes, e.g. ```python title="x.py"),
# possibly indented inside a list or an admonition; closed by a ``` at the same indentation.
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python(?:[ \t]+[^\n]*)?\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    flags=re.DOTALL | re.MULTILINE,
)
# <!-- docs-test: replace "OLD" with "NEW" --> lines right above a fence
DIRECTIVES = re.compile(
    r'(?:^[ \t]*<!--\s*docs-test:\s*replace\s+"[^"\n]*"\s+with\s+"[^"\n]*"\s*-->[ \t]*\n)+\Z',
    flags=re.MULTILINE,
)
REPLACE = re.compile(r'replace\s+"(?P<old>[^"\n]*)"\s+with\s+"(?P<new>[^"\n]*)"')
REQUIRES = re.compile(r"#\s*requires:\s*(?P<what>[\w-]+)")
KNOWN_REQUIREMENTS = {"network", "gpu"}
MAX_ASSET_BYTES = 1_000_000


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line in the page
    code: str  # as shown on the page
    replacements: tuple[tuple[str, str], ...] = ()  # (old, new) from docs-test directives

    @property
    def test_code(self) -> str:
        """The code the test runs: ``code`` with the docs-test replacements applied."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(
                    f"{self.name}: docs-test replaces {old!r}, which is not in the block"
                )
            code = code.replace(old, new)
        return code

    @property
    def requirement(self) -> str | None:
        first = self.code.lstrip("\n").split("\n", 1)[0].strip()
        match = REQUIRES.fullmatch(first)
        return match["what"] if match else None

    @property
    def name(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        indent = match["indent"]
        lines = match["body"].split("\n")
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        first_line = text.count("\n", 0, match.start("body")) + 1
        directives = DIRECTIVES.search(text, 0, match.start())
        replacements = tuple(
            (r["old"], r["new"]) for r in REPLACE.finditer(directives[0] if directives else "")
        )
        blocks.append(Block(page, first_line, code, replacements))
    return blocks


def missing_requirement(block: Block) -> str | None:
    """Why ``block`` cannot run here, or ``None`` if it can."""
    need = block.requirement
    if need is None:
        return None
    if need not in KNOWN_REQUIREMENTS:
        raise ValueError(
            f"{block.name}: unknown '# requires: {need}'; use one of {sorted(KNOWN_REQUIREMENTS)}"
        )
    if need == "gpu" and torch.cuda.is_available():
        return None
    return f"{block.name} requires {need}"


def run_page(page: Path) -> list[str]:
    """Run the page's blocks in order in one namespace; return the reasons of skipped ones."""
    namespace: dict = {"__name__": "__main__"}
    skipped = []
    for block in python_blocks(page):
        reason = missing_requirement(block)
        if reason is not None:
            skipped.append(reason)
            continue
        # pad with newlines so that tracebacks show the line numbers of the Markdown page
        source = "\n" * (block.line - 1) + block.test_code
        exec(compile(source, str(page), "exec"), namespace)
    return skipped


def _distinct_pages(pages: list[Path]) -> list[Path]:
    """Pages with Python blocks, leaving out a page whose blocks repeat an earlier page's
    exactly (the README and the home page share their quickstart): running them twice would
    test nothing new."""
    seen: set[tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = set()
    distinct = []
    for page in pages:
        key = tuple((b.code, b.replacements) for b in python_blocks(page))
        if key and key not in seen:
            seen.add(key)
            distinct.append(page)
    return distinct


RUNNABLE = _distinct_pages(PAGES)
SKIPPED_BLOCKS = [b for p in RUNNABLE for b in python_blocks(p) if b.requirement is not None]


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_python_blocks_run(page, in_tmp_dir):
    run_page(page)


@pytest.mark.parametrize("block", SKIPPED_BLOCKS, ids=[b.name for b in SKIPPED_BLOCKS])
def test_marked_block_needs_what_it_says(block):
    """Reports each marked block: run where possible (a GPU block on CUDA), skipped otherwise."""
    reason = missing_requirement(block)
    if reason is not None:
        pytest.skip(reason)
    compile(block.code, block.name, "exec")  # runs in test_page_python_blocks_run


def test_readme_and_home_page_have_a_quickstart():
    for page in (ROOT / "README.md", DOCS / "index.md"):
        blocks = python_blocks(page)
        assert blocks, f"{page.name} lost its Python quickstart"
        lines = [line for line in blocks[0].code.splitlines() if line.strip()]
        assert len(lines) < 15, f"{page.name}'s quickstart grew to {len(lines)} lines"
        assert "reverse_sample" in blocks[0].code and ".loss(" in blocks[0].code


def test_assets_are_small():
    for path in sorted((DOCS / "assets").rglob("*")):
        if path.is_file():
            size = path.stat().st_size
            assert size < MAX_ASSET_BYTES, f"{path.relative_to(ROOT)} is {size / 1e6:.1f} MB"


def test_block_extraction_handles_indentation_and_markers(tmp_path):
    """The extractor itself: indented fences, attributes, markers, and non-Python fences."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n"
        "```python\nx = 1\n```\n"
        "```bash\nrm -rf /\n```\n"
        '!!! note\n    ```python title="a.py"\n    y = x + 1\n    ```\n'
        "```python\n# requires: network\nz = download()\n```\n",
        encoding="utf-8",
    )
    blocks = python_blocks(page)
    assert [b.code for b in blocks] == [
        "x = 1\n",
        "y = x + 1\n",
        "# requires: network\nz = download()\n",
    ]
    assert [b.line for b in blocks] == [3, 10, 13]
    assert [b.requirement for b in blocks] == [None, None, "network"]
    assert run_page(page) == [f"{blocks[2].name} requires network"]


def test_docs_test_directives_shrink_a_block_and_must_match(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n\n"
        '<!-- docs-test: replace "steps=3000" with "steps=3" -->\n'
        '<!-- docs-test: replace "big" with "small" -->\n'
        "```python\nsize, steps = 'big', dict(steps=3000)['steps']\n```\n\n"
        "```python\nuntouched = 'steps=3000'\n```\n"
        '<!-- docs-test: replace "absent" with "x" -->\n\n'
        "```python\nalso_untouched = 1\n```\n",
        encoding="utf-8",
    )
    first, second, third = python_blocks(page)
    assert first.replacements == (("steps=3000", "steps=3"), ("big", "small"))
    assert "steps=3000" in first.code  # the page shows the real numbers
    namespace: dict = {}
    exec(first.test_code, namespace)
    assert (namespace["size"], namespace["steps"]) == ("small", 3)
    # a directive applies only to the fence right below it (no blank line between)
    assert second.replacements == () and third.replacements == ()
    stale = Block(page, 1, "x = 1\n", (("steps=3000", "steps=3"),))
    with pytest.raises(ValueError, match="not in the block"):
        stale.test_code
