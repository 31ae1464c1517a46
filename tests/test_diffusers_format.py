"""diffusers' DDPM layout: loading it gives diffusers' own predictions and sampling trajectories.

diffusers is the independent reference here (a test-only dependency): its ``UNet2DModel`` with
random weights and its ``DDPMScheduler`` are saved as a ``DDPMPipeline``, loaded with
diffusionkit, and compared prediction for prediction and step for step, feeding both the same
noise. Exports are checked by loading them with diffusers itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffusionkit import CosineSchedule, DDPMSampler, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.hub import CheckpointError, CheckpointNotFoundError
from diffusionkit.schedules import ZeroTerminalSNRSchedule

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

#: google/ddpm-cifar10-32's unet/config.json (the fields that matter; see FIELD-NOTES)
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    act_fn="silu",
    time_embedding_type="positional",
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    center_input_sample=False,
    mid_block_scale_factor=1,
)
#: the same block types, small enough to sample with in a test
SMALL = {
    **CIFAR10,
    "sample_size": 8,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}
STEPS = 20


def random_unet(config: dict[str, Any], seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(**config)
    with torch.no_grad():  # default init leaves every norm at weight 1, bias 0: swapped norms
        # would go unnoticed, so perturb every tensor
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet.eval()


def save_pipeline(folder: Path, unet: UNet2DModel, **scheduler: Any) -> DDPMScheduler:
    sched = DDPMScheduler(**scheduler)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return sched


@pytest.fixture(scope="module")
def small_unet() -> UNet2DModel:
    return random_unet(SMALL)


# ----------------------------------------------------------------------------- equivalence


def test_cifar10_config_predicts_the_same_eps(tmp_path: Path) -> None:
    unet = random_unet(CIFAR10)
    save_pipeline(tmp_path, unet, variance_type="fixed_large", clip_sample=True)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    assert sum(p.numel() for p in model.net.parameters()) == 35_746_307
    assert model.schedule == LinearSchedule(1000, 1e-4, 0.02, scale_with_timesteps=False)
    assert model.sampler == DDPMSampler("beta", clip_x0=True)
    x, t = (
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        torch.tensor([617]),
    )
    with torch.no_grad():
        ref = unet(x, t).sample
        ours = model.predict_eps(x, t)
    diff = (ours - ref).abs().max().item()
    assert diff <= 1e-5, diff


def diffusers_trajectory(unet: UNet2DModel, scheduler: DDPMScheduler, seed: int) -> Tensor:
    """``x_T, ..., x_0`` of diffusers' own DDPM loop: the first noise and each step's from one generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    xs = [x]
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=gen).prev_sample
            xs.append(x)
    return torch.stack(xs)


@pytest.mark.parametrize(
    "scheduler",
    [
        {"variance_type": "fixed_small", "clip_sample": False},
        {"variance_type": "fixed_small", "clip_sample": True},
        {"variance_type": "fixed_large", "clip_sample": False},
        {"variance_type": "fixed_large", "clip_sample": True},
        {"variance_type": "fixed_large", "clip_sample": True, "beta_schedule": "squaredcos_cap_v2"},
        {"variance_type": "fixed_small", "clip_sample": False, "prediction_type": "v_prediction"},
        {"variance_type": "fixed_small", "clip_sample": True, "prediction_type": "sample"},
        {
            "variance_type": "fixed_small",
            "clip_sample": False,
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
        },
        # dynamic thresholding (Saharia et al. 2022), which takes precedence over clip_sample
        {"variance_type": "fixed_small", "thresholding": True, "sample_max_value": 1.5},
        {
            "variance_type": "fixed_large",
            "clip_sample": True,
            "thresholding": True,
            "dynamic_thresholding_ratio": 0.9,
            "sample_max_value": 3.0,
        },
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
def test_sampling_trajectory_matches_ddpm_pipeline(
    tmp_path: Path, small_unet: UNet2DModel, scheduler: dict[str, Any]
) -> None:
    sched = save_pipeline(tmp_path, small_unet, num_train_timesteps=STEPS, **scheduler)
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    ref = diffusers_trajectory(small_unet, sched, seed=0)
    gen = torch.Generator().manual_seed(0)
    ours = model.reverse_sample(
        (2, 3, 8, 8), generator=gen, progress=False, return_intermediates=True
    ).x_t
    assert ours.shape == ref.shape == (STEPS + 1, 2, 3, 8, 8)
    # diffusers keeps alphas_cumprod in float32 (1 - abar loses digits near t = 0), diffusionkit
    # in float64: a few 1e-5 apart, while one step's noise is ~1e-1
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)
    assert (ref[1:] - ref[:-1]).abs().amax() > 0.1


def test_final_samples_match_ddpm_pipeline_call(tmp_path: Path, small_unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, small_unet, num_train_timesteps=STEPS, variance_type="fixed_large")
    pipe = DDPMPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=STEPS,
        output_type="pt",
    ).images  # (B, C, H, W) in [0, 1]
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    ours = model.reverse_sample(
        (2, 3, 8, 8), generator=torch.Generator().manual_seed(3), progress=False
    )
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), images, rtol=0, atol=1e-4)


