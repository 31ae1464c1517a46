"""Benchmark 8's own parts (benchmarks/likelihood.py): the paired comparison, the prediction-only
ablation, and its report. The benchmark itself trains models and is not run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from oracles import FixedV

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not of the package
    sys.path.insert(0, str(ROOT))

from benchmarks import likelihood, report  # noqa: E402
from diffusionkit import ClipX0, CosineSchedule, DenoiseDiffusion, UNet  # noqa: E402


def test_prediction_only_samples_like_the_fixed_variance_model_of_the_same_prediction():
    torch.manual_seed(0)
    base = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    schedule = CosineSchedule(20)
    learned = DenoiseDiffusion(
        FixedV(base, 0.7), schedule, learned_variance=True, x0_processing=ClipX0()
    )
    fixed = DenoiseDiffusion(base, schedule, x0_processing=ClipX0())
    ablation = likelihood.prediction_only(learned)
    assert not ablation.learned_variance
    assert ablation.x0_processing == ClipX0()

    def sample(model, **kw):
        return model.reverse_sample(
            (3, 1, 8, 8), generator=torch.Generator().manual_seed(1), progress=False, **kw
        )

    for kw in ({}, {"steps": 5}):
        torch.testing.assert_close(sample(ablation, **kw), sample(fixed, **kw), rtol=0, atol=0)
        # the learned variance (v = 0.7, near beta_t) changes the samples
        assert not torch.allclose(sample(learned, **kw), sample(fixed, **kw))


def test_paired_difference_is_seed_by_seed():
    d = likelihood.paired_difference([1.0, 2.0, 3.5], [1.5, 1.0, 3.0])
    assert d["mean"] == pytest.approx((-0.5 + 1.0 + 0.5) / 3)
    diffs = torch.tensor([-0.5, 1.0, 0.5], dtype=torch.float64)
    assert d["stderr"] == pytest.approx(float(diffs.std() / 3**0.5))
    assert (d["wins"], d["n"]) == (1, 3)
    with pytest.raises(ValueError):  # unpaired lists are an error, not a silent truncation
        likelihood.paired_difference([1.0, 2.0], [1.0])


def _budget(name: str, learned_fd: list[float], timed: bool) -> dict:
    def row(bpd: float, fds: list[float]) -> dict:
        out = {
            "bpd": bpd,
            "bpd_stderr": 0.01,
            "terms_by_timestep": [0.5, 0.1, 0.01, 0.001],
            "fd": {
                "10": {"fd": 2.0, "fd_values": [2.0]},
                "20": {"fd": sum(fds) / len(fds), "fd_values": fds},
            },
        }
        if timed:
            out["cost"] = {"ratio": 1.25}
        return out

    fixed_fd = [1.0, 1.2]
    return {
        "name": name,
        "rows": {"fixed (beta_tilde)": row(1.7, fixed_fd), "learned": row(1.6, learned_fd)},
        "learned_prediction_fd": {"fd": 1.05, "fd_values": [1.0, 1.1]},
        "fd_difference": likelihood.paired_difference(learned_fd, fixed_fd),
        "fd_difference_prediction": likelihood.paired_difference([1.0, 1.1], fixed_fd),
        "bpd_met": True,
        "fd_met": sum(learned_fd) < sum(fixed_fd),
    }


def test_report_states_each_budgets_verdict_and_draws_the_chart(tmp_path):
    result = {
        "n_samples": 64,
        "seeds": [0],
        "target_seeds": [0, 1],
        "calls": [10, 20],
        "fd_calls": 20,
        "budgets": [_budget("short", [1.3, 1.5], True), _budget("long", [0.9, 1.0], False)],
        "bpd_met": True,
        "fd_met": False,
    }
    md = "\n".join(report._likelihood_md(result))
    assert "| short | learned | 1.600 ± 0.010 | 2.000 | 1.400 |" in md
    assert "| short | 1.100 | 1.400 | +0.300 ± 0.000 (0 of 2) | 1.050 | -0.050 ± 0.050 |" in md
    assert "| long | 1.100 | 0.950 | -0.150 ± 0.050 (2 of 2) |" in md
    assert "short: **not met**, long: met" in md
    assert "(short): fixed (beta_tilde) 1.25, learned 1.25." in md
    assert "within 2x of sampling with all T steps: met" in md
    path = tmp_path / "likelihood.png"
    report.likelihood_chart(result, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
