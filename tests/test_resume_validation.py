"""Finding 2: a resume continues the same problem, and the settings it may change take effect.

Settings that define the model or the objective (network, schedule and T, prediction, image
size, data, seed) must match the checkpoint, or the resume is refused naming each difference;
the others (learning rate, weight decay, betas, steps, ...) are applied for real, reported, and
only what is in effect is recorded.
"""

from __future__ import annotations

import json

import pytest
import torch

from diffusionkit import CosineSchedule, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.cli import main
from diffusionkit.training import Trainer, load_checkpoint

QUIET = dict(progress=False, sample_every=0, sample_count=4, export=False)


def model(timesteps: int = 50, schedule=LinearSchedule, prediction: str = "eps", dim: int = 8):
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=dim, dim_mults=(1,), attns=(False,), groups=4, n_blocks=1,
               mid_attn=False)  # fmt: skip
    return DenoiseDiffusion(net, schedule(timesteps=timesteps), prediction=prediction)


def data(size: int = 8, n: int = 20):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture
def run(tmp_path):
    """A run folder with checkpoints at steps 2 and 4 (T = 50, linear, eps, 8x8, seed 0)."""
    Trainer(model(), data(), batch_size=4, lr=1e-3, steps=4, out_dir=tmp_path,
            checkpoint_every=2, **QUIET).train()  # fmt: skip
    return tmp_path


@pytest.mark.parametrize(
    ("changed", "needles"),
    [
        (dict(diffusion=model(timesteps=60)), ["schedule.config.timesteps", "50", "60"]),
        (dict(diffusion=model(schedule=CosineSchedule)), ["schedule.class", "LinearSchedule"]),
        (dict(diffusion=model(prediction="v")), ["prediction", "'eps'", "'v'"]),
        (dict(dataset=data(size=16)), ["image shape", "(1, 8, 8)", "(1, 16, 16)"]),
        (dict(dataset=data(n=24)), ["dataset size", "20", "24"]),
        (dict(seed=3), ["seed", "0", "3"]),
        (dict(diffusion=model(dim=12)), ["net.config.dim", "8", "12"]),
    ],
)
def test_settings_that_define_the_problem_cannot_change(run, changed, needles):
    kwargs = dict(diffusion=model(), dataset=data(), batch_size=4, lr=1e-3, steps=6,
                  out_dir=run, checkpoint_every=2, **QUIET)  # fmt: skip
    kwargs.update(changed)
    trainer = Trainer(**kwargs)
    with pytest.raises(ValueError, match="does not fit this model") as info:
        trainer.resume()
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert "cannot change when a run is resumed" in message
    assert trainer.step == 0  # nothing was loaded


def test_optimizer_settings_changed_on_resume_take_effect_and_are_reported(run):
    trainer = Trainer(model(), data(), batch_size=4, lr=5e-4, steps=6, out_dir=run,
                      checkpoint_every=2, weight_decay=0.3, adam_betas=(0.8, 0.95),
                      **QUIET)  # fmt: skip
    trainer.resume()
    for group in trainer.optimizer.param_groups:
        assert group["weight_decay"] == 0.3  # was silently kept at the checkpoint's 0.0
        assert group["betas"] == (0.8, 0.95)
    report = trainer.resume_report
    assert report is not None and report.step == 4 and report.verified
    assert report.changed["weight_decay"] == (0.0, 0.3)
    assert report.changed["lr"] == (1e-3, 5e-4)
    assert report.changed["adam_betas"] == ([0.9, 0.999], [0.8, 0.95])
    assert report.changed["steps"] == (4, 6)
    assert "weight_decay 0.0 -> 0.3" in (report.changes() or "")
    trainer.train()
    # what is recorded is what was in effect
    state = load_checkpoint(run).state
    assert state["step"] == 6
    assert state["trainer"]["weight_decay"] == 0.3
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.3
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.8, 0.95]


def test_the_decoupled_weight_decay_really_acts_after_resume(run):
    # the same resumed step with and without the new weight decay must give other weights
    def one_more_step(weight_decay: float) -> dict[str, torch.Tensor]:
        trainer = Trainer(model(), data(), batch_size=4, lr=1e-3, steps=5, out_dir=None,
                          weight_decay=weight_decay, **QUIET)  # fmt: skip
        trainer.resume(run)
        trainer.train()
        return {k: v.clone() for k, v in trainer.diffusion.net.state_dict().items()}

    plain, decayed = one_more_step(0.0), one_more_step(0.5)
    weight = "conv_in.weight" if "conv_in.weight" in plain else next(iter(plain))
    assert not torch.equal(plain[weight], decayed[weight])


TINY = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


@pytest.fixture
def cli_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "2", *TINY]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--timesteps", "30"], ["--timesteps 30 (the run has 20)"]),
        (["--schedule", "linear"], ["--schedule linear (the run has cosine)"]),
        (["--prediction", "v"], ["--prediction v (the run has eps)"]),
        (["--image-size", "16"], ["--image-size 16 (the run has 8)"]),
        (["--dim-mults", "1,2,2", "--image-size", "8"], ["--dim-mults 1,2,2 (the run has 1,2)"]),
        (["--timesteps", "30", "--seed", "1"], ["--timesteps 30", "--seed 1 (the run has 0)"]),
    ],
)
def test_cli_resume_refuses_to_change_the_model_naming_each_flag(cli_run, capsys, args, needles):
    before = (cli_run / "train_config.json").read_text()
    code = main(["train", "--out", str(cli_run), "--resume", "--steps", "4", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    for needle in needles:
        assert needle in err, err
    assert (cli_run / "train_config.json").read_text() == before  # nothing recorded
    assert load_checkpoint(cli_run).step == 2  # nothing trained


def test_cli_resume_applies_and_reports_what_may_change(cli_run, capsys):
    code = main(["train", "--out", str(cli_run), "--resume", "--steps", "4",
                 "--weight-decay", "0.3", "--lr", "0.001"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "changed on resume:" in out
    assert "--weight-decay 0.0 -> 0.3" in out and "--lr 0.002 -> 0.001" in out
    assert "--steps 2 -> 4" in out
    settings = json.loads((cli_run / "train_config.json").read_text())
    assert settings["weight_decay"] == 0.3 and settings["steps"] == 4
    state = load_checkpoint(cli_run).state
    assert state["step"] == 4
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.3  # in effect
