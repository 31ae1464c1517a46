"""Learned variances (Nichol & Dhariwal 2021): sampling, the hybrid loss, the bound, checkpoints,
guidance and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from oracles import FixedV, seeded
from torch import Tensor, nn

from diffusionkit import (
    CosineSchedule,
    DDIMSampler,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    PosteriorMeanSampler,
    UNet,
)
from diffusionkit.cli import main
from diffusionkit.variance import learned_log_variance


def tiny_unet(out_factor: int = 1, **kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(
        in_channels=1,
        out_channels=out_factor,
        dim=8,
        dim_mults=(1, 2),
        attns=(False, False),
        groups=4,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("v", "sampler"),
    [(1.0, DDPMSampler("beta")), (-1.0, DDPMSampler("posterior")), (-1.0, PosteriorMeanSampler())],
    ids=["ddpm-beta", "ddpm-posterior", "posterior-mean"],
)
@pytest.mark.parametrize("steps", [None, 7])
def test_v_at_either_end_reproduces_the_fixed_variance_samplers(v, sampler, steps):
    """v = 1 is beta_t, v = -1 beta_tilde_t, on the full and on a respaced schedule (whose
    betas are the respaced ones), to float rounding."""
    base = tiny_unet()
    schedule = CosineSchedule(30)
    fixed = DenoiseDiffusion(base, schedule, sampler=sampler)
    learned = DenoiseDiffusion(FixedV(base, v), schedule, sampler=sampler, learned_variance=True)
    shape = (3, 1, 8, 8)
    want = fixed.reverse_sample(shape, generator=seeded(0), steps=steps, progress=False)
    got = learned.reverse_sample(shape, generator=seeded(0), steps=steps, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=2e-6)  # float rounding


def test_the_learned_variance_is_used_between_the_ends() -> None:
    """v = 0: the geometric mean of beta_t and beta_tilde_t; the chain differs from both ends."""
    base = tiny_unet()
    schedule = LinearSchedule(50)
    samples = [
        DenoiseDiffusion(FixedV(base, v), schedule, learned_variance=True).reverse_sample(
            (2, 1, 8, 8), generator=seeded(1), progress=False
        )
        for v in (-1.0, 0.0, 1.0)
    ]
    assert not torch.allclose(samples[0], samples[1]) and not torch.allclose(samples[1], samples[2])
    log_var = learned_log_variance(torch.zeros(1), math.log(0.02), math.log(0.005))
    assert log_var.exp().item() == pytest.approx(math.sqrt(0.02 * 0.005))


def test_deterministic_solvers_use_the_prediction_alone() -> None:
    base = tiny_unet()
    schedule = LinearSchedule(50)
    fixed = DenoiseDiffusion(base, schedule)
    learned = DenoiseDiffusion(FixedV(base, 0.3), schedule, learned_variance=True)
    for sampler in (DDIMSampler(), "dpm++2m", "heun"):
        want = fixed.reverse_sample(
            (2, 1, 8, 8), generator=seeded(2), sampler=sampler, steps=5, progress=False
        )
        got = learned.reverse_sample(
            (2, 1, 8, 8), generator=seeded(2), sampler=sampler, steps=5, progress=False
        )
        torch.testing.assert_close(got, want)


def test_hybrid_loss_is_simple_loss_plus_weighted_bound_term_with_the_mean_stopped() -> None:
    net = tiny_unet(out_factor=2)
    schedule = LinearSchedule(50)
    x0 = torch.rand(6, 1, 8, 8, generator=seeded(3)) * 2 - 1
    t = torch.tensor([0, 1, 5, 20, 30, 49])

    def grads(vlb_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
        model = DenoiseDiffusion(net, schedule, learned_variance=True, vlb_weight=vlb_weight)
        net.zero_grad()
        loss = model.loss(x0, t, generator=seeded(4))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    simple, g0 = grads(0.0)
    hybrid, g1 = grads(0.5)
    # L_simple alone: the mse of the first C channels against eps
    noise = torch.randn(x0.shape, generator=seeded(4))
    model = DenoiseDiffusion(net, schedule, learned_variance=True)
    x_t, _ = model.forward_sample(x0, t, noise)
    with torch.no_grad():
        out = net(x_t, t)
    assert simple.item() == pytest.approx(torch.mean((out[:, :1] - noise) ** 2).item(), rel=1e-5)
    # the bound's term: the mean's gradient is stopped, so the vlb gradient reaches the
    # network only through the variance channel
    terms = hybrid - simple
    assert terms.item() > 0
    last = net.conv_out
    grad_mean_rows = g1["conv_out.weight"][:1] - g0["conv_out.weight"][:1]
    grad_var_rows = g1["conv_out.weight"][1:] - g0["conv_out.weight"][1:]
    assert torch.allclose(grad_mean_rows, torch.zeros_like(grad_mean_rows), atol=1e-7)
    assert grad_var_rows.abs().max() > 1e-6
    assert last.out_channels == 2


def test_vlb_term_matches_the_bound_term_with_v_fixed() -> None:
    """With v = -1, the hybrid loss's extra term is vlb_weight * T * the mean of the bound's
    terms of the fixed beta_tilde model at the same timesteps and noise."""
    base = tiny_unet()
    schedule = LinearSchedule(50)
    learned = DenoiseDiffusion(FixedV(base, -1.0), schedule, learned_variance=True, vlb_weight=0.01)
    x0 = torch.rand(4, 1, 8, 8, generator=seeded(5)) * 2 - 1
    t = torch.tensor([0, 3, 17, 49])
    simple = DenoiseDiffusion(base, schedule).loss(x0, t, generator=seeded(6))
    hybrid = learned.loss(x0, t, generator=seeded(6))
    # the same terms from the likelihood code, at the same x_t
    from diffusionkit.likelihood import bound_term, fixed_log_variance
    from diffusionkit.prediction import predicted_x0
    from diffusionkit.samplers import Variance

    x_t, _ = learned.forward_sample(x0, t, torch.randn(x0.shape, generator=seeded(6)))
    a = schedule.sqrt_alphas_cumprod[t].float().view(-1, 1, 1, 1)
    b = schedule.sqrt_one_minus_alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        x0_hat = predicted_x0(base(x_t, t), x_t, a, b, learned.prediction)
    log_var = fixed_log_variance(Variance.POSTERIOR, schedule)[t].float().view(-1, 1, 1, 1)
    terms = bound_term(x0, x_t, t, x0_hat, log_var, schedule)
    assert (hybrid - simple).item() == pytest.approx(0.01 * 50 * terms.mean().item(), rel=1e-4)


def test_nll_with_v_at_the_lower_end_equals_the_fixed_posterior_variance() -> None:
    base = tiny_unet()
    schedule = CosineSchedule(40)
    x0 = torch.rand(3, 1, 8, 8, generator=seeded(7)) * 2 - 1
    fixed = DenoiseDiffusion(base, schedule).nll(x0, generator=seeded(8), progress=False)
    learned = DenoiseDiffusion(FixedV(base, -1.0), schedule, learned_variance=True)
    torch.testing.assert_close(learned.nll(x0, generator=seeded(8), progress=False), fixed)


def test_guidance_guides_the_prediction_and_keeps_the_conditional_variance() -> None:
    class Labelled(nn.Module):
        num_classes = 3

        def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
            shift = (labels.float() + 1).view(-1, 1, 1, 1)  # the null label -1 gives 0
            return torch.cat([x * 0.1 + shift, torch.full_like(x, 0.5) * shift - 0.5], dim=1)

    model = DenoiseDiffusion(Labelled(), LinearSchedule(50), learned_variance=True)
    from diffusionkit.guidance import guided
    from diffusionkit.view import network_call

    call = guided(network_call(model.net, True), torch.tensor([2]), None, 3.0, True)
    x, t = torch.zeros(1, 1, 2, 2), torch.tensor([10])
    out = call(x, t)
    assert torch.allclose(out[:, :1], torch.full((1, 1, 2, 2), 0.0 + 3.0 * 3.0))  # 0 + 3 (3 - 0)
    assert torch.allclose(out[:, 1:], torch.full((1, 1, 2, 2), 0.5 * 3 - 0.5))  # conditional v


def test_network_and_flag_must_agree() -> None:
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="out_channels = 2 \\* in_channels"):
        DenoiseDiffusion(tiny_unet(), LinearSchedule(50), learned_variance=True).loss(x)
    with pytest.raises(ValueError, match="learned_variance=True"):
        DenoiseDiffusion(tiny_unet(out_factor=2), LinearSchedule(50)).loss(x)
    with pytest.raises(ValueError, match="vlb_weight"):
        DenoiseDiffusion(tiny_unet(out_factor=2), vlb_weight=-1.0, learned_variance=True)
    with pytest.raises(TypeError, match="learned_variance must be a bool"):
        DenoiseDiffusion(tiny_unet(out_factor=2), learned_variance="yes")


def test_checkpoints_keep_the_learned_variance_and_older_formats_load_fixed(tmp_path) -> None:
    model = DenoiseDiffusion(
        tiny_unet(out_factor=2), LinearSchedule(50), learned_variance=True, vlb_weight=0.002
    )
    model.save_pretrained(tmp_path / "m")
    loaded = DenoiseDiffusion.from_pretrained(tmp_path / "m")
    assert loaded.learned_variance and loaded.vlb_weight == 0.002
    assert "| reverse variance | learned" in (tmp_path / "m" / "README.md").read_text()
    x = torch.rand(2, 1, 8, 8, generator=seeded(9)) * 2 - 1
    assert torch.equal(loaded.loss(x, generator=seeded(10)), model.loss(x, generator=seeded(10)))
    # a format-2 config (before learned variances) loads with fixed variances
    fixed = DenoiseDiffusion(tiny_unet(), LinearSchedule(50))
    fixed.save_pretrained(tmp_path / "f")
    path = tmp_path / "f" / "config.json"
    config = json.loads(path.read_text())
    config["diffusionkit_format"] = 2
    del config["learned_variance"], config["vlb_weight"]
    path.write_text(json.dumps(config))
    assert DenoiseDiffusion.from_pretrained(tmp_path / "f").learned_variance is False
    config["learned_variance"] = True
    path.write_text(json.dumps(config))
    with pytest.raises(Exception, match="'learned_variance' does not exist in format 2"):
        DenoiseDiffusion.from_pretrained(tmp_path / "f")


TINY = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--checkpoint-every", "2", "--no-progress",
]  # fmt: skip


def test_cli_trains_resumes_and_samples_a_learned_variance_model(tmp_path, capsys) -> None:
    run = tmp_path / "lv"
    assert main(["train", "--out", str(run), "--steps", "2", "--learned-variance", *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["learned_variance"] is True and config["net"]["config"]["out_channels"] == 2
    capsys.readouterr()
    code = main(["train", "--out", str(run), "--resume", "--learned-variance", "false"])
    assert code == 2
    assert "--learned-variance false (the run has true)" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--steps", "3"]) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(run), "-n", "4", "--out", str(grid)]) == 0
    assert grid.is_file()
