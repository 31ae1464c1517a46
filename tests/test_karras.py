"""Euler, Euler ancestral and Heun (Karras et al. 2022's formulation) against diffusers, a
float64 reference written from Karras et al.'s Algorithm 1 and k-diffusion, and the exact
solution of the Gaussian probability-flow ODE.

Parity, max |difference| of the VP state over every step (OMP_NUM_THREADS=1, this machine):

* linear schedule (T = 1000, sigma_max = 157), eps / x0 / v, 10 and 25 steps, float32 on both
  sides: at most 1.7e-6 (Euler ancestral with x0: diffusers has no "sample" prediction there,
  so against the float64 reference: 2.6e-7). A random diffusers UNet2DModel: 3.4e-7 relative.
* cosine schedule (``squaredcos_cap_v2``, sigma_max = 2.0e4): Euler and Euler ancestral differ
  from diffusers by up to 2.2e-3, the resolution of diffusers' float32 state at sigma_max, and
  are within 5e-5 (eps) and 4e-7 (x0, v) of the float64 reference. Heun's first correction
  there amplifies input differences about 3,000-fold: with diffusers' sigmas set to the float64
  ones and both loops in float64 the trajectories agree to 7e-6 (eps, states up to 5e5) and
  2e-9 (x0, v); with diffusers' own float32 schedule they differ by 0.1 to 7.
* x0 clipping against diffusers' Heun ``clip_sample`` (plain clipping; the Euler schedulers
  have neither clipping nor thresholding): at most 1.2e-6.

Convergence on the exact Gaussian ODE (data N(0.2, 0.25²), linear T = 1000, trailing spacing,
float64, mean absolute error at 8 / 16 / 32 / 64 steps, order = fitted log-log slope):

=============================  ======================================  =======
solver, chain                  error                                   order
=============================  ======================================  =======
Euler, clean end               0.1020 / 0.0587 / 0.0314 / 0.0165       0.88
Heun, end_step=0 (2S calls)    0.0589 / 0.0148 / 0.0040 / 0.0010       1.94
Heun, clean end (2S-1 calls)   0.0928 / 0.0411 / 0.0142 / 0.0051       1.41
Heun, Karras spacing, clean    0.1125 / 0.0195 / 0.0041 / 0.0008       2.35
=============================  ======================================  =======

Against calls, Heun's order is the same (calls = 2S or 2S - 1). With a clean end its last
step, Euler's from trailing spacing's last timestep (t = 124 at 8 steps) to the clean image,
masks the order; with Karras spacing the last step starts at t = 0 and does not.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from oracles import GaussianOracle, seeded
from torch import Tensor, nn

from diffusionkit import (
    CosineSchedule,
    DDIMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    NoiseSchedule,
    get_sampler,
)
from diffusionkit.samplers import SAMPLERS
from diffusionkit.samplers.karras import (
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    ancestral_variance,
)
from diffusionkit.sampling_plan import plan_sampling
from diffusionkit.schedules import ZeroTerminalSNRSchedule
from diffusionkit.thresholding import ClipX0

diffusers = pytest.importorskip("diffusers")

# diffusers 0.42's schedulers call np.array(tensor, copy=False) on numpy 2 (harmless here)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NAMES = ("euler", "euler-ancestral", "heun")
MEAN, STD = 0.2, 0.25  # the Gaussian data of FIELD-NOTES' DDIM errors


# --------------------------------------------------------------------------- networks


class Oracle64(GaussianOracle):
    """The exact denoiser, run in float64: ``reverse_sample`` follows the dtype of the network's
    parameters (float32 for a network without any), so it carries a float64 one."""

    def __init__(self, schedule: NoiseSchedule, mean: float, std: float, prediction: str = "eps"):
        super().__init__(schedule, mean, std, prediction)
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))


class Wobbly(nn.Module):
    """A cheap deterministic network that is not linear in ``x``: the exact denoiser plus
    ``0.1 tanh(1.5 x_shifted + sin(t / 150))`` (pixels coupled, time dependent). Takes the float
    timesteps diffusers passes as well as integer ones; ``float64`` gives it a float64 parameter,
    so that ``reverse_sample`` runs in float64."""

    def __init__(self, schedule, prediction="eps", mean=MEAN, std=0.5, float64=False):
        super().__init__()
        self.oracle = GaussianOracle(schedule, mean, std, prediction)
        if float64:
            self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.long()
        bump = torch.sin(t.to(x.dtype) / 150).view(-1, 1, 1, 1)
        return self.oracle(x, t) + 0.1 * torch.tanh(1.5 * x.roll(1, -1) + bump)


class Labelled(nn.Module):
    """A class-conditional exact denoiser: data N(0.3 (label + 1), STD²), so the null label
    ``-1`` (and no label) is N(0, STD²)."""

    num_classes = 3

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        self.abar = schedule.alphas_cumprod.clone()

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        mean = 0.0 if labels is None else 0.3 * (labels.view(-1, 1, 1, 1) + 1).to(x.dtype)
        abar = self.abar[t].view(-1, 1, 1, 1).to(x.dtype)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        return b * (x - a * mean) / (abar * STD**2 + 1 - abar)  # eps of N(mean, STD²)


def count_calls(model: DenoiseDiffusion) -> list[int]:
    """The model timesteps of every network call from now on (one entry per call)."""
    seen: list[int] = []
    model.net.register_forward_hook(lambda mod, args, out: seen.append(int(args[1][0])))
    return seen


# ------------------------------------------------------------------ float64 reference


def reference(
    net: nn.Module,
    schedule: NoiseSchedule,
    kind: str,
    x: Tensor,
    timesteps: list[int],
    solver: str,
    *,
    end: int = -1,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    clip: bool = False,
    second: list[bool] | None = None,
) -> list[Tensor]:
    """k-diffusion's samplers in float64, in ``z = x / sqrt(abar)`` and ``sigma``, written from
    Karras et al. 2022, Algorithm 1 and k-diffusion's ``get_ancestral_step``.

    ``x`` is the VP state at ``timesteps[0]``; the chain visits ``timesteps`` (descending) and
    ends at ``end`` (``-1``: clean). Returns the VP state after every step. The network is
    called in its own dtype; ``abar = 0`` (zero terminal SNR) is taken in its VP limit.
    ``second[k]``: whether Heun corrects step ``k`` (default: every step but one to sigma 0).
    """
    abar = schedule.alphas_cumprod.double()
    levels = [*timesteps, end]
    a = [abar[t].item() if t >= 0 else 1.0 for t in levels]
    sig = [math.sqrt((1 - v) / v) if v > 0 else math.inf for v in a]
    param = next(net.parameters(), None)
    dtype = torch.float32 if param is None else param.dtype

    def denoise(x_vp: Tensor, j: int) -> tuple[Tensor, Tensor]:  # (x0_hat, eps_hat), float64
        t = torch.full((x_vp.shape[0],), levels[j])
        out = net(x_vp.to(dtype), t).double()
        ra, rb = math.sqrt(a[j]), math.sqrt(1 - a[j])
        x0 = {"eps": (x_vp - rb * out) / ra if ra else None, "x0": out, "v": ra * x_vp - rb * out}
        x0_hat = x0[kind].clamp(-1, 1) if clip else x0[kind]
        return x0_hat, (x_vp - ra * x0_hat) / rb

    x = x.double()
    states = []
    for j in range(len(timesteps)):
        x0, eps = denoise(x, j)
        if sig[j] == math.inf:  # zero terminal SNR: z is infinite, the Euler step's VP limit
            up2 = min(eta**2, 1.0) * (1 - a[j + 1]) if solver == "euler-ancestral" else 0.0
            x = math.sqrt(a[j + 1]) * x0 + math.sqrt(1 - a[j + 1] - up2) * eps
            if up2:
                x = x + math.sqrt(up2) * torch.randn(x.shape, generator=generator).double()
            states.append(x)
            continue
        z = x / math.sqrt(a[j])
        d = (z - x0) / sig[j]  # Algorithm 1, line 4
        if solver == "euler-ancestral":  # k-diffusion's get_ancestral_step
            s, s_next = sig[j], sig[j + 1]
            up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
            down = math.sqrt(s_next**2 - up**2)
            z = z + (down - s) * d
            if up > 0:
                z = z + up * torch.randn(x.shape, generator=generator).double()
        else:
            h = sig[j + 1] - sig[j]
            z_e = z + h * d  # line 5
            corrected = sig[j + 1] > 0 if second is None else second[j]
            if solver == "heun" and corrected:  # lines 6-8
                x_e = z_e / math.sqrt(sig[j + 1] ** 2 + 1)
                x0_e, _ = denoise(x_e, j + 1)
                d_e = (z_e - x0_e) / sig[j + 1]
                z_e = z + h * (d + d_e) / 2
            z = z_e
        x = z / math.sqrt(sig[j + 1] ** 2 + 1)
        states.append(x)
    return states


def visited(schedule: NoiseSchedule, steps: int, spacing="trailing", start=None, end=None):
    """The plan's timesteps, descending (the plan itself is tested in test_schedules.py)."""
    return plan_sampling(schedule, steps, spacing, start, end).visited.tolist()


