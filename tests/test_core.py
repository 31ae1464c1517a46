"""The layered core: config capture, x0 processing, the denoiser view, the chain contract."""

from __future__ import annotations

import enum

import numpy as np
import pytest
import torch
from oracles import GaussianOracle, seeded

from diffusionkit import (
    ClipX0,
    CosineSchedule,
    DDIMSampler,
    DDPMSampler,
    DenoiseDiffusion,
    DynamicThreshold,
    LinearSchedule,
    Sampler,
    ZeroTerminalSNRSchedule,
)
from diffusionkit.chain import Chain
from diffusionkit.configurable import Component, Configurable
from diffusionkit.prediction import Prediction
from diffusionkit.thresholding import X0_PROCESSINGS, X0Processing
from diffusionkit.view import DenoiserView

# ----------------------------------------------------------------------- config capture


class Color(str, enum.Enum):
    RED = "red"


class Part(Component):
    def __init__(self, size: int, shape=(1, 2), color: Color = Color.RED, table=None) -> None:
        self.size = size


class Bigger(Part):
    def __init__(self, extra: float = 0.5) -> None:
        super().__init__(size=99)
        self.extra = extra


class Loose(Component):
    def __init__(self, *args, **kwargs) -> None:
        pass


def test_config_records_the_outermost_constructor_with_defaults_as_json_data():
    part = Part(3, table=torch.tensor([1, 2]))
    assert part.config() == {"size": 3, "shape": [1, 2], "color": "red", "table": [1, 2]}
    assert Bigger().config() == {"extra": 0.5}  # not the size=99 its super() call passed
    assert Part(**part.config()) == part
    config = part.config()
    config["shape"].append(3)  # a copy: the object's record is untouched
    assert part.config()["shape"] == [1, 2]


def test_value_semantics_follow_the_config():
    assert Part(3) == Part(size=3, shape=[1, 2]) and hash(Part(3)) == hash(Part(3, (1, 2)))
    assert Part(3) != Part(4) and Part(3) != Bigger()
    assert repr(Part(3)) == "Part(size=3, shape=[1, 2], color='red', table=None)"
    # 0 == 0.0 and hash alike, as Python numbers do
    assert DDIMSampler(0) == DDIMSampler(0.0) and hash(DDIMSampler(0)) == hash(DDIMSampler(0.0))
    zero = ZeroTerminalSNRSchedule(CosineSchedule(10))
    assert zero == ZeroTerminalSNRSchedule(CosineSchedule(timesteps=10))
    assert zero != ZeroTerminalSNRSchedule(CosineSchedule(11))


def test_keyword_arguments_are_recorded_by_name_and_unnamed_ones_refused():
    assert Loose(a=1, b=[2]).config() == {"a": 1, "b": [2]}
    with pytest.raises(TypeError, match=r"unnamed \*args"):
        Loose(1).config()


def test_a_plain_configurable_has_config_but_identity_semantics():
    class Net(Configurable):
        def __init__(self, width: int = 4) -> None:
            self.width = width

    a, b = Net(), Net()
    assert a.config() == {"width": 4} and a != b


# ---------------------------------------------------------------------- x0 processing


def _reference_threshold(x0: np.ndarray, p: float, top: float | None) -> np.ndarray:
    out = np.empty_like(x0)
    for i, sample in enumerate(x0):
        s = max(np.quantile(np.abs(sample), p), 1.0)
        s = s if top is None else min(s, top)
        out[i] = np.clip(sample, -s, s) / s
    return out


@pytest.mark.parametrize(("percentile", "top"), [(0.995, None), (0.9, 2.0), (0.5, None)])
def test_dynamic_threshold_matches_a_direct_reference(percentile, top):
    x0 = torch.randn(5, 3, 4, 4, generator=seeded(0), dtype=torch.float64) * 2
    x0[0] *= 0.1  # one sample already in range: unchanged
    got = DynamicThreshold(percentile, top)(x0)
    want = _reference_threshold(x0.numpy(), percentile, top)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[0], x0[0]) and got.abs().max() <= 1.0


def test_dynamic_threshold_capped_at_one_is_clipping_and_bad_arguments_are_refused():
    x0 = torch.randn(4, 1, 3, 3, generator=seeded(1)) * 3
    assert torch.equal(DynamicThreshold(max_value=1.0)(x0), ClipX0()(x0))
    assert DynamicThreshold()(x0.half()).dtype == torch.float16
    for kwargs, match in (
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 1.5}, "percentile"),
        ({"max_value": 0.5}, "max_value"),
        ({"max_value": float("inf")}, "max_value"),
    ):
        with pytest.raises(ValueError, match=match):
            DynamicThreshold(**kwargs)
    assert X0_PROCESSINGS.build("dynamic-threshold", {"percentile": 0.9}) == DynamicThreshold(0.9)
    assert X0_PROCESSINGS.build("clip") == ClipX0()


