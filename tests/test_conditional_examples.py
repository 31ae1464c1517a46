"""The conditional example and benchmark (issue 14): super-resolution end to end on a tiny model,
the guidance table of class-conditional samples, and the benchmark's report section."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data.fashion_mnist import SYSTEM_DIR

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "super_resolution.py"
needs_fashion_mnist = pytest.mark.skipif(
    not SYSTEM_DIR.is_dir(), reason=f"Fashion-MNIST files not installed in {SYSTEM_DIR}"
)


def example_module() -> dict:
    return runpy.run_path(str(EXAMPLE), run_name="super_resolution")


def test_downsample_averages_2x2_blocks_and_psnr_measures_in_db():
    sr = example_module()
    images = np.array([[[0, 2, 10, 10], [4, 6, 10, 11], [0, 0, 1, 1], [0, 0, 1, 2]]], np.uint8)
    assert sr["downsample"](images).tolist() == [[[3, 10], [0, 1]]]  # 10.25 and 1.25 round down
    a = torch.zeros(2, 1, 4, 4)
    assert sr["psnr"](a, a + 0.2) == pytest.approx(20.0)  # error 0.1 on the [0, 1] scale


@needs_fashion_mnist
def test_super_resolution_example_runs_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--tiny", "--results", "scores.json"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    pairs = tmp_path / "runs" / "fashion-sr-pairs"
    assert len(list((pairs / "train" / "lr").rglob("*.png"))) == 64
    assert "--cond-data runs/fashion-sr-pairs/train/lr" in out  # trained through the CLI
    assert "| bilinear |" in out and "| diffusionkit, 3 calls of dpm++2m-sde |" in out
    assert (tmp_path / "super-resolution.png").stat().st_size > 0
    assert (tmp_path / "scores.json").is_file()
    # a second run reuses the pairs and the finished model
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "diffusionkit train" not in capsys.readouterr().out


def _tiny_class_model() -> DenoiseDiffusion:
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4, mid_attn=False,
               num_classes=10)  # fmt: skip
    return DenoiseDiffusion(net, LinearSchedule(timesteps=50))


def test_guidance_table_scores_each_scale():
    from benchmarks import conditional
    from benchmarks.quality import digits_split, load_classifier

    table = conditional.guidance_table(
        _tiny_class_model(), load_classifier("digits"), digits_split().test_images[:50],
        image_shape=(1, 16, 16), scales=(0.0, 1.0), sampler="ddim", calls=2, per_class=3,
        seeds=(0,),
    )  # fmt: skip
    assert set(table) == {"0", "1"}
    for row in table.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and len(row["per_class"]) == 10
        assert row["fd"] > 0


def test_the_report_renders_the_conditional_section():
    from benchmarks import report

    scales = {
        f"{w:g}": {"accuracy": a, "per_class": [a] * 9 + [a - 0.05], "fd": fd}
        for w, a, fd in ((0, 0.1, 2.3), (1, 0.97, 0.37), (2, 0.998, 0.8), (4, 1.0, 1.8))
    }
    row = {"fd": 3.0, "accuracy": 0.8, "psnr": 20.0, "input_psnr": 30.0}
    section = {
        "digits": {
            "command": "diffusionkit train --data digits --class-conditional",
            "per_class": 100, "seeds": [0, 1], "real_accuracy": 0.985,
            "samplers": {"dpm++2m-sde, 10 calls": {"scales": scales, "best_scale": "4"}},
        },
        "super_resolution": {
            "command": "python examples/super_resolution.py", "images": 1000, "seeds": [0, 1],
            "rows": {"bilinear": row, "true images": {**row, "psnr": 100.0}},
        },
    }  # fmt: skip
    text = "\n".join(report._conditional_md(section))
    assert "| 4 | **1.000** | 0.95 (9) | 1.80 |" in text
    assert "At least 95% of the asked class at the best scale: met" in text
    assert "| true images | 3.00 | 0.800 | exact | 30.00 |" in text