# ------------------------------------------------------------------------- diffusers

DIFFUSERS = {
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
BETAS = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def our_schedule(name: str) -> NoiseSchedule:
    if name == "linear":  # diffusers' betas as given at any T
        return LinearSchedule(1000, 1e-4, 0.02, scale_with_timesteps=False)
    return CosineSchedule(1000)


def run_diffusers(name, schedule, kind, steps, net, noise, generator=None, exact=None, **config):
    """diffusers' own loop, driven by hand; returns the VP state after every step (for Heun,
    after every completed step: the second call of each corrected step, and the last call).

    The start is ``noise * sqrt(sigma_max² + 1)``, the VE form of the VP state ``noise``:
    diffusers' ``init_noise_sigma`` is ``sigma_max`` for "trailing", which drops the ``+ 1``
    (a relative ``1 / (2 sigma_max²)``, 2e-5 on the linear schedule). ``exact``: replace
    diffusers' sigmas (from float32 betas and cumprod) by the float64 ones of this schedule.
    """
    cls = getattr(diffusers, DIFFUSERS[name])
    sched = cls(
        num_train_timesteps=1000,
        beta_start=1e-4,  # Heun's defaults are Stable Diffusion's, not DDPM's
        beta_end=0.02,
        beta_schedule=BETAS[schedule],
        prediction_type=PREDICTION[kind],
        timestep_spacing="trailing",
        **config,
    )
    sched.set_timesteps(steps)
    if exact is not None:
        abar = exact.alphas_cumprod.double()
        sigma = [((1 - abar[int(t)]) / abar[int(t)]).sqrt().item() for t in sched.timesteps]
        sched.sigmas = torch.tensor([*sigma, 0.0], dtype=torch.float64)
    sigmas = sched.sigmas.double()
    x = noise * (sigmas.max() ** 2 + 1) ** 0.5
    states = []
    for j, t in enumerate(sched.timesteps):
        out = net(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        extra = {} if name == "heun" else {"generator": generator}
        x = sched.step(out, t, x, **extra).prev_sample
        states.append((x / (sigmas[j + 1] ** 2 + 1) ** 0.5).to(noise.dtype))
    if name == "heun":  # calls 2k + 1 complete step k; the last call is the Euler step to 0
        states = [*states[1:-1:2], states[-1]]
    return states


def run_ours(model, name, steps, noise, generator=None, **kwargs) -> list[Tensor]:
    """reverse_sample with ``steps`` network calls; returns the state after every step."""
    states: list[Tensor] = []
    model.reverse_sample(
        noise=noise,
        generator=generator,
        sampler=name,
        steps=steps,
        progress=False,
        callback=lambda k, t, x, x0: states.append(x.clone()),
        **kwargs,
    )
    return states


def max_diff(xs: list[Tensor], ys: list[Tensor]) -> float:
    assert len(xs) == len(ys)
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(xs, ys, strict=True))


def wobbly_model(schedule, kind="eps", float64=False, **kwargs) -> DenoiseDiffusion:
    net = Wobbly(schedule, kind, float64=float64)
    return DenoiseDiffusion(net, schedule, prediction=kind, **kwargs)


def calls_for(name: str, steps: int) -> int:
    """Our network calls for diffusers' ``steps`` inference steps (Heun: 2N - 1)."""
    return 2 * steps - 1 if name == "heun" else steps


# ------------------------------------------------------------------ parity: diffusers


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", NAMES)
def test_linear_schedule_trajectories_match_diffusers(name, kind, steps):
    """Measured: at most 1.7e-6 over every case (float32 on both sides)."""
    schedule = our_schedule("linear")
    model = wobbly_model(schedule, kind)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, calls_for(name, steps), noise, seeded(1))
    if name == "euler-ancestral" and kind == "x0":  # diffusers: "not implemented yet: sample"
        want = reference(
            model.net, schedule, kind, noise, visited(schedule, steps), name, generator=seeded(1)
        )
    else:
        want = run_diffusers(name, "linear", kind, steps, model.net, noise, seeded(1))
    assert len(ours) == steps
    assert max_diff(ours, want) <= 1e-4


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_cosine_schedule_euler_matches_diffusers_to_its_float32_resolution(name, kind, steps):
    """The cosine schedule's last timestep has sigma = 2.0e4 (its last beta is clipped at
    0.999), where diffusers' float32 state ``z = x sqrt(sigma² + 1)`` is stored to 4e-3: its
    first step carries that into the VP state as up to 2.2e-3 (measured, 10 steps; 9e-4 at 25),
    and our float64 reference shows the same gap to diffusers. Against the reference our
    float32 chain is within 5e-5 (eps: the eps-to-x0 conversion at abar = 2.4e-9 cancels) and
    4e-7 (x0, v)."""
    schedule = our_schedule("cosine")
    model = wobbly_model(schedule, kind)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, steps, noise, seeded(1))
    want = reference(
        model.net, schedule, kind, noise, visited(schedule, steps), name, generator=seeded(1)
    )
    assert max_diff(ours, want) <= 1e-4
    if not (name == "euler-ancestral" and kind == "x0"):
        theirs = run_diffusers(name, "cosine", kind, steps, model.net, noise, seeded(1))
        assert max_diff(ours, theirs) <= 5e-3


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_cosine_schedule_heun_matches_diffusers_in_float64(kind, steps):
    """Heun's first step from sigma = 2.0e4 is corrected, and the trapezoid multiplies any
    difference in its inputs by about |h| / (2 sigma') ~ 3,000. diffusers' sigmas, from float32
    betas and cumprod, are up to 6.6e-6 off the float64 schedule's (sigma_max 20291.30 against
    20291.17), which moves its result by 0.06 to 0.33 (x0, v) and up to 6.6 (eps, whose states
    reach 5e5) even in float64 arithmetic (measured); float32 rounding of the network's input
    and output moves ours by 1e-4 to 4e-4 (x0, v) and 0.09 (eps). With diffusers' sigmas set to
    the float64 ones of the same schedule and both loops in float64 the trajectories agree to
    7e-6 (eps) and 2e-9 (x0, v)."""
    schedule = our_schedule("cosine")
    model = wobbly_model(schedule, kind, float64=True)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0), dtype=torch.float64)
    ours = run_ours(model, "heun", 2 * steps - 1, noise)
    theirs = run_diffusers("heun", "cosine", kind, steps, model.net, noise, exact=schedule)
    assert ours[0].dtype == torch.float64
    assert max_diff(ours, theirs) <= 1e-4


