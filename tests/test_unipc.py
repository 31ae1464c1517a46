"""UniPC (Zhao et al. 2023): parity with diffusers, measured convergence orders, and the contract.

Parity: diffusers' ``UniPCMultistepScheduler(predict_x0=True, timestep_spacing="trailing")``,
driven by hand, and ``reverse_sample(spacing="trailing")`` start from the same noise and call
the same network; every state of the two trajectories is compared. Two cases cannot agree to
1e-4 for reasons outside the solver, and are handled as documented at their tests: diffusers
keeps its sigma table in float32, which an eps model at the cosine schedule's first timestep
(``abar = 2.4e-9``) amplifies about 2e4-fold; and diffusers' ``bh1`` returns NaN at the step to
``sigma = 0`` (``B(h) = h = inf`` times a zero correction), where UniPC returns ``x0_hat``.

Orders: on the exact Gaussian probability-flow ODE the error of a chain ending at a noisy
``end_step`` is measured at 64, 128 and 256 network calls and the order fitted as the log-log
slope (measured, linear T = 1000, end_step 200, data N(0.2, 0.5²), lower-order final steps
off):

===========================  =====  =====  =====
solver_order                 1      2      3
===========================  =====  =====  =====
UniP alone (corrector off)   0.99   2.00   2.82
UniPC (corrector on)         1.96   3.10   3.91
===========================  =====  =====  =====

so the corrector raises the order by one, as Theorem 3.1 says. The noisy end matters: a chain
that ends clean takes its last step to ``x0_hat`` itself, whose error grows with the last
visited ``1 - abar`` (about 1/N with trailing spacing), so every solver looks first order there
at large N; and below t = 100 the integer timesteps are too coarse in log-SNR for the
asymptotic regime at these step counts (fits over 16-128 calls with end_step 150-300 drift by
up to 0.5 where the error changes sign).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

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
    UNet,
    ZeroTerminalSNRSchedule,
    get_sampler,
)
from diffusionkit.samplers import SAMPLERS
from diffusionkit.samplers.unipc import UniPCSampler, UniPCVariant
from diffusionkit.spacing import Spacing
from diffusionkit.thresholding import ClipX0

M, S = 0.2, 0.5  # the Gaussian data N(M, S²) of the oracle tests


class Oracle64(GaussianOracle):
    """The exact denoiser, sampled in float64: ``reverse_sample`` runs in the dtype of the
    network's parameters, so the oracle carries a float64 one."""

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps") -> None:
        super().__init__(schedule, M, S, prediction)
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64))


def ode_solution(x: Tensor, abar_from: float, abar_to: float) -> Tensor:
    """The probability-flow ODE's exact map for data N(M, S²): the standardised value
    ``(x - sqrt(abar) M) / sqrt(abar S² + 1 - abar)`` is constant along the path."""
    z = (x - abar_from**0.5 * M) / (abar_from * S**2 + 1 - abar_from) ** 0.5
    return abar_to**0.5 * M + (abar_to * S**2 + 1 - abar_to) ** 0.5 * z


def oracle_model(schedule: NoiseSchedule | None = None, prediction: str = "eps"):
    schedule = LinearSchedule(100) if schedule is None else schedule
    return DenoiseDiffusion(
        GaussianOracle(schedule, M, S, prediction), schedule, prediction=prediction
    )


def sample(model: DenoiseDiffusion, sampler: Any = None, **kwargs: Any) -> Tensor:
    return model.reverse_sample(
        sampler=UniPCSampler() if sampler is None else sampler, progress=False, **kwargs
    )


# ----------------------------------------------------------------------- diffusers parity

PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SCHEDULES: dict[str, tuple[Callable[[], NoiseSchedule], str]] = {
    "linear": (lambda: LinearSchedule(1000, 1e-4, 0.02, scale_with_timesteps=False), "linear"),
    "cosine": (lambda: CosineSchedule(1000), "squaredcos_cap_v2"),
}


@pytest.fixture(scope="module")
def unet():
    pytest.importorskip("diffusers")
    from test_diffusers_format import SMALL, random_unet

    return random_unet(SMALL)