def test_the_model_refuses_what_is_not_an_x0_processing():
    with pytest.raises(TypeError, match="x0_processing must be"):
        DenoiseDiffusion(
            GaussianOracle(LinearSchedule(50), 0, 1), LinearSchedule(50), x0_processing="clip"
        )


# ------------------------------------------------------------------------- the view


class CountingClip(X0Processing):
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x0):
        self.calls += 1
        return x0.clamp(-1, 1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("processing", [None, ClipX0(), DynamicThreshold(0.9)])
def test_denoised_eps_and_x0_are_consistent(prediction, processing):
    schedule = LinearSchedule(50)
    oracle = GaussianOracle(schedule, mean=0.3, std=2.0, prediction=prediction)
    view = DenoiserView(lambda x, t: oracle(x, t), schedule, Prediction(prediction), processing)
    x = torch.randn(3, 1, 4, 4, generator=seeded(2), dtype=torch.float64) * 2
    t = torch.full((3,), 30)
    abar = schedule.alphas_cumprod[30].item()
    d = view.at(x, t, abar)
    torch.testing.assert_close(abar**0.5 * d.x0 + (1 - abar) ** 0.5 * d.eps, x)
    if processing is None:  # the network's own estimates
        eps, x0 = view.predict(x, t)
        torch.testing.assert_close(d.eps, eps)
        torch.testing.assert_close(d.x0, x0)
    else:
        assert d.x0.abs().max() <= 1.0 + 1e-12


def test_denoised_computes_each_estimate_once_and_only_when_read():
    schedule = LinearSchedule(50)
    counting = CountingClip()
    oracle = GaussianOracle(schedule, 0.0, 1.0)
    view = DenoiserView(lambda x, t: oracle(x, t), schedule, Prediction.EPS, counting)
    d = view.at(torch.randn(2, 1, 2, 2), torch.full((2,), 5), schedule.alphas_cumprod[5].item())
    assert counting.calls == 0
    d.eps, d.x0, d.eps
    assert counting.calls == 1


# -------------------------------------------------------------- the sampler contract


class Midpoint(Sampler):
    """A user solver that owns its loop: DDIM to the middle of each step, then the full step
    from there with the middle's estimate (two calls per step but the last)."""

    def steps_for_calls(self, calls, clean_end):
        return (calls + 1) // 2

    def calls_for_steps(self, steps, clean_end):
        return 2 * steps - 1

    def sample(self, x, chain):
        for k, i in enumerate(chain.indices):
            coef = chain.coefficients(i)
            d = chain.denoise(x, i)
            x = d.x
            target = coef.alpha_cumprod_prev
            if target < 1.0:
                mid_abar = (coef.alpha_cumprod * target) ** 0.5
                mid = mid_abar**0.5 * d.x0 + (1 - mid_abar) ** 0.5 * d.eps
                d2 = chain.view.at(mid, torch.full((x.shape[0],), 0), mid_abar)
                eps, x0 = d2.eps, d2.x0
            else:
                eps, x0 = d.eps, d.x0
            x = target**0.5 * x0 + (1 - target) ** 0.5 * eps
            x = chain.step_done(k, i, x, d)
        return x


def _oracle_model(schedule, **kwargs):
    return DenoiseDiffusion(GaussianOracle(schedule, 0.2, 0.5), schedule, **kwargs)


def test_a_sampler_implements_sample_or_step():
    with pytest.raises(TypeError, match=r"sample\(\).*step\(\)"):
        Sampler()

    class Nothing(Sampler):
        pass

    with pytest.raises(TypeError, match="Can't instantiate Nothing"):
        Nothing()


def test_a_user_solver_that_owns_its_loop_gets_calls_callbacks_and_progress():
    schedule = LinearSchedule(100)
    model = _oracle_model(schedule)
    calls, seen = [], []
    model.net.register_forward_hook(lambda *a: calls.append(1))
    traj = model.reverse_sample(
        (2, 1, 2, 2),
        generator=seeded(0),
        sampler=Midpoint(),
        steps=9,
        progress=False,
        return_intermediates=True,
        callback=lambda k, t, x, x0: seen.append((k, t)),
    )
    assert len(calls) == 9  # 5 steps: 2 + 2 + 2 + 2 + 1 network calls
    assert [k for k, _ in seen] == [0, 1, 2, 3, 4] and traj.x_t.shape[0] == 6
    assert [t for _, t in seen] == traj.timesteps.tolist()
    with pytest.raises(ValueError, match="resample_jumps needs a memoryless one-step sampler"):
        model.reverse_sample(
            (1, 1, 2, 2),
            sampler=Midpoint(),
            x_known=torch.zeros(1, 1, 2, 2),
            mask=torch.ones(1, 1, 2, 2),
            resample_jumps=1,
        )


def test_inpainting_works_with_a_solver_that_owns_its_loop():
    schedule = LinearSchedule(100)
    known = torch.full((2, 1, 2, 2), 0.7)
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0] = 1
    out = _oracle_model(schedule).reverse_sample(
        sampler=Midpoint(), steps=11, x_known=known, mask=mask, generator=seeded(1), progress=False
    )
    assert torch.equal(out[..., 0], known[..., 0])
    assert not torch.equal(out[..., 1], known[..., 1])


