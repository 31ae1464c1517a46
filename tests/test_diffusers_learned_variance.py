"""diffusers' ``variance_type="learned_range"``: learned-variance DDPMs load, sample and export.

A ``UNet2DModel`` with ``out_channels = 2 * in_channels`` and random weights, with a
``DDPMScheduler(variance_type="learned_range")``, is saved as a ``DDPMPipeline``, loaded as
``DenoiseDiffusion(learned_variance=True)`` and sampled against diffusers' own loop
(``scheduler.step(model_output, t, sample, generator=...)``), step for step. Both libraries
draw ``x_T`` and then each step's noise from one generator in the same order and shape, so the
same seed gives the same noise to both: the chains are compared exactly, not in distribution.

Where diffusers' convention differs from improved-diffusion's (a respaced chain whose last
visited timestep is above 0: diffusers adds noise at that final step, improved-diffusion and
diffusionkit do not), both are compared with a float64 reference written here from the
equations (Nichol & Dhariwal 2021, eq. 15; Ho et al. 2020, eq. 7).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_server import HubServer
from torch import Tensor

from diffusionkit import (
    ClipX0,
    CosineSchedule,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    PosteriorMeanSampler,
    UNet,
)
from diffusionkit.hub import CheckpointError

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

#: the DDPM block types at a test's size, with twice the input channels out
LEARNED = dict(
    sample_size=8,
    in_channels=3,
    out_channels=6,
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=8,
    norm_eps=1e-6,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
)
T = 50
SHAPE = (2, 3, 8, 8)
#: float32 chains: diffusers keeps alphas_cumprod in float32, diffusionkit in float64
ATOL = 1e-4


def random_unet(config: dict[str, Any], seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(**config)
    with torch.no_grad():  # perturb every tensor, so that no swapped layer goes unnoticed
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    unet = random_unet(LEARNED)
    with torch.no_grad():  # the variance half spans about [-1, 1] (frac about [0, 1])
        v = unet(torch.randn(4, 3, 8, 8), torch.tensor([0, 10, 30, 49])).sample[:, 3:]
    assert 0.3 < v.std().item() < 2.0, v.std().item()
    return unet


def save_pipeline(folder: Path, unet: UNet2DModel, **scheduler: Any) -> DDPMScheduler:
    sched = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range", **scheduler)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return sched


def diffusers_chain(
    unet: UNet2DModel, sched: DDPMScheduler, seed: int, steps: int
) -> tuple[list[int], Tensor]:
    """``x_T`` and the state after each step of diffusers' DDPMPipeline loop, ``(S + 1, B, C,
    H, W)``, and the timesteps visited: ``x_T`` and every step's noise from one generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen)
    xs = [x]
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=gen).prev_sample
            xs.append(x)
    return sched.timesteps.tolist(), torch.stack(xs)


def our_chain(
    model: DenoiseDiffusion, seed: int, steps: int | None = None, spacing: str = "leading"
) -> tuple[list[int], Tensor]:
    """The same from ``model.reverse_sample(noise=x_T)``: ``x_T`` drawn first from the seed, the
    generator (then) giving each step's noise."""
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=gen)
    traj = model.reverse_sample(
        noise=x_T,
        generator=gen,
        steps=steps,
        spacing=spacing,
        progress=False,
        return_intermediates=True,
    )
    assert torch.equal(traj.x_t[0], x_T)
    return traj.timesteps.tolist(), traj.x_t