def test_multi_head_attention_config(tmp_path: Path) -> None:
    unet = random_unet({**SMALL, "attention_head_dim": 8})
    save_pipeline(tmp_path, unet)
    net = UNet.from_pretrained(tmp_path)  # a network alone, out of a pipeline
    assert net.head_dim == 8
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), unet(x, t).sample, rtol=0, atol=1e-5)


def test_legacy_attention_names(tmp_path: Path, small_unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, small_unet)
    path = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = {}
    for name, tensor in load_file(path).items():
        for new, old in legacy.items():
            name = name.replace(f".{new}.", f".{old}.")
        tensors[name] = tensor
    assert any(".proj_attn." in n for n in tensors)
    save_file(tensors, path)
    net = UNet.from_diffusers(tmp_path / "unet")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 500])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), small_unet(x, t).sample, rtol=0, atol=1e-5)


def test_pickled_weights_need_an_explicit_opt_in(tmp_path: Path, small_unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, small_unet)
    unet_dir = tmp_path / "unet"
    torch.save(
        load_file(unet_dir / "diffusion_pytorch_model.safetensors"),
        unet_dir / "diffusion_pytorch_model.bin",
    )
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"never unpickles.*allow_pickle=True"):
        DenoiseDiffusion.from_pretrained(tmp_path)
    model = DenoiseDiffusion.from_pretrained(tmp_path, allow_pickle=True)
    assert torch.equal(model.net.conv_in.weight, small_unet.conv_in.weight)
    (unet_dir / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"diffusion_pytorch_model\.safetensors"):
        DenoiseDiffusion.from_pretrained(tmp_path, allow_pickle=True)


# ----------------------------------------------------------------------------- what cannot map


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"act_fn": "gelu"}, "act_fn"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"center_input_sample": True}, "center_input_sample"),
        ({"mid_block_scale_factor": 1.414}, "mid_block_scale_factor"),
        ({"attn_norm_num_groups": 4}, "attn_norm_num_groups"),
        ({"num_class_embeds": 10}, "num_class_embeds"),
        ({"downsample_type": "resnet"}, "downsample_type"),
        ({"down_block_types": ["DownBlock2D", "SkipDownBlock2D"]}, "SkipDownBlock2D"),
        ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, "must mirror"),
        ({"block_out_channels": [16, 24]}, "multiples of the first"),
        ({"attention_head_dim": 12}, "does not divide"),
        ({"brand_new_option": 1}, "brand_new_option"),
    ],
)
def test_unrepresentable_unet_configs_are_refused(
    tmp_path: Path, small_unet: UNet2DModel, change: dict[str, Any], field: str
) -> None:
    save_pipeline(tmp_path, small_unet)
    path = tmp_path / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=field) as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "unet/config.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"beta_schedule": "scaled_linear"}, "beta_schedule"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"variance_type": "fixed_large_log"}, "variance_type"),
        ({"variance_type": "learned"}, "variance_type"),
        ({"variance_type": "learned_range"}, "variance_type"),  # a 3-channel UNet
        ({"thresholding": "yes"}, "thresholding"),
        ({"thresholding": True, "sample_max_value": 0.5}, "thresholding"),
        ({"clip_sample": True, "clip_sample_range": 2.0}, "clip_sample_range"),
        ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr"),
        ({"prediction_type": "flow"}, "prediction_type"),
        # JSON values that are no names at all (a list cannot even be looked up)
        ({"variance_type": ["fixed_small"]}, "variance_type"),
        ({"prediction_type": {"epsilon": 1}}, "prediction_type"),
        ({"_class_name": "DDIMScheduler"}, "DDIMScheduler"),
    ],
)
def test_unrepresentable_scheduler_configs_are_refused(
    tmp_path: Path, small_unet: UNet2DModel, change: dict[str, Any], field: str
) -> None:
    save_pipeline(tmp_path, small_unet)
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError, match=field) as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "scheduler_config.json" in str(info.value)


def test_the_published_checkpoints_config_files_load(
    tmp_path: Path, small_unet: UNet2DModel
) -> None:
    """google/ddpm-cifar10-32's unet/config.json (diffusers 0.0.4) and scheduler_config.json
    (0.1.1) hold only these fields: the others take diffusers' defaults, as in diffusers."""
    save_pipeline(tmp_path, small_unet)
    unet_config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": "0.0.4",
        "act_fn": "silu",
        "attention_head_dim": None,
        "block_out_channels": [16, 32],
        "center_input_sample": False,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "in_channels": 3,
        "layers_per_block": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 8,
        "time_embedding_type": "positional",
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    }
    scheduler_config = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.1.1",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "trained_betas": None,
        "variance_type": "fixed_large",
    }
    (tmp_path / "unet" / "config.json").write_text(json.dumps(unet_config))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    assert model.sampler == DDPMSampler("beta", clip_x0=True)
    reference = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 990])
    with torch.no_grad():
        torch.testing.assert_close(
            model.predict_eps(x, t), reference(x, t).sample, atol=1e-5, rtol=0
        )