class Wrapped(nn.Module):
    """The same network for both loops: a random ``UNet2DModel`` as it is (x0, v), or, for
    eps, the exact Gaussian eps plus the U-Net scaled by ``sqrt(abar_t)`` (a random network read
    as eps gives ``x0_hat = (x - sigma eps) / alpha`` of order 1e4 at the first timestep, where
    float32 rounding alone exceeds 1e-4; this keeps ``x0_hat`` of order 1 and the network
    nonlinear)."""

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction: str, scale=0.3):
        super().__init__()
        self.unet = unet
        self.oracle = GaussianOracle(schedule, 0.1, 0.5) if prediction == "eps" else None
        self.alpha = schedule.alphas_cumprod.sqrt().float()
        self.scale = scale

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.expand(x.shape[0])  # diffusers passes one 0-d timestep
        out = self.unet(x, t).sample
        if self.oracle is None:
            return out
        alpha = self.alpha[t].view(-1, 1, 1, 1)
        return self.oracle(x, t) + self.scale * alpha * out


def diffusers_states(
    net, schedule: NoiseSchedule, noise: Tensor, steps: int, table64=False, **config
):
    """Every state of diffusers' UniPC loop (after each ``step``), and its timesteps."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(timestep_spacing="trailing", predict_x0=True, **config)
    scheduler.set_timesteps(steps)
    if table64:  # the same sigmas, kept in float64 (diffusers' step() itself is unchanged)
        abar = schedule.alphas_cumprod[scheduler.timesteps]
        scheduler.sigmas = torch.cat([((1 - abar) / abar).sqrt(), abar.new_zeros(1)])
    x, states = noise * scheduler.init_noise_sigma, []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = net(scheduler.scale_model_input(x, t), t)
            x = scheduler.step(out, t, x).prev_sample
            states.append(x)
    return torch.stack(states), scheduler.timesteps


class Parity(NamedTuple):
    diff: float  # max |ours - diffusers| over every state
    ours: Tensor  # (steps, B, C, H, W): the state after each step
    theirs: Tensor  # the same from diffusers
    net: nn.Module
    schedule: NoiseSchedule
    noise: Tensor
    config: dict[str, Any]  # the diffusers scheduler's arguments


def parity(
    unet,
    schedule_name,
    prediction,
    steps,
    order,
    variant="bh2",
    clip=False,
    net_scale=0.3,
    table64=False,
) -> Parity:
    """Both loops from the same noise with the same network (see :class:`Wrapped`)."""
    make_schedule, beta_schedule = SCHEDULES[schedule_name]
    schedule = make_schedule()
    net = Wrapped(unet, schedule, prediction, net_scale)
    noise = torch.randn(2, 3, 8, 8, generator=seeded(1))
    config = dict(
        num_train_timesteps=1000,
        beta_schedule=beta_schedule,
        prediction_type=PREDICTIONS[prediction],
        solver_order=order,
        solver_type=variant,
        thresholding=clip,
        sample_max_value=1.0,
    )
    theirs, timesteps = diffusers_states(net, schedule, noise, steps, table64, **config)
    model = DenoiseDiffusion(
        net, schedule, prediction=prediction, x0_processing=ClipX0() if clip else None
    )
    traj = sample(
        model,
        UniPCSampler(order, variant),
        noise=noise,
        steps=steps,
        spacing="trailing",
        return_intermediates=True,
    )
    assert torch.equal(traj.timesteps, timesteps)
    ours = traj.x_t[1:]
    return Parity((ours - theirs).abs().max().item(), ours, theirs, net, schedule, noise, config)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_trajectory_matches_diffusers(unet, schedule_name, prediction, steps, order):
    run = parity(unet, schedule_name, prediction, steps, order)
    diff = run.diff
    if schedule_name == "cosine" and prediction == "eps":
        # cosine's abar_999 = 2.4e-9 (alpha = 4.9e-5): x0_hat = (x - sigma eps) / alpha turns
        # the float32 rounding of diffusers' sigma table into ~5e-3 in the first x0_hat and
        # 7.5e-4 / 3.0e-4 in the first state at 10 / 25 steps (measured; the same with a
        # float64 network); with the same table in float64 the two agree to about 1e-6
        assert diff <= 1e-3
        theirs64, _ = diffusers_states(
            run.net, run.schedule, run.noise, steps, table64=True, **run.config
        )
        diff = (run.ours - theirs64).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize(
    ("schedule_name", "prediction", "steps", "order"),
    [("cosine", "eps", 10, 2), ("linear", "x0", 25, 3)],
)
def test_clipped_x0_matches_diffusers_thresholding(unet, schedule_name, prediction, steps, order):
    # diffusers' thresholding with sample_max_value=1 clamps its quantile to 1: plain clipping.
    # A larger U-Net share pushes x0_hat well outside [-1, 1], so the clipping matters.
    # (cosine eps: diffusers' sigma table in float64, see test_trajectory_matches_diffusers)
    table64 = schedule_name == "cosine" and prediction == "eps"
    run = parity(unet, schedule_name, prediction, steps, order, "bh2", True, 3.0, table64)
    assert run.diff <= 1e-4
    unclipped = parity(unet, schedule_name, prediction, steps, order, net_scale=3.0).ours
    assert (run.ours - unclipped).abs().max() > 0.1


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bh1_matches_diffusers_up_to_its_nan_at_sigma_zero(unet, order):
    # diffusers computes the step to sigma = 0 as x0_hat - alpha_t B(h) * 0 with B(h) = h = inf,
    # i.e. NaN; UniPC returns x0_hat there, the limit of every other term
    run = parity(unet, "linear", "v", 10, order, variant="bh1")
    ours, theirs = run.ours, run.theirs
    finite = theirs.flatten(1).isfinite().all(1)
    assert finite[:-1].all() and ours.isfinite().all()
    assert (ours[finite] - theirs[finite]).abs().max() <= 1e-4


def test_zero_terminal_snr_matches_diffusers_which_stops_short_of_abar_zero():
    # diffusers rescales the betas the same way but then sets abar_{T-1} = 2^-24 (lambda = -8.3
    # instead of -inf); UniPC steps from abar = 0 exactly: the samples differ by ~3e-5
    pytest.importorskip("diffusers")
    schedule = ZeroTerminalSNRSchedule(LinearSchedule(1000, 1e-4, 0.02, scale_with_timesteps=False))
    oracle = GaussianOracle(schedule, M, S, "v")
    net = lambda x, t: oracle(x, t.expand(x.shape[0]))  # noqa: E731
    noise = torch.randn(64, 1, 1, 1, generator=seeded(2))
    for steps in (10, 25):
        theirs, _ = diffusers_states(
            net, schedule, noise, steps, prediction_type="v_prediction", rescale_betas_zero_snr=True
        )
        model = DenoiseDiffusion(oracle, schedule, prediction="v")
        ours = sample(model, noise=noise, steps=steps)
        assert (ours - theirs[-1]).abs().max() <= 1e-4


# ------------------------------------------------------------------- convergence order


def fitted_order(calls: list[int], errors: list[float]) -> float:
    """Least-squares slope of ``-log(error)`` against ``log(calls)``."""
    xs, ys = [math.log(n) for n in calls], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
        (a - mx) ** 2 for a in xs
    )


@pytest.mark.parametrize(
    ("order", "corrector", "expected"),
    [(1, False, 1), (1, True, 2), (2, False, 2), (2, True, 3), (3, False, 3), (3, True, 4)],
)
def test_measured_convergence_order(order, corrector, expected):
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Oracle64(schedule), schedule)
    x_T = torch.randn(256, 1, 1, 1, generator=seeded(0), dtype=torch.float64)
    end = 200
    exact = ode_solution(
        x_T, schedule.alphas_cumprod[-1].item(), schedule.alphas_cumprod[end].item()
    )
    sampler = UniPCSampler(order, corrector=corrector, lower_order_final=False)
    calls = [64, 128, 256]
    errors = [
        (sample(model, sampler, noise=x_T, steps=n, end_step=end) - exact).abs().mean().item()
        for n in calls
    ]
    assert abs(fitted_order(calls, errors) - expected) < 0.35, errors


def test_first_order_without_corrector_is_ddim():
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Oracle64(schedule), schedule)
    x_T = torch.randn(64, 1, 1, 1, generator=seeded(0), dtype=torch.float64)
    for steps in (8, 33):
        ddim = sample(model, DDIMSampler(), noise=x_T, steps=steps)
        unip = sample(model, UniPCSampler(1, corrector=False), noise=x_T, steps=steps)
        torch.testing.assert_close(unip, ddim, rtol=0, atol=1e-13)
    one_step = sample(model, noise=x_T, steps=1)  # nothing to extrapolate or to correct
    torch.testing.assert_close(one_step, sample(model, DDIMSampler(), noise=x_T, steps=1))


def test_few_steps_beat_ddim_on_the_exact_ode():
    # clean end, defaults; measured mean |error| at 8 / 16 / 32 / 64 calls: DDIM 0.126 /
    # 0.067 / 0.035 / 0.018, UniPC-2 0.101 / 0.028 / 0.0037 / 0.0007, UniPC-3 0.101 / 0.026 /
    # 0.0046 / 0.0020 (the last step, to x0_hat itself, dominates from about 32 calls on)
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Oracle64(schedule), schedule)
    x_T = torch.randn(512, 1, 1, 1, generator=seeded(0), dtype=torch.float64)
    exact = ode_solution(x_T, schedule.alphas_cumprod[-1].item(), 1.0)
    for steps in (8, 16, 32):
        ddim = (sample(model, DDIMSampler(), noise=x_T, steps=steps) - exact).abs().mean()
        for order in (2, 3):
            unipc = (
                (sample(model, UniPCSampler(order), noise=x_T, steps=steps) - exact).abs().mean()
            )
            assert unipc < (0.85 if steps == 8 else 0.5) * ddim


# ------------------------------------------------------------------------ the contract


def test_steps_count_network_calls_and_the_callback_sees_every_step():
    model = oracle_model(LinearSchedule(50))
    calls, seen = [], []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    for end_step in (None, 4):
        calls.clear()
        seen.clear()
        traj = sample(
            model,
            noise=torch.randn(2, 1, 2, 2, generator=seeded(0)),
            steps=7,
            end_step=end_step,
            callback=lambda k, t, x, x0: seen.append((k, t)),
            return_intermediates=True,
        )
        assert len(calls) == 7
        assert [k for k, _ in seen] == list(range(7))
        window = 50 if end_step is None else 50 - 5
        visited = Spacing.TRAILING.timesteps(window, 7).flip(0) + (50 - window)
        assert [t for _, t in seen] == visited.tolist() == traj.timesteps.tolist()


def test_end_step_and_image_to_image_follow_the_exact_ode():
    # measured mean |error| at 20 calls: a noisy end at t = 300, UniPC-2 1.0e-3 (DDIM 4.1e-3);
    # from x_init noised to t = 400, UniPC-2 8.4e-4, UniPC-3 2.2e-3 (DDIM 2.1e-2)
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Oracle64(schedule), schedule)
    abar = schedule.alphas_cumprod
    x_T = torch.randn(256, 1, 1, 1, generator=seeded(3), dtype=torch.float64)
    x_init = torch.full((256, 1, 1, 1), 0.7, dtype=torch.float64)
    x_start = abar[400].sqrt() * x_init + (1 - abar[400]).sqrt() * x_T
    cases = [
        (dict(noise=x_T, end_step=300), ode_solution(x_T, abar[-1].item(), abar[300].item())),
        (
            dict(x_init=x_init, start_step=400, noise=x_T),
            ode_solution(x_start, abar[400].item(), 1),
        ),
    ]
    for kwargs, exact in cases:
        ddim = (sample(model, DDIMSampler(), steps=20, **kwargs) - exact).abs().mean()
        for order in (2, 3):
            unipc = (sample(model, UniPCSampler(order), steps=20, **kwargs) - exact).abs().mean()
            assert unipc < 0.4 * ddim and unipc < 3e-3


def test_inpainting_keeps_known_pixels_and_leaves_independent_ones_alone():
    # the oracle treats pixels independently, so with the same starting noise the unknown
    # pixels must come out exactly as without inpainting, whatever happens to the known ones
    model = oracle_model(CosineSchedule(100))
    noise = torch.randn(3, 1, 4, 4, generator=seeded(4))
    known = torch.rand(3, 1, 4, 4, generator=seeded(5)) * 2 - 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    plain = sample(model, noise=noise, steps=9)
    inpainted = sample(model, noise=noise, steps=9, x_known=known, mask=mask, generator=seeded(6))
    assert torch.equal(inpainted[..., :2], known[..., :2])
    torch.testing.assert_close(inpainted[..., 2:], plain[..., 2:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resample_jumps needs a memoryless one-step sampler"):
        sample(model, noise=noise, steps=9, x_known=known, mask=mask, resample_jumps=1)


def test_guidance_scale_one_is_plain_conditional_sampling():
    torch.manual_seed(0)  # parameter initialisation only
    net = UNet(
        in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8, num_classes=3
    )
    with torch.no_grad():
        net.class_embed.weight.mul_(50)  # make the labels matter
    model = DenoiseDiffusion(net, LinearSchedule(50))
    labels = torch.tensor([0, 2, 1])
    common: dict[str, Any] = {"steps": 5, "noise": torch.randn(3, 1, 8, 8, generator=seeded(0))}
    plain = sample(model, labels=labels, **common)
    guided = sample(model, labels=labels, guidance_scale=1.0, **common)
    assert torch.equal(plain, guided)
    other = sample(model, labels=torch.tensor([1, 0, 2]), **common)
    assert not torch.allclose(plain, other, atol=1e-3)
    assert sample(model, labels=labels, guidance_scale=3.0, **common).isfinite().all()


def test_per_sample_generators_make_each_sample_depend_on_its_own():
    model = oracle_model()
    batch = sample(model, shape=(3, 1, 2, 2), generator=[seeded(s) for s in (7, 8, 9)], steps=6)
    for i, seed in enumerate((7, 8, 9)):
        alone = sample(model, shape=(1, 1, 2, 2), generator=[seeded(seed)], steps=6)
        assert torch.equal(batch[i : i + 1], alone)


def test_zero_terminal_snr_works_with_bh2_and_is_refused_clearly_by_bh1():
    schedule = ZeroTerminalSNRSchedule(LinearSchedule(1000))
    model = DenoiseDiffusion(Oracle64(schedule, "v"), schedule, prediction="v")
    x_T = torch.randn(256, 1, 1, 1, generator=seeded(1), dtype=torch.float64)
    exact = ode_solution(x_T, 0.0, 1.0)  # abar = 0: x_T is pure noise, x0 = M + S x_T
    errors = [(sample(model, noise=x_T, steps=n) - exact).abs().mean().item() for n in (10, 25)]
    assert errors[1] < 0.01 and errors[1] < errors[0] < 0.1  # measured 0.073, 0.0087
    calls = []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=r"variant 'bh1' cannot correct the step out of abar = 0"):
        sample(model, UniPCSampler(variant="bh1"), noise=x_T, steps=10)
    assert not calls  # refused before the first network call
    for works in (
        dict(sampler=UniPCSampler(variant="bh1", corrector=False), noise=x_T),
        dict(
            sampler=UniPCSampler(variant="bh1"),
            x_init=x_T.clamp(-1, 1),
            start_step=998,
            generator=seeded(2),
        ),
    ):
        assert sample(model, steps=10, **works).isfinite().all()


def test_lower_order_final_is_free_at_order_2_and_lowers_the_last_steps_at_order_3():
    # the step to the clean image is first order anyway (extrapolating to lambda = inf
    # diverges), so order 2 with a clean end does not notice the option
    model = oracle_model(CosineSchedule(1000))
    noise = torch.randn(4, 1, 2, 2, generator=seeded(2))
    for steps in (5, 25):
        on = sample(model, UniPCSampler(2), noise=noise, steps=steps)
        off = sample(model, UniPCSampler(2, lower_order_final=False), noise=noise, steps=steps)
        assert torch.equal(on, off)
    on = sample(model, UniPCSampler(3), noise=noise, steps=25)
    off = sample(model, UniPCSampler(3, lower_order_final=False), noise=noise, steps=25)
    assert not torch.equal(on, off) and off.isfinite().all()


def test_by_name_config_round_trip_and_checkpoint(tmp_path: Path):
    sampler = UniPCSampler(3, "bh1", corrector=False, lower_order_final=False)
    assert sampler.config() == {
        "solver_order": 3,
        "variant": "bh1",
        "corrector": False,
        "lower_order_final": False,
    }
    assert SAMPLERS.build("unipc", sampler.config()) == sampler
    assert (
        get_sampler(
            "unipc",
            solver_order=3,
            variant=UniPCVariant.BH1,
            corrector=False,
            lower_order_final=False,
        )
        == sampler
    )
    model = oracle_model()
    noise = torch.randn(2, 1, 2, 2, generator=seeded(3))
    assert torch.equal(
        sample(model, "unipc", noise=noise, steps=5), sample(model, noise=noise, steps=5)
    )
    torch.manual_seed(0)  # parameter initialisation only
    net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4)
    DenoiseDiffusion(net, LinearSchedule(50), sampler=sampler).save_pretrained(tmp_path)
    assert DenoiseDiffusion.from_pretrained(tmp_path).sampler == sampler


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver_order": 0}, r"solver_order must be an int in \[1, 3\]; got 0"),
        ({"solver_order": 4}, r"solver_order must be an int in \[1, 3\]; got 4"),
        ({"solver_order": 2.0}, r"solver_order must be an int in \[1, 3\]; got 2.0"),
        ({"solver_order": True}, r"solver_order must be an int in \[1, 3\]; got True"),
        ({"variant": "bh3"}, r"variant must be one of 'bh1', 'bh2'; got 'bh3'"),
        ({"corrector": 1}, r"corrector must be a bool; got 1"),
        ({"lower_order_final": "yes"}, r"lower_order_final must be a bool; got 'yes'"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UniPCSampler(**kwargs)
    with pytest.raises(ValueError, match=match):
        get_sampler("unipc", **kwargs)  # by name: the same message