def test_a_real_unet_gives_diffusers_trajectories():
    """diffusers' UNet2DModel (random weights) as an eps network, linear schedule, 10 steps. An
    untrained network's x0_hat is far off, and the states grow to about 450, so the difference
    is compared with their size: measured 1.5e-4 at most, 3.4e-7 of the largest value."""
    from test_diffusers_format import SMALL, random_unet

    unet = random_unet({**SMALL, "in_channels": 1, "out_channels": 1})

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return self.unet(x, t).sample

    schedule = our_schedule("linear")
    model = DenoiseDiffusion(Net(), schedule)
    noise = torch.randn(1, 1, 8, 8, generator=seeded(0))
    with torch.no_grad():
        for name in NAMES:
            ours = run_ours(model, name, calls_for(name, 10), noise, seeded(1))
            theirs = run_diffusers(name, "linear", "eps", 10, model.net, noise, seeded(1))
            scale = max(x.abs().max().item() for x in ours)
            assert scale > 100 and max_diff(ours, theirs) <= 1e-6 * scale, name


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("kind", ["eps", "v"])
def test_clipped_x0_matches_diffusers_heun_clip_sample(kind, steps):
    """diffusers' Euler schedulers have no x0 clipping or thresholding; Heun's ``clip_sample``
    clamps x0_hat and derives its slope from the clamped value, as ``ClipX0()`` does. Data
    N(0.2, 2²) makes the clamp bite. Measured: 1.5e-6."""
    schedule = our_schedule("linear")
    net = Wobbly(schedule, kind, std=2.0)
    model = DenoiseDiffusion(net, schedule, prediction=kind, x0_processing=ClipX0())
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, "heun", 2 * steps - 1, noise)
    theirs = run_diffusers("heun", "linear", kind, steps, net, noise, clip_sample=True)
    assert max_diff(ours, theirs) <= 1e-4
    unclipped = run_ours(
        DenoiseDiffusion(net, schedule, prediction=kind), "heun", 2 * steps - 1, noise
    )
    assert max_diff(ours[-1:], unclipped[-1:]) > 0.1  # the clamp mattered


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_clipped_x0_matches_the_reference(name):
    schedule = our_schedule("linear")
    net = Wobbly(schedule, "v", std=2.0)
    model = DenoiseDiffusion(net, schedule, prediction="v", x0_processing=ClipX0())
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, 10, noise, seeded(1))
    want = reference(
        net, schedule, "v", noise, visited(schedule, 10), name, generator=seeded(1), clip=True
    )
    assert max_diff(ours, want) <= 1e-5
    assert ours[-1].abs().max() <= 1.0