def test_an_old_config_without_optional_fields_takes_diffusers_defaults(
    tmp_path: Path, small_unet: UNet2DModel
) -> None:
    """diffusers fills omitted fields with its defaults (clip_sample true, fixed_small, ...)."""
    save_pipeline(tmp_path, small_unet)
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "DDPMScheduler", "tensor_format": "pt"}))
    model = DenoiseDiffusion.from_pretrained(tmp_path)
    assert model.sampler == DDPMSampler("posterior", clip_x0=True)
    assert model.schedule == LinearSchedule(1000, 1e-4, 0.02, scale_with_timesteps=False)


def test_a_latent_pipeline_is_refused(tmp_path: Path, small_unet: UNet2DModel) -> None:
    save_pipeline(tmp_path, small_unet)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["vqvae"] = ["diffusers", "VQModel"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="vqvae"):
        DenoiseDiffusion.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- export


def test_export_loads_in_diffusers_and_samples_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    T_EXPORT = 40  # with diffusionkit's 1000 / T scaling: betas up to 0.5
    net = UNet(in_channels=3, dim=16, dim_mults=(1, 2), attns=(True, False), groups=8, head_dim=8)
    model = DenoiseDiffusion(
        net, LinearSchedule(timesteps=T_EXPORT), DDPMSampler("beta", clip_x0=True), prediction="v"
    )
    model.save_diffusers(tmp_path / "pipe", sample_size=8)
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, T_EXPORT - 1])
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t).sample, net(x, t), rtol=0, atol=1e-5)
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(4),
        num_inference_steps=T_EXPORT,
        output_type="pt",
    ).images
    ours = model.reverse_sample(
        (2, 3, 8, 8), generator=torch.Generator().manual_seed(4), progress=False
    )
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), images, rtol=0, atol=1e-4)

    back = DenoiseDiffusion.from_diffusers(tmp_path / "pipe")
    assert back.sampler == model.sampler and back.prediction is model.prediction
    assert torch.equal(back.net.conv_in.weight, net.conv_in.weight)
    # diffusionkit's 1000 / T scaling of the linear ends is baked into the exported betas
    torch.testing.assert_close(back.schedule.betas, model.schedule.betas, rtol=1e-12, atol=0)


def test_zero_terminal_snr_exports_as_rescaled_betas(tmp_path: Path) -> None:
    schedule = ZeroTerminalSNRSchedule(CosineSchedule(timesteps=30))
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, True), groups=4)
    DenoiseDiffusion(net, schedule, prediction="v").save_diffusers(tmp_path, sample_size=8)
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert scheduler.config.rescale_betas_zero_snr
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, atol=1e-6, rtol=0
    )
    assert DenoiseDiffusion.from_diffusers(tmp_path).schedule == schedule


def test_unet_export_loads_as_unet2dmodel(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2, 2), attns=(False, True, False), groups=4)
    ema = {k: v + 0.01 for k, v in net.state_dict().items()}
    net.save_diffusers(tmp_path, sample_size=(8, 16), ema=ema)
    unet = UNet2DModel.from_pretrained(tmp_path).eval()
    assert unet.config.sample_size == [8, 16]
    net.load_state_dict(ema)
    x, t = torch.randn(2, 1, 8, 16), torch.tensor([1, 999])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, net(x, t), rtol=0, atol=1e-5)
    assert torch.equal(UNet.from_diffusers(tmp_path).conv_out.weight, net.conv_out.weight)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (DenoiseDiffusion(UNet(in_channels=1, dim=8, groups=4, num_classes=3)), "class or image"),
        (
            DenoiseDiffusion(UNet(in_channels=1, dim=8, dim_mults=(2, 4), attns=(0, 1), groups=4)),
            "start with 1",
        ),
        (DenoiseDiffusion(UNet(in_channels=1, dim=8, groups=4), CosineSchedule(s=0.02)), "cosine"),
        (
            DenoiseDiffusion(UNet(in_channels=1, dim=8, n_blocks=(1, 2, 2, 2), groups=4)),
            "n_blocks",
        ),
        (
            DenoiseDiffusion(
                UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(1, 0), groups=4, heads=2)
            ),
            "heads of width .* differ",
        ),
    ],
)
def test_what_diffusers_cannot_express_is_refused(
    tmp_path: Path, model: DenoiseDiffusion, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        model.save_diffusers(tmp_path / "out", sample_size=8)
    assert not (tmp_path / "out").exists()


def test_from_diffusers_refuses_a_diffusionkit_checkpoint(tmp_path: Path) -> None:
    model = DenoiseDiffusion(
        UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, True), groups=4)
    )
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="use from_pretrained"):
        DenoiseDiffusion.from_diffusers(tmp_path)
