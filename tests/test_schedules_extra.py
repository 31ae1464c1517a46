"""SigmoidSchedule, zero-terminal-SNR rescaling, and min-SNR-gamma loss weighting."""

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from oracles import GaussianOracle, seeded
from torch import nn

from diffusionkit import (
    CosineSchedule,
    DDIMSampler,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    MinSNRWeighting,
    PosteriorMeanSampler,
    SigmoidSchedule,
    ZeroTerminalSNRSchedule,
    rescale_zero_terminal_snr,
)
from diffusionkit.schedules import SCHEDULES
from diffusionkit.weighting import WEIGHTINGS

# ------------------------------------------------------------------ sigmoid


def lucidrains_function(name):
    """One function of lucidrains' denoising_diffusion_pytorch, read from its installed source.

    Importing the package needs torchvision, which this environment deliberately lacks; the
    schedule functions themselves need only torch.
    """
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("denoising-diffusion-pytorch is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "denoising_diffusion_pytorch.py"
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    namespace = {"torch": torch}
    exec(compile(ast.Module([node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def test_sigmoid_matches_lucidrains():
    sigmoid_beta_schedule = lucidrains_function("sigmoid_beta_schedule")
    for kwargs in ({}, {"start": -2.0, "end": 4.0, "tau": 0.7}):
        ours = SigmoidSchedule(1000, **kwargs)
        theirs = sigmoid_beta_schedule(1000, **kwargs).double()
        # lucidrains rounds sigmoid(start / tau) and sigmoid(end / tau) to float32: abar then
        # agrees to float32 precision, and beta = 1 - abar_t / abar_{t-1} too except where
        # abar is nearly 0 at the very end (measured 2e-4 relative at t = 998, abar ≈ 1e-5)
        abar_theirs = torch.cumprod(1 - theirs, 0)
        torch.testing.assert_close(ours.alphas_cumprod, abar_theirs, rtol=0, atol=1e-7)
        keep = ours.alphas_cumprod > 1e-3
        torch.testing.assert_close(ours.betas[keep], theirs[keep], rtol=1e-4, atol=1e-9)


def test_sigmoid_follows_its_closed_form():
    sched = SigmoidSchedule(100, start=-3, end=3, tau=1)

    def sig(z):
        return 1 / (1 + math.exp(-z))

    def abar(u):  # Chen 2023, Algorithm 1 (sigmoid_schedule), normalized to abar(0) = 1
        return (sig(3) - sig(u * 6 - 3)) / (sig(3) - sig(-3))

    for t in (0, 10, 50, 98):  # below the clip at the last step
        assert sched.alphas_cumprod[t].item() == pytest.approx(abar((t + 1) / 100), rel=1e-10)
    assert sched.betas[-1].item() == pytest.approx(0.999)  # abar(1) = 0, clipped


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"start": 3, "end": -3}, "start < end"), ({"tau": 0}, "tau"), ({"max_beta": 0}, "max_beta")],
)
def test_sigmoid_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SigmoidSchedule(100, **kwargs)


# ------------------------------------------------------- zero terminal SNR

BASES = [LinearSchedule(1000), CosineSchedule(1000), SigmoidSchedule(1000), LinearSchedule(50)]


@pytest.mark.parametrize("base", BASES, ids=["linear", "cosine", "sigmoid", "linear50"])
def test_zero_terminal_snr_properties(base):
    sched = rescale_zero_terminal_snr(base)
    assert isinstance(sched, ZeroTerminalSNRSchedule) and sched.timesteps == base.timesteps
    abar = sched.alphas_cumprod
    assert abar[-1].item() == 0.0 and sched.snr[-1].item() == 0.0
    assert abar[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert (abar[1:] < abar[:-1]).all()  # strictly decreasing
    assert sched.betas[-1].item() == 1.0 and ((sched.betas > 0) & (sched.betas <= 1)).all()
    # Algorithm 1: sqrt(abar') is an affine map of sqrt(abar) fixing the first value
    root, base_root = abar.sqrt(), base.alphas_cumprod.sqrt()
    slope = (root[0] - root[-1]) / (base_root[0] - base_root[-1])
    torch.testing.assert_close(
        root, root[-1] + slope * (base_root - base_root[-1]), rtol=0, atol=1e-12
    )


def test_zero_terminal_snr_matches_diffusers():
    ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
    base = LinearSchedule(1000)
    theirs = ddpm.rescale_zero_terminal_snr(base.betas.clone())
    torch.testing.assert_close(rescale_zero_terminal_snr(base).betas, theirs, rtol=1e-9, atol=1e-12)


def test_zero_terminal_snr_config_and_registry():
    sched = rescale_zero_terminal_snr(CosineSchedule(100))
    assert sched.config() == {"base": CosineSchedule(100)}
    rebuilt = SCHEDULES.build("zero-terminal-snr", sched.config())
    assert rebuilt == sched and torch.equal(rebuilt.betas, sched.betas)
    with pytest.raises(TypeError, match="NoiseSchedule"):
        ZeroTerminalSNRSchedule("linear")


def test_eps_prediction_with_zero_terminal_snr_is_refused_not_nan():
    sched = rescale_zero_terminal_snr(LinearSchedule(100))
    model = DenoiseDiffusion(GaussianOracle(sched, 0.2, 0.25), sched)
    with pytest.raises(ValueError, match=r"zero terminal SNR.*prediction='v'"):
        model.reverse_sample((4, 1, 2, 2), progress=False)
    # starting below the last timestep is fine: abar > 0 there
    x0 = torch.zeros(4, 1, 2, 2)
    out = model.reverse_sample(x_init=x0, start_step=98, progress=False, generator=seeded(0))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "sampler",
    [
        DDPMSampler(),
        DDPMSampler(variance="beta"),
        PosteriorMeanSampler(),
        DDIMSampler(),
        DDIMSampler(1.0),
    ],
    ids=["ddpm", "ddpm-beta", "posterior-mean", "ddim0", "ddim1"],
)
def test_v_prediction_with_zero_terminal_snr_recovers_gaussian_data(sampler):
    """The first step has alpha_t = 0 (beta = 1); every sampler must stay finite and exact.

    Measured: |Δmean| <= 0.003, |Δstd| <= 0.0028 (ddpm-beta +0.0019); TOL as in
    tests/test_samplers.py.
    """
    sched = rescale_zero_terminal_snr(LinearSchedule(1000))
    model = DenoiseDiffusion(GaussianOracle(sched, 0.2, 0.25, "v"), sched, sampler, "v")
    x = model.reverse_sample((2048, 1, 2, 2), generator=seeded(0), progress=False)
    assert torch.isfinite(x).all()
    assert abs(x.mean().item() - 0.2) < 0.012
    assert abs(x.std().item() - 0.25) < 0.012


# ------------------------------------------------------------ min-SNR-gamma


def test_min_snr_weights_against_the_formula():
    w = MinSNRWeighting(gamma=5)
    snr = torch.tensor([0.0, 0.1, 1.0, 5.0, 20.0, 1e4], dtype=torch.float64)
    clamped = torch.tensor([0.0, 0.1, 1.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    eps = w.weights(snr, "eps")
    # min(snr, gamma) / snr, with its limit 1 at snr = 0
    torch.testing.assert_close(eps[1:], clamped[1:] / snr[1:])
    assert eps[0].item() == 1.0
    torch.testing.assert_close(eps, torch.tensor([1, 1, 1, 1, 0.25, 5e-4], dtype=torch.float64))
    torch.testing.assert_close(w.weights(snr, "x0"), clamped)
    torch.testing.assert_close(w.weights(snr, "v"), clamped / (snr + 1))


class Linear(nn.Module):
    """A network whose output depends on x and t, so every timestep has a different error."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, t):
        return self.scale * x + t.float().view(-1, 1, 1, 1) / 100


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weighted_loss_is_the_weighted_mean_of_per_sample_errors(prediction):
    sched = CosineSchedule(100)
    weighting = MinSNRWeighting(gamma=2.0)
    model = DenoiseDiffusion(Linear(), sched, prediction=prediction, weighting=weighting)
    plain = DenoiseDiffusion(model.net, sched, prediction=prediction)
    x0 = torch.rand(8, 1, 4, 4, generator=seeded(0)) * 2 - 1
    t = torch.tensor([0, 5, 20, 40, 60, 80, 95, 99])
    noise = torch.randn(8, 1, 4, 4, generator=seeded(1))
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    a, b = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    target = {"eps": noise, "x0": x0, "v": a * noise - b * x0}[prediction].double()
    x_t = (a * x0 + b * noise).float()
    per_sample = (model.net(x_t, t).double() - target).square().mean(dim=(1, 2, 3))
    weight = {
        "eps": torch.minimum(snr, torch.tensor(2.0)) / snr,
        "x0": torch.minimum(snr, torch.tensor(2.0)),
        "v": torch.minimum(snr, torch.tensor(2.0)) / (snr + 1),
    }[prediction]
    expected = (weight * per_sample).mean()
    got = model.loss(x0, t, noise)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    assert got.item() != pytest.approx(plain.loss(x0, t, noise).item(), rel=1e-2)
    got.backward()  # differentiable through the weighting
    assert model.net.scale.grad is not None


def test_a_huge_gamma_leaves_the_eps_loss_unweighted():
    sched = LinearSchedule(100)
    net = Linear()
    x0 = torch.rand(8, 1, 4, 4, generator=seeded(0)) * 2 - 1
    weighted = DenoiseDiffusion(net, sched, weighting=MinSNRWeighting(gamma=1e12))
    plain = DenoiseDiffusion(net, sched)
    a = weighted.loss(x0, generator=seeded(3))
    b = plain.loss(x0, generator=seeded(3))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_weighting_arguments_and_registry():
    assert MinSNRWeighting().gamma == 5.0 and MinSNRWeighting(3).config() == {"gamma": 3.0}
    assert WEIGHTINGS.build("min-snr", {"gamma": 3}) == MinSNRWeighting(3)
    for bad in (0, -1, "5", True):
        with pytest.raises(ValueError, match="gamma must be"):
            MinSNRWeighting(gamma=bad)
    with pytest.raises(TypeError, match="LossWeighting"):
        DenoiseDiffusion(Linear(), LinearSchedule(100), weighting="min-snr")