# ------------------------------------------------------------- one method, two names


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize(
    "schedule", [LinearSchedule(1000), CosineSchedule(250)], ids=["linear", "cosine"]
)
def test_euler_is_ddim_with_eta_zero(schedule, kind, clip):
    """Song et al. 2021, eq. 13-14: DDIM is the Euler method on the ODE in sigma."""
    model = wobbly_model(schedule, kind, x0_processing=ClipX0() if clip else None)
    noise = torch.randn(4, 1, 4, 4, generator=seeded(0))
    euler = run_ours(model, "euler", 12, noise)
    ddim = run_ours(model, DDIMSampler(), 12, noise)
    assert max_diff(euler, ddim) <= 1e-6


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_euler_ancestral_is_ddim_with_the_same_eta(eta):
    """sigma_up² is the posterior variance in the sigma variable, so for eta <= 1 the ancestral
    step is DDIM's (Song et al. 2021, eq. 16), noise draws included."""
    schedule = CosineSchedule(250)
    model = wobbly_model(schedule, "v")
    noise = torch.randn(4, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, EulerAncestralSampler(eta), 12, noise, seeded(3))
    ddim = run_ours(model, DDIMSampler(eta), 12, noise, seeded(3))
    assert max_diff(ours, ddim) <= 1e-6
    for k in range(1, 250, 37):  # the variance itself, against the schedule's beta_tilde
        coef = schedule.step_coefficients(k)
        var = ancestral_variance(coef.alpha_cumprod, coef.alpha_cumprod_prev, eta)
        assert var == pytest.approx(eta**2 * coef.posterior_variance, rel=1e-9)


