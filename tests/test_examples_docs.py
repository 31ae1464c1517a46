"""Smoke tests of the examples owned by the docs: each runs as a user would, with tiny settings.

Each example runs in this process through ``runpy`` with its own command line (as
``python examples/NAME.py ARGS`` would), in a temporary working directory. The Hub example
pushes to the test Hub server that ``conftest.py`` started (``HF_ENDPOINT`` points at it).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> None:
    """Run ``examples/<name>`` as ``__main__`` with ``args`` as its command line."""
    argv = sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quickstart(capsys):
    run_example("quickstart.py")
    assert "samples (8, 1, 16, 16) in [-1.00, 1.00]" in capsys.readouterr().out


def test_hub_push_and_load_through_the_test_hub(capsys, hub_server):
    run_example(
        "hub_push_and_load.py",
        "--repo", "alice/example-digits", "--train-steps", "2", "--steps", "3", "-n", "2",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "pushed to alice/example-digits" in out
    assert "identical before saving and after loading" in out


def test_hub_push_and_load_local(capsys, tmp_path):
    run_example(
        "hub_push_and_load.py",
        "--local", "--train-steps", "2", "--steps", "3", "-n", "2", "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert "identical before saving and after loading" in capsys.readouterr().out