# ----------------------------------------------------------------- the starting noise


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler()])
def test_noise_is_the_draw_that_starts_the_chain(sampler):
    schedule = CosineSchedule(30)
    model = _oracle_model(schedule)
    shape = (3, 1, 2, 2)
    first = torch.randn(shape, generator=seeded(5))
    gen = seeded(5)
    want = model.reverse_sample(shape, generator=gen, sampler=sampler, steps=8, progress=False)
    rest = seeded(5)
    torch.randn(shape, generator=rest)  # the draw that noise= replaces
    got = model.reverse_sample(
        noise=first, generator=rest, sampler=sampler, steps=8, progress=False
    )
    assert torch.equal(got, want)


def test_noise_noises_x_init_and_is_checked():
    schedule = LinearSchedule(40)
    model = _oracle_model(schedule)
    x_init = torch.zeros(2, 1, 2, 2)
    noise = torch.randn(2, 1, 2, 2, generator=seeded(3))
    traj = model.reverse_sample(
        x_init=x_init,
        start_step=20,
        noise=noise,
        sampler=DDIMSampler(),
        progress=False,
        return_intermediates=True,
    )
    abar = schedule.alphas_cumprod[20].item()
    torch.testing.assert_close(traj.x_t[0], (1 - abar) ** 0.5 * noise)
    with pytest.raises(ValueError, match="noise shape"):
        model.reverse_sample((2, 1, 2, 2), noise=torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        model.reverse_sample((1, 1, 2, 2), noise=torch.full((1, 1, 2, 2), float("nan")))


def test_x0_processing_reaches_samplers_chosen_by_name():
    schedule = CosineSchedule(30)
    wide = DenoiseDiffusion(GaussianOracle(schedule, 0.0, 3.0), schedule)  # data beyond [-1, 1]
    clipped = DenoiseDiffusion(wide.net, schedule, x0_processing=ClipX0())
    seen = []
    clipped.reverse_sample(
        (64, 1, 2, 2),
        generator=seeded(0),
        sampler="ddim",
        steps=6,
        progress=False,
        callback=lambda k, t, x, x0: seen.append(x0.abs().max().item()),
    )
    assert max(seen) <= 1.0
    unclipped = wide.reverse_sample(
        (64, 1, 2, 2), generator=seeded(0), sampler="ddim", steps=6, progress=False
    )
    assert unclipped.abs().max() > 1.5


def test_chain_reports_the_plan():
    schedule = LinearSchedule(50)
    model = _oracle_model(schedule)
    seen = {}

    class Spy(Sampler):
        def sample(self, x, chain: Chain):
            seen["indices"] = list(chain.indices)
            seen["calls"] = chain.calls
            seen["targets"] = [chain.coefficients(i).alpha_cumprod_prev for i in chain.indices]
            return x

    model.reverse_sample((1, 1, 2, 2), sampler=Spy(), steps=4, progress=False)
    assert seen["indices"] == [3, 2, 1, 0] and seen["calls"] == 4
    assert seen["targets"][-1] == 1.0  # the last step of a clean chain goes to abar = 1


def test_a_default_sampler_that_clips_makes_the_model_clip(tmp_path):
    """The trap of issue 13: DDPMSampler(clip_x0=True) as the model's sampler was how models
    clipped; a sampler chosen by name then did not clip. Now the model does."""
    schedule = CosineSchedule(30)
    oracle = GaussianOracle(schedule, 0.0, 3.0)
    model = DenoiseDiffusion(oracle, schedule, DDPMSampler(clip_x0=True))
    assert model.x0_processing == ClipX0()
    assert DenoiseDiffusion(oracle, schedule, DDPMSampler()).x0_processing is None
    threshold = DynamicThreshold(0.9)
    explicit = DenoiseDiffusion(
        oracle, schedule, DDPMSampler(clip_x0=True), x0_processing=threshold
    )
    assert explicit.x0_processing is threshold
    seen = []
    model.reverse_sample(
        (16, 1, 2, 2), sampler="ddim", steps=5, progress=False,
        callback=lambda k, t, x, x0: seen.append(x0.abs().max().item()),
    )  # fmt: skip
    assert max(seen) <= 1.0