def test_euler_ancestral_eta_zero_is_euler_and_large_eta_is_capped():
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule, "v")
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    euler = run_ours(model, "euler", 8, noise, seeded(1))
    assert max_diff(euler, run_ours(model, EulerAncestralSampler(0.0), 8, noise, seeded(1))) == 0
    big = run_ours(model, EulerAncestralSampler(3.0), 8, noise, seeded(1))
    want = reference(
        model.net,
        schedule,
        "v",
        noise,
        visited(schedule, 8),
        "euler-ancestral",
        eta=3.0,
        generator=seeded(1),
    )
    assert max_diff(big, want) <= 1e-5
    # s² = eta² (1 - a') (a' - a) / (a' (1 - a)), capped at 1 - a' (sigma_up <= sigma')
    assert ancestral_variance(0.1, 0.5, 1.0) == pytest.approx(0.5 * 0.4 / (0.5 * 0.9))
    assert ancestral_variance(0.1, 0.5, 3.0) == 0.5
    assert ancestral_variance(0.0, 0.5, 0.5) == pytest.approx(0.25 * 0.5)  # finite at abar = 0
    assert ancestral_variance(0.5, 1.0, 1.0) == 0.0  # no noise on the step to the clean image


# ------------------------------------------------------------ convergence, measured