def reference_chain(
    unet: UNet2DModel,
    alphas_cumprod: Tensor,
    timesteps: list[int],
    prediction: str,
    clip: bool,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """improved-diffusion's learned-range chain over ``timesteps`` (descending), in float64.

    On the respaced schedule of the kept timesteps (Nichol & Dhariwal 2021, Sec. 4):
    ``beta'_k = 1 - abar_k / abar_prev`` and ``beta~'_k = (1 - abar_prev) / (1 - abar_k)
    beta'_k``, ``log sigma² = frac log beta'_k + (1 - frac) log beta~'_k`` with ``frac =
    (v + 1) / 2`` (eq. 15), the mean the posterior's at the (clipped) ``x0_hat`` (Ho et al.
    2020, eq. 7), no noise at the last step. The network runs in float32 on the state.

    Returns:
        The states ``(S + 1, B, C, H, W)``, and diffusers' last state instead: the same plus
        noise of ``log sigma² = frac log(1 - abar) + (1 - frac) log(1e-20)`` (its ``beta~`` of
        a step to ``abar = 1`` is 0, clamped to 1e-20) where the last timestep is above 0.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen).double()
    xs = [x]
    abar = alphas_cumprod.double()
    last_diffusers = x
    for k, t in enumerate(timesteps):
        a = abar[t].item()
        a_prev = abar[timesteps[k + 1]].item() if k + 1 < len(timesteps) else 1.0
        beta = 1.0 - a / a_prev
        with torch.no_grad():
            out = unet(x.float(), torch.tensor(t)).sample.double()
        pred, v = out[:, :3], out[:, 3:]
        if prediction == "epsilon":
            x0 = (x - math.sqrt(1 - a) * pred) / math.sqrt(a)
        elif prediction == "v_prediction":
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * pred
        else:
            x0 = pred
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x) / (1 - a)
        frac = (v + 1) / 2
        if k + 1 < len(timesteps):
            beta_tilde = (1 - a_prev) / (1 - a) * beta
            log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
            x = mean + (0.5 * log_var).exp() * torch.randn(SHAPE, generator=gen).double()
        else:
            x = mean
            last_diffusers = mean
            if t > 0:
                log_var = frac * math.log(beta) + (1 - frac) * math.log(1e-20)
                z = torch.randn(SHAPE, generator=gen).double()
                last_diffusers = mean + (0.5 * log_var).exp() * z
        xs.append(x)
    return torch.stack(xs), last_diffusers


def max_diff(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def tolerance(ref: Tensor) -> float:
    """``ATOL``, relative where a chain leaves the data range by orders of magnitude.

    An untrained eps network without clipping on the cosine schedule does: at T = 50 the first
    step's ``abar`` is about 1e-6 (``beta`` capped at 0.999), so ``x0_hat = (x - sqrt(1 - abar)
    eps) / sqrt(abar)`` reaches 1e3 and the chain about 4e3; float32 then keeps about 1e-2
    absolute, and diffusers and diffusionkit are each about that far from the float64
    reference. Every other chain here stays within |x| < 7, where this is ``ATOL`` itself.
    """
    return ATOL * max(1.0, ref.abs().max().item())


# ----------------------------------------------------------------------------- loading


def test_learned_range_loads_as_a_learned_variance_model(tmp_path: Path, unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, unet, clip_sample=True)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    assert model.learned_variance is True
    assert model.sampler == DDPMSampler("posterior", clip_x0=True)
    assert model.x0_processing == ClipX0()
    assert model.schedule == LinearSchedule(T, 1e-4, 0.02, scale_with_timesteps=False)
    assert (model.net.in_channels, model.net.out_channels) == (3, 6)
    x, t = torch.randn(SHAPE), torch.tensor([3, 41])
    with torch.no_grad():
        assert max_diff(model.net(x, t), unet(x, t).sample) <= 1e-5


#: (scheduler settings), over prediction types, both beta schedules, clip_sample on and off
CASES = [
    {"prediction_type": "epsilon", "clip_sample": False},
    {"prediction_type": "epsilon", "clip_sample": True},
    {"prediction_type": "epsilon", "clip_sample": False, "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "epsilon", "clip_sample": True, "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "v_prediction", "clip_sample": False},
    {"prediction_type": "v_prediction", "clip_sample": True, "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "sample", "clip_sample": True},
    {"prediction_type": "sample", "clip_sample": False, "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "epsilon", "thresholding": True, "sample_max_value": 1.5},
    {"prediction_type": "v_prediction", "clip_sample": False, "rescale_betas_zero_snr": True},
]


def _id(case: dict[str, Any]) -> str:
    return "-".join(str(v) for v in case.values())


@pytest.mark.parametrize("scheduler", CASES, ids=_id)
def test_all_steps_match_diffusers(
    tmp_path: Path, unet: UNet2DModel, scheduler: dict[str, Any]
) -> None:
    sched = save_pipeline(tmp_path, unet, **scheduler)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    ts, ref = diffusers_chain(unet, sched, seed=0, steps=T)
    ours_ts, ours = our_chain(model, seed=0)
    assert ours_ts == ts == list(range(T - 1, -1, -1))
    assert ours.shape == ref.shape == (T + 1, *SHAPE)
    assert max_diff(ours, ref) <= tolerance(ref)
    assert (ref[1:] - ref[:-1]).abs().amax() > 0.1  # the steps move: the comparison means something


class PredictionHalf(torch.nn.Module):
    """A learned-variance network's first ``C`` output channels alone: its prediction."""

    def __init__(self, net: torch.nn.Module, channels: int) -> None:
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t)[:, : self.channels]


