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
import torch

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


def test_inpaint(capsys, tmp_path):
    from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet

    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, True), groups=4)
    DenoiseDiffusion(net, LinearSchedule(timesteps=50)).save_pretrained(tmp_path / "model")
    run_example(
        "inpaint.py",
        "--model", str(tmp_path / "model"), "-n", "2", "--attempts", "2", "--steps", "3",
        "--resample-jumps", "1", "--mask", "center", "--out", "inpainted.png",
    )  # fmt: skip
    assert "rows = original, masked input, 2 inpaintings" in capsys.readouterr().out
    assert (tmp_path / "inpainted.png").stat().st_size > 0


def test_inpaint_without_a_model_says_how_to_train_one(tmp_path):
    with pytest.raises(SystemExit, match="diffusionkit train --data digits"):
        run_example("inpaint.py", "--model", str(tmp_path / "missing"))


def save_tiny_diffusers_pipeline(folder: Path) -> None:
    """A ``DDPMPipeline`` with google/ddpm-cifar10-32's block types at a tiny size."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        norm_num_groups=4,
        norm_eps=1e-6,
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
    )
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=50, variance_type="fixed_large", clip_sample=True
    )
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


def test_load_diffusers_checkpoint(capsys, tmp_path):
    save_tiny_diffusers_pipeline(tmp_path / "pipeline")
    run_example(
        "load_diffusers_checkpoint.py",
        "--model", str(tmp_path / "pipeline"), "--image-size", "8", "-n", "2", "--steps", "3",
        "--out", "grid.png",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "sampled 2 images in 3 steps" in out
    assert (tmp_path / "grid.png").stat().st_size > 0