def gaussian_ode_error(name: str, calls: int, end: int = -1, spacing="trailing") -> float:
    """Mean absolute error against the exact flow of N(MEAN, STD²) data, linear T = 1000,
    float64: the ODE maps x_T to x_e = sqrt(a_e) m + sqrt(a_e s² + 1 - a_e) u with
    u = (x_T - sqrt(a_T) m) / sqrt(a_T s² + 1 - a_T) (x_0 for a_e = 1), whatever the steps."""
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Oracle64(schedule, MEAN, STD), schedule)
    noise = torch.randn(256, 1, 2, 2, generator=seeded(0), dtype=torch.float64)
    a_t = schedule.alphas_cumprod[-1].item()
    a_e = 1.0 if end < 0 else schedule.alphas_cumprod[end].item()
    u = (noise - a_t**0.5 * MEAN) / (a_t * STD**2 + 1 - a_t) ** 0.5
    exact = a_e**0.5 * MEAN + (a_e * STD**2 + 1 - a_e) ** 0.5 * u
    out = model.reverse_sample(
        noise=noise, sampler=name, steps=calls, end_step=end, spacing=spacing, progress=False
    )
    assert out.dtype == torch.float64
    return (out - exact).abs().mean().item()


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """The least-squares slope of -log(error) against log(steps)."""
    xs, ys = [math.log(s) for s in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


STEPS = [8, 16, 32, 64]


def test_euler_is_first_order():
    """Measured: 0.1027 / 0.0591 / 0.0317 / 0.0166 at 8 / 16 / 32 / 64 steps (DDIM's errors in
    FIELD-NOTES), fitted order 0.88."""
    errors = [gaussian_ode_error("euler", n) for n in STEPS]
    assert errors[0] == pytest.approx(0.102, abs=0.002)
    assert 0.75 <= fitted_order(STEPS, errors) <= 1.25


def test_heun_is_second_order():
    """Every step corrected: a chain that ends at timestep 0 (a real noise level, sigma = 0.01),
    2S calls for S steps. Measured: 0.0594 / 0.0149 / 0.0040 / 0.0010 at 8 / 16 / 32 / 64 steps
    (16 / 32 / 64 / 128 calls), fitted order 1.95 in steps and in calls alike. With a clean end
    the last step is Euler's and, from trailing spacing's last timestep, masks the order (see
    the module docstring)."""
    errors = [gaussian_ode_error("heun", 2 * n, end=0) for n in STEPS]
    assert 1.7 <= fitted_order(STEPS, errors) <= 2.4
    # and it beats Euler at an equal number of calls once the steps are small enough
    assert errors[-1] < gaussian_ode_error("euler", 128, end=0) / 5


# ------------------------------------------------------------------ the step budget


@pytest.mark.parametrize("end", [-1, 9])
def test_steps_count_network_calls(end):
    schedule = LinearSchedule(40)
    model = wobbly_model(schedule)
    seen = count_calls(model)
    for name in NAMES:
        for calls in [1, 2, 3, 4, 7, 8]:
            seen.clear()
            model.reverse_sample(
                (1, 1, 2, 2), sampler=name, steps=calls, end_step=end, progress=False
            )
            assert len(seen) == calls, (name, calls)
    # steps=None visits every timestep of the window: Heun's 2S - 1 calls (2S with a noisy end)
    seen.clear()
    model.reverse_sample((1, 1, 2, 2), sampler="heun", end_step=end, progress=False)
    window = 40 if end < 0 else 40 - 1 - end
    assert len(seen) == (2 * window - 1 if end < 0 else 2 * window)


def test_heun_budget_rule_and_its_inverse():
    heun = HeunSampler()
    for calls in range(1, 30):
        clean, noisy = heun.steps_for_calls(calls, True), heun.steps_for_calls(calls, False)
        assert clean == calls // 2 + 1 and noisy == math.ceil(calls / 2)
        assert calls - clean <= clean - 1 and calls - noisy <= noisy  # corrections that fit
    for steps in range(1, 30):
        assert heun.steps_for_calls(heun.calls_for_steps(steps, True), True) == steps
        assert heun.steps_for_calls(heun.calls_for_steps(steps, False), False) == steps


def corrected_steps(calls_seen: list[int], steps: list[int]) -> list[bool]:
    """Which steps of a chain that ends clean made a second call, read off the timesteps of the
    network calls: a corrected step ``k`` calls at ``t_k`` and ``t_{k+1}``, then step ``k + 1``
    calls at ``t_{k+1}`` again."""
    flags, j = [], 0
    for k, t in enumerate(steps):
        assert calls_seen[j] == t
        two = j + 2 < len(calls_seen) and calls_seen[j + 1] == calls_seen[j + 2] == steps[k + 1]
        flags.append(two)
        j += 2 if two else 1
    assert j == len(calls_seen)
    return flags


@pytest.mark.parametrize(
    ("schedule", "spacing", "euler_step"),
    [(CosineSchedule(1000), "trailing", 0), (LinearSchedule(1000), "karras", 4)],
    ids=["cosine-trailing", "linear-karras"],
)
def test_heun_leaves_the_step_with_the_largest_sigma_ratio_to_euler(schedule, spacing, euler_step):
    """10 calls, clean end: 6 steps, 4 corrected; besides the last step (to sigma = 0) the one
    left to Euler has the largest sigma / sigma': the first on the cosine schedule with trailing
    spacing (sigma 2.0e4 -> 3.0), the one before the last with Karras spacing."""
    model = wobbly_model(schedule)
    seen = count_calls(model)
    model.reverse_sample((1, 1, 2, 2), sampler="heun", steps=10, spacing=spacing, progress=False)
    steps = visited(schedule, 6, spacing)
    flags = corrected_steps(seen, steps)
    assert flags == [k != euler_step for k in range(5)] + [False]
    abar = schedule.alphas_cumprod.double()
    ratios = [
        ((1 - abar[s]) * abar[n] / (abar[s] * (1 - abar[n]))).item()
        for s, n in itertools.pairwise(steps)
    ]
    assert max(range(5), key=ratios.__getitem__) == euler_step


def test_heun_runs_its_corrections_where_the_budget_puts_them():
    """The trajectory with 10 calls equals the reference with the same steps corrected."""
    schedule = CosineSchedule(1000)
    model = wobbly_model(schedule, "v", float64=True)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0), dtype=torch.float64)
    ours = run_ours(model, "heun", 10, noise)
    second = [False, True, True, True, True, False]
    want = reference(model.net, schedule, "v", noise, visited(schedule, 6), "heun", second=second)
    assert max_diff(ours, want) <= 1e-8


# --------------------------------------------------------------- the chain's features