def test_the_variance_half_is_what_is_drawn_with(tmp_path: Path, unet: UNet2DModel) -> None:
    """The chain with the prediction half and the fixed beta~_t ends far from diffusers'
    learned_range chain, so the parity above could not hold with the variance half ignored;
    and the 6-channel network alone is refused by a model that does not learn its variance."""
    sched = save_pipeline(tmp_path, unet, clip_sample=True)
    _, learned = diffusers_chain(unet, sched, seed=0, steps=T)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    fixed = DenoiseDiffusion(
        PredictionHalf(model.net, 3), model.schedule, model.sampler, x0_processing=ClipX0()
    )
    _, fixed_chain = our_chain(fixed, seed=0)
    assert max_diff(learned[-1], fixed_chain[-1]) > 0.05
    plain = DenoiseDiffusion(model.net, model.schedule, model.sampler, x0_processing=ClipX0())
    with pytest.raises(ValueError, match="learned_variance=True"):  # 6 channels out, not 3
        plain.reverse_sample(SHAPE, progress=False)


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize(
    "scheduler",
    [
        {"prediction_type": "epsilon", "clip_sample": True},
        {
            "prediction_type": "v_prediction",
            "clip_sample": False,
            "beta_schedule": "squaredcos_cap_v2",
        },
        {"prediction_type": "sample", "clip_sample": False},
    ],
    ids=_id,
)
def test_respaced_steps_match_diffusers(
    tmp_path: Path, unet: UNet2DModel, scheduler: dict[str, Any], steps: int
) -> None:
    """``set_timesteps(S)`` with diffusers' default "leading" spacing (down to t = 0): both
    step between kept timesteps with the respaced beta' and beta~' (improved-diffusion's
    respacing), so the chains agree step for step."""
    sched = save_pipeline(tmp_path, unet, **scheduler)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    ts, ref = diffusers_chain(unet, sched, seed=1, steps=steps)
    ours_ts, ours = our_chain(model, seed=1, steps=steps, spacing="leading")
    assert ours_ts == ts and ts[-1] == 0 and len(ts) == steps
    assert max_diff(ours, ref) <= ATOL
    exact, _ = reference_chain(
        unet,
        sched.alphas_cumprod,
        ts,
        scheduler["prediction_type"],
        scheduler["clip_sample"],
        seed=1,
    )
    assert max_diff(ours, exact) <= ATOL


@pytest.mark.parametrize("steps", [10, 25])
def test_a_last_step_above_zero_follows_improved_diffusion(
    tmp_path: Path, unet: UNet2DModel, steps: int
) -> None:
    """With "trailing" spacing the last visited timestep is above 0 (4 and 1 here). There
    diffusers adds noise at the final step (its beta~ of a step to abar = 1 is 0, clamped to
    1e-20, so log sigma² = frac log(1 - abar) + (1 - frac) log 1e-20), while improved-diffusion
    and diffusionkit add none: every earlier step agrees, and each library's last step is its
    own convention, checked against the float64 reference."""
    sched = save_pipeline(
        tmp_path, unet, clip_sample=True, timestep_spacing="trailing", prediction_type="epsilon"
    )
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    ts, ref = diffusers_chain(unet, sched, seed=2, steps=steps)
    ours_ts, ours = our_chain(model, seed=2, steps=steps, spacing="trailing")
    assert ours_ts == ts and ts[-1] > 0
    exact, last_diffusers = reference_chain(unet, sched.alphas_cumprod, ts, "epsilon", True, seed=2)
    assert max_diff(ours, exact) <= ATOL
    assert max_diff(ours[:-1], ref[:-1]) <= ATOL
    assert max_diff(ref[-1], last_diffusers) <= tolerance(ref[-1])  # v beyond 1 extrapolates
    assert max_diff(ref[-1], ours[-1]) > 1e-3  # the conventions do differ there


# ----------------------------------------------------------------------------- refusals


