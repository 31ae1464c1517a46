"""Smoke tests of the training examples: each runs as written, with its tiny settings.

The Python examples run in this process through ``runpy`` (as ``python examples/NAME.py``
would), with ``DIFFUSIONKIT_EXAMPLE_TINY=1``, in a temporary working directory.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from diffusionkit.data.fashion_mnist import SYSTEM_DIR

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> None:
    argv = sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = argv


@pytest.fixture(autouse=True)
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFUSIONKIT_EXAMPLE_TINY", "1")
    return tmp_path


def _assert_run_folder(run: Path) -> None:
    for name in ("samples.png", "denoise.gif", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), f"{run / name} missing"
    assert any((run / "checkpoints").iterdir())


def test_train_digits_then_sample_grid_and_gif(tiny, capsys):
    run_example("train_digits.py", "--out", "runs/d")
    assert "trained 3 steps" in capsys.readouterr().out
    _assert_run_folder(tiny / "runs" / "d")
    run_example("sample_grid_and_gif.py", "--model", "runs/d", "--out", "out")
    assert "(5 steps)" in capsys.readouterr().out
    for name in ("samples.png", "denoise.gif", "denoise_x0.gif"):
        assert (tiny / "out" / name).is_file()


def test_train_image_folder_on_the_demo_shapes(tiny, capsys):
    run_example("train_image_folder.py", "--out", "runs/f")
    out = capsys.readouterr().out
    assert "16 images" in out and "'circle', 'square'" in out
    _assert_run_folder(tiny / "runs" / "f")


@pytest.mark.skipif(
    not SYSTEM_DIR.is_dir(), reason=f"Fashion-MNIST files not installed in {SYSTEM_DIR}"
)
def test_train_fashion_mnist(tiny, capsys):
    run_example("train_fashion_mnist.py", "--out", "runs/fm")
    assert "trained 2 steps" in capsys.readouterr().out
    _assert_run_folder(tiny / "runs" / "fm")


@pytest.mark.slow  # torchrun with two processes: about 10-40 s
def test_distributed_train_script(tiny):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "OUT": "runs/ddp"}
    done = subprocess.run(
        ["bash", str(EXAMPLES / "distributed_train.sh")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout
    _assert_run_folder(tiny / "runs" / "ddp")