@pytest.mark.parametrize("name", NAMES)
def test_noisy_end_lands_on_end_step(name):
    """end_step >= 0: the last step lands on a real timestep (Heun corrects it: 8 calls are
    4 second-order steps)."""
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule, "v")
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, 8, noise, seeded(1), end_step=20)
    steps = visited(schedule, 4 if name == "heun" else 8, end=20)
    want = reference(model.net, schedule, "v", noise, steps, name, end=20, generator=seeded(1))
    assert len(ours) == len(steps) and max_diff(ours, want) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_image_to_image_starts_at_start_step(name):
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule)
    x_init = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).expand(2, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, 5, noise, seeded(1), x_init=x_init, start_step=40)
    abar = schedule.alphas_cumprod[40].item()
    start = abar**0.5 * x_init + (1 - abar) ** 0.5 * noise
    steps = visited(schedule, 3 if name == "heun" else 5, start=40)
    assert steps[0] == 40
    want = reference(model.net, schedule, "eps", start, steps, name, generator=seeded(1))
    assert max_diff(ours, want) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_inpainting_keeps_the_known_pixels(name):
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule)
    known = torch.full((2, 1, 4, 4), 0.7)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    seen = count_calls(model)
    out = model.reverse_sample(
        sampler=name, steps=7, x_known=known, mask=mask, generator=seeded(1), progress=False
    )
    assert len(seen) == 7  # Heun: replaced before its second calls too, at no extra call
    assert torch.equal(out[..., :2], known[..., :2])
    assert not torch.allclose(out[..., 2:], known[..., 2:], atol=0.05)


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_memoryless_solvers_support_repaint_resampling(name):
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule)
    known = torch.full((2, 1, 4, 4), -0.4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0] = 1
    seen = count_calls(model)
    out = model.reverse_sample(
        sampler=name,
        steps=6,
        x_known=known,
        mask=mask,
        resample_jumps=2,
        generator=seeded(2),
        progress=False,
    )
    assert len(seen) == 6 + 2 * 5  # every step but the last is redone twice
    assert torch.equal(out[..., 0], known[..., 0]) and torch.isfinite(out).all()


def test_heun_refuses_repaint_resampling():
    assert EulerSampler().can_resample and EulerAncestralSampler().can_resample
    assert not HeunSampler().can_resample
    model = wobbly_model(LinearSchedule(100))
    with pytest.raises(ValueError, match="resample_jumps needs a memoryless one-step sampler"):
        model.reverse_sample(
            sampler="heun",
            x_known=torch.zeros(1, 1, 4, 4),
            mask=torch.ones(1, 1, 4, 4),
            resample_jumps=1,
        )


@pytest.mark.parametrize("name", NAMES)
def test_guidance(name):
    """guidance_scale = 1 is plain conditional sampling, bit for bit; other scales cost no extra
    calls (one batched pass of 2B per call)."""
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(Labelled(schedule), schedule)
    seen = count_calls(model)
    common = {"sampler": name, "steps": 7, "labels": torch.tensor([0, 2]), "progress": False}
    plain = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), **common)
    one = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), guidance_scale=1.0, **common)
    assert torch.equal(plain, one)
    seen.clear()
    guided = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), guidance_scale=3.0, **common)
    assert len(seen) == 7 and torch.isfinite(guided).all()
    assert (guided - plain).abs().mean() > 0.1
    other = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), **{**common, "labels": 1})
    assert not torch.allclose(plain, other, atol=0.1)  # labels matter


@pytest.mark.parametrize("name", NAMES)
def test_sample_i_depends_only_on_generator_i(name):
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule)
    batch = model.reverse_sample(
        (3, 1, 4, 4),
        sampler=name,
        steps=7,
        progress=False,
        generator=[seeded(10), seeded(11), seeded(12)],
    )
    single = model.reverse_sample(
        (1, 1, 4, 4), sampler=name, steps=7, progress=False, generator=[seeded(11)]
    )
    torch.testing.assert_close(batch[1:2], single, rtol=0, atol=1e-6)
    again = model.reverse_sample(
        (3, 1, 4, 4),
        sampler=name,
        steps=7,
        progress=False,
        generator=[seeded(10), seeded(11), seeded(12)],
    )
    assert torch.equal(batch, again)


@pytest.mark.parametrize("name", NAMES)
def test_callback_once_per_step_with_its_timestep(name):
    schedule = LinearSchedule(100)
    model = wobbly_model(schedule)
    seen: list[tuple[int, int]] = []
    traj = model.reverse_sample(
        (1, 1, 4, 4),
        sampler=name,
        steps=9,
        progress=False,
        return_intermediates=True,
        callback=lambda k, t, x, x0: seen.append((k, t)),
    )
    steps = 5 if name == "heun" else 9
    assert [k for k, _ in seen] == list(range(steps))
    assert [t for _, t in seen] == traj.timesteps.tolist() == visited(schedule, steps)
    assert traj.x_t.shape[0] == steps + 1 and traj.x0_pred.shape[0] == steps