def _edit(path: Path, **change: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


def test_learned_range_needs_twice_the_channels(tmp_path: Path) -> None:
    unet = random_unet({**LEARNED, "out_channels": 3})
    sched = DDPMScheduler(num_train_timesteps=T)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    _edit(tmp_path / "scheduler" / "scheduler_config.json", variance_type="learned_range")
    with pytest.raises(CheckpointError, match="in_channels=3, out_channels=3") as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "learned_range" in str(info.value) and "scheduler_config.json" in str(info.value)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_twice_the_channels_needs_learned_range(
    tmp_path: Path, unet: UNet2DModel, variance_type: str
) -> None:
    save_pipeline(tmp_path, unet)
    _edit(tmp_path / "scheduler" / "scheduler_config.json", variance_type=variance_type)
    with pytest.raises(CheckpointError, match="in_channels=3, out_channels=6") as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "learned_range" in str(info.value)


def test_other_output_channels_are_refused(tmp_path: Path) -> None:
    unet = random_unet({**LEARNED, "out_channels": 4})
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(
        tmp_path
    )
    with pytest.raises(CheckpointError, match="in_channels=3, out_channels=4"):
        DenoiseDiffusion.from_pretrained(tmp_path)


def test_learned_is_refused_with_the_reason(tmp_path: Path, unet: UNet2DModel) -> None:
    """diffusers reads "learned" as sigma² itself, improved-diffusion as log sigma²."""
    save_pipeline(tmp_path, unet)
    _edit(tmp_path / "scheduler" / "scheduler_config.json", variance_type="learned")
    with pytest.raises(CheckpointError, match="variance_type='learned' is not supported") as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "log sigma_t^2" in str(info.value) and "learned_range" in str(info.value)


def test_a_learned_variance_unet_alone_still_loads(tmp_path: Path, unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, unet)
    net = UNet.from_pretrained(tmp_path)
    assert net.out_channels == 6


# ----------------------------------------------------------------------------- export


def _learned_model(schedule: Any, sampler: Any = None, **kwargs: Any) -> DenoiseDiffusion:
    torch.manual_seed(0)
    net = UNet(
        in_channels=3, out_channels=6, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8
    )
    with torch.no_grad():  # conv_out may start at zero: give the variance half a range
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DenoiseDiffusion(net, schedule, sampler, learned_variance=True, **kwargs)


def test_export_loads_in_diffusers_and_samples_the_same(tmp_path: Path) -> None:
    model = _learned_model(
        CosineSchedule(T), DDPMSampler("posterior", clip_x0=True), prediction="v"
    )
    model.save_diffusers(tmp_path / "pipe", sample_size=8)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.scheduler.config.clip_sample is True
    assert pipe.unet.config.out_channels == 6 and pipe.unet.config.in_channels == 3
    for steps in (T, 10):
        images = pipe(
            batch_size=2,
            generator=torch.Generator().manual_seed(5),
            num_inference_steps=steps,
            output_type="pt",
        ).images
        ours = model.reverse_sample(
            SHAPE,
            generator=torch.Generator().manual_seed(5),
            steps=steps,
            spacing="leading",
            progress=False,
        )
        assert max_diff((ours / 2 + 0.5).clamp(0, 1), images) <= ATOL

    back = DenoiseDiffusion.from_diffusers(tmp_path / "pipe")
    assert back.learned_variance is True
    assert back.sampler == model.sampler and back.prediction is model.prediction
    assert back.schedule == model.schedule and back.x0_processing == model.x0_processing
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(back.net.state_dict()[name], tensor), name


@pytest.mark.parametrize(
    "sampler",
    [DDPMSampler("beta"), PosteriorMeanSampler(clip_x0=False)],
    ids=["ddpm-beta", "posterior-mean"],
)
def test_every_ddpm_step_exports_as_learned_range(tmp_path: Path, sampler: Any) -> None:
    """A learned-variance model draws with its own variance whatever the sampler's fixed one."""
    _learned_model(LinearSchedule(T), sampler).save_diffusers(tmp_path, sample_size=8)
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert config["variance_type"] == "learned_range"


@pytest.mark.parametrize(
    ("out_channels", "learned", "match"),
    [(3, True, "with learned_variance .* out_channels = 6"), (6, False, "out_channels = 3")],
)
def test_export_refuses_channels_that_do_not_match(
    tmp_path: Path, out_channels: int, learned: bool, match: str
) -> None:
    net = UNet(in_channels=3, out_channels=out_channels, dim=8, groups=4)
    model = DenoiseDiffusion(net, LinearSchedule(T), learned_variance=learned)
    with pytest.raises(ValueError, match=match):
        model.save_diffusers(tmp_path / "out", sample_size=8)
    assert not (tmp_path / "out").exists()


def test_a_learned_range_pipeline_pulled_from_the_hub(
    hub_server: HubServer, tmp_path: Path, unet: UNet2DModel
) -> None:
    """Written by diffusers itself, uploaded to the test Hub server, loaded by repo id."""
    from huggingface_hub import HfApi

    save_pipeline(tmp_path / "pipeline", unet, clip_sample=True)
    repo_id = hub_server.new_repo_id(prefix="ddpm-learned")
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=tmp_path / "pipeline")
    pulled = DenoiseDiffusion.from_pretrained(repo_id)
    local = DenoiseDiffusion.from_pretrained(tmp_path / "pipeline")
    assert pulled.learned_variance is True and pulled.sampler == local.sampler
    assert torch.equal(
        our_chain(pulled, seed=3, steps=10)[1], our_chain(local, seed=3, steps=10)[1]
    )
