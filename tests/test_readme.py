"""Every Python block of README.md runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_a_quickstart():
    assert BLOCKS, "README.md lost its Python quickstart"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code):
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    if "samples" in namespace:
        assert namespace["samples"].shape == (4, 1, 16, 16)
        assert namespace["samples"].abs().max() <= 1