@pytest.mark.parametrize("name", NAMES)
def test_karras_spacing(name):
    """spacing="karras": Karras et al.'s eq. 5 levels at the nearest integer timesteps (diffusers
    interpolates fractional ones instead), stepped exactly as the reference steps them."""
    schedule = LinearSchedule(1000)
    model = wobbly_model(schedule, "v")
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, 9, noise, seeded(1), spacing="karras")
    steps = visited(schedule, 5 if name == "heun" else 9, "karras")
    assert steps[0] == 999 and steps[-1] == 0
    want = reference(model.net, schedule, "v", noise, steps, name, generator=seeded(1))
    assert max_diff(ours, want) <= 1e-5


# ---------------------------------------------------------------- zero terminal SNR


@pytest.mark.parametrize("name", ["euler", "euler-ancestral"])
def test_zero_terminal_snr_euler_steps_are_finite_and_ddim(name):
    """At abar = 0 the VP form of the step is finite (sigma is not): DDIM's update."""
    schedule = ZeroTerminalSNRSchedule(LinearSchedule(100))
    model = wobbly_model(schedule, "v")
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, name, 6, noise, seeded(1))
    ddim = run_ours(
        model, DDIMSampler(1.0 if name == "euler-ancestral" else 0.0), 6, noise, seeded(1)
    )
    assert torch.isfinite(ours[-1]).all() and max_diff(ours, ddim) <= 1e-6
    want = reference(
        model.net, schedule, "v", noise, visited(schedule, 6), name, generator=seeded(1)
    )
    assert max_diff(ours, want) <= 1e-5


@pytest.mark.parametrize(("calls", "made"), [(9, 8), (10, 10)])
def test_zero_terminal_snr_heun_takes_an_euler_first_step(calls, made):
    """The first step, from sigma = inf, is Euler's; 9 calls buy 5 steps of which only the
    middle 3 can be corrected (8 calls), 10 calls buy 6 steps with 4 corrected (10 calls)."""
    schedule = ZeroTerminalSNRSchedule(LinearSchedule(100))
    model = wobbly_model(schedule, "v")
    seen = count_calls(model)
    noise = torch.randn(2, 1, 4, 4, generator=seeded(0))
    ours = run_ours(model, "heun", calls, noise)
    steps = visited(schedule, calls // 2 + 1)
    assert len(seen) == made
    assert corrected_steps(seen, steps) == [False] + [True] * (len(steps) - 2) + [False]
    want = reference(
        model.net,
        schedule,
        "v",
        noise,
        steps,
        "heun",
        second=[False] + [True] * (len(steps) - 2) + [False],
    )
    assert torch.isfinite(ours[-1]).all() and max_diff(ours, want) <= 1e-5


# ----------------------------------------------------------- names, configs, errors


@pytest.mark.parametrize(
    "sampler", [EulerSampler(), EulerAncestralSampler(), EulerAncestralSampler(0.3), HeunSampler()]
)
def test_config_round_trip_and_names(sampler):
    cls = type(sampler)
    assert SAMPLERS.get(cls.name) is cls
    assert SAMPLERS.build(cls.name, sampler.config()) == sampler
    assert get_sampler(cls.name, **sampler.config()) == sampler
    schedule = LinearSchedule(50)
    model = wobbly_model(schedule)
    by_name = model.reverse_sample(
        (2, 1, 4, 4), sampler=cls.name, steps=5, generator=seeded(4), progress=False
    )
    by_object = model.reverse_sample(
        (2, 1, 4, 4), sampler=cls(), steps=5, generator=seeded(4), progress=False
    )
    assert torch.equal(by_name, by_object)
    assert EulerAncestralSampler(0.3).config() == {"eta": 0.3}


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf"), True, "1", None])
def test_bad_eta_is_refused(eta):
    with pytest.raises(ValueError, match="EulerAncestralSampler: eta must be a finite number"):
        EulerAncestralSampler(eta)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError):
        EulerSampler(1.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="invalid arguments for sampler HeunSampler"):
        get_sampler("heun", s_churn=1.0)
    with pytest.raises(ValueError, match="invalid arguments for sampler EulerSampler"):
        get_sampler("euler", eta=1.0)
    with pytest.raises(ValueError, match="HeunSampler: calls must be a positive int"):
        HeunSampler().steps_for_calls(0, True)
    with pytest.raises(ValueError, match="steps"):  # more calls than the window can take
        wobbly_model(LinearSchedule(10)).reverse_sample((1, 1, 2, 2), sampler="heun", steps=20)
