"""The diffusionkit checkpoint format on disk: exact round trips, strict and safe loading.

Hub transfers are in test_hub_remote.py and the diffusers layout in test_diffusers_format.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import diffusionkit.hub.atomic as atomic
import diffusionkit.hub.checkpoint as checkpoint
from diffusionkit import (
    CosineSchedule,
    DDPMSampler,
    DenoiseDiffusion,
    Denoiser,
    DynamicThreshold,
    LinearSchedule,
    MinSNRWeighting,
    PosteriorMeanSampler,
    UNet,
)
from diffusionkit.hub import CheckpointError, CheckpointNotFoundError
from diffusionkit.hub.integrity import sha256_file
from diffusionkit.networks import NETWORKS
from diffusionkit.schedules import ZeroTerminalSNRSchedule

SHAPE = (2, 1, 8, 8)


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, True), groups=4)


def tiny_model(seed: int = 0, **kwargs: Any) -> DenoiseDiffusion:
    kwargs.setdefault("schedule", LinearSchedule(timesteps=8, scale_with_timesteps=False))
    return DenoiseDiffusion(tiny_unet(seed), **kwargs)


def sample(model: DenoiseDiffusion, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return model.reverse_sample(SHAPE, generator=gen, progress=False)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def perturbed(net: nn.Module, delta: float) -> dict[str, Tensor]:
    """A state dict of ``net`` with every float tensor shifted: stands in for EMA weights."""
    return {k: v + delta if v.is_floating_point() else v for k, v in net.state_dict().items()}


def rewrite_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------- round trips


def test_round_trip_samples_bit_identically(tmp_path: Path) -> None:
    model = tiny_model(
        schedule=CosineSchedule(timesteps=10, s=0.01),
        sampler=PosteriorMeanSampler(clip_x0=False),
        prediction="v",
    )
    model.save_pretrained(tmp_path / "ckpt")
    loaded = DenoiseDiffusion.from_pretrained(tmp_path / "ckpt")
    assert loaded.schedule == model.schedule
    assert loaded.sampler == model.sampler
    assert loaded.prediction is model.prediction
    assert loaded.net.config() == model.net.config()
    assert not loaded.training
    assert torch.equal(sample(loaded), sample(model))
    assert not torch.equal(sample(loaded, seed=1), sample(model))  # the comparison can fail


def test_nested_components_and_loss_weighting_round_trip(tmp_path: Path) -> None:
    schedule = ZeroTerminalSNRSchedule(CosineSchedule(timesteps=10))  # holds another schedule
    model = tiny_model(schedule=schedule, prediction="v", weighting=MinSNRWeighting(gamma=3.0))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["schedule"]["config"]["base"]["class"] == "CosineSchedule"
    assert config["weighting"] == {"class": "MinSNRWeighting", "config": {"gamma": 3.0}}
    loaded = DenoiseDiffusion.from_pretrained(tmp_path)
    assert loaded.schedule.config()["base"] == schedule.base
    assert torch.equal(loaded.schedule.betas, schedule.betas)
    assert loaded.weighting == model.weighting
    x0 = torch.rand(SHAPE) * 2 - 1
    loss = loaded.loss(x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, model.loss(x0, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(sample(loaded), sample(model))


def test_config_json_schema_and_weights_only(tmp_path: Path) -> None:
    model = tiny_model(sampler=DDPMSampler("beta", clip_x0=True))
    model.x0_processing = DynamicThreshold(0.99, max_value=2.0)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["diffusionkit_format"] == 3
    assert config["diffusionkit_version"]
    assert config["kind"] == "diffusion"
    assert config["net"] == {"class": "UNet", "config": model.net.config()}
    assert config["schedule"] == {"class": "LinearSchedule", "config": model.schedule.config()}
    assert config["sampler"] == {
        "class": "DDPMSampler",
        "config": {"variance": "beta", "clip_x0": True},
    }
    assert config["prediction"] == "eps"
    assert config["weighting"] is None
    assert config["x0_processing"] == {
        "class": "DynamicThreshold",
        "config": {"percentile": 0.99, "max_value": 2.0},
    }
    assert config["learned_variance"] is False
    assert config["vlb_weight"] == 0.001
    assert DenoiseDiffusion.from_pretrained(tmp_path).x0_processing == model.x0_processing
    weights = config["weights"]
    assert set(weights) == {"model"}
    assert weights["model"]["file"] == "model.safetensors"
    assert weights["model"]["sha256"] == sha256_file(tmp_path / "model.safetensors")
    # the learned weights only, under the network's own names: no schedule tables
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors.keys() == model.net.state_dict().keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]


def test_unet_round_trip_and_net_from_a_full_checkpoint(tmp_path: Path) -> None:
    net = tiny_unet()
    net.save_pretrained(tmp_path / "net")
    assert json.loads((tmp_path / "net" / "config.json").read_text())["kind"] == "network"
    x, t = torch.randn(SHAPE), torch.tensor([0, 11])
    loaded = UNet.from_pretrained(tmp_path / "net")
    assert torch.equal(loaded(x, t), net.eval()(x, t))

    tiny_model().save_pretrained(tmp_path / "full")
    from_full = UNet.from_pretrained(tmp_path / "full")
    assert torch.equal(from_full(x, t), net(x, t))
    with pytest.raises(CheckpointError, match="network alone"):
        DenoiseDiffusion.from_pretrained(tmp_path / "net")


def test_bfloat16_weights_come_back_in_bfloat16(tmp_path: Path) -> None:
    model = tiny_model().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = DenoiseDiffusion.from_pretrained(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    for a, b in zip(loaded.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- EMA


def test_ema_loaded_by_default_and_raw_on_request(tmp_path: Path) -> None:
    model = tiny_model()
    ema = tiny_model(seed=1)  # a whole model is accepted: its net is taken
    model.save_pretrained(tmp_path, ema=ema)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["weights"]["ema"]["file"] == "ema.safetensors"

    default = DenoiseDiffusion.from_pretrained(tmp_path)
    raw = DenoiseDiffusion.from_pretrained(tmp_path, use_ema=False)
    assert same_weights(default.net, ema.net)
    assert same_weights(raw.net, model.net)
    assert not same_weights(default.net, raw.net)
    assert torch.equal(sample(default), sample(ema))
    assert same_weights(UNet.from_pretrained(tmp_path), ema.net)  # a network loads the EMA too


@pytest.mark.parametrize("prefix", ["", "net."])
def test_ema_as_a_state_dict(tmp_path: Path, prefix: str) -> None:
    model = tiny_model()
    ema = {prefix + k: v for k, v in perturbed(model.net, 0.5).items()}
    model.save_pretrained(tmp_path, ema=ema)
    loaded = DenoiseDiffusion.from_pretrained(tmp_path)
    assert same_weights(loaded.net, model.net) is False
    assert torch.equal(loaded.net.conv_in.weight, model.net.conv_in.weight + 0.5)


def test_ema_of_another_architecture_is_refused(tmp_path: Path) -> None:
    other = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    with pytest.raises(ValueError, match="missing tensor"):
        tiny_model().save_pretrained(tmp_path, ema=other)
    assert not tmp_path.joinpath("config.json").exists()


def test_saving_again_without_ema_removes_the_stale_ema(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path, ema=perturbed(model.net, 1.0))
    (tmp_path / "notes.txt").write_text("mine")
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "ema.safetensors").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert same_weights(DenoiseDiffusion.from_pretrained(tmp_path).net, model.net)


# ----------------------------------------------------------------------------- model card


def test_model_card_and_sample_grid(tmp_path: Path) -> None:
    from PIL import Image

    grid = tmp_path / "grid.png"
    Image.new("RGB", (4, 4)).save(grid)
    tiny_model().save_pretrained(tmp_path / "ckpt", sample_grid=grid)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusionkit" in card
    assert "![Samples from this model](sample_grid.png)" in card
    assert "DenoiseDiffusion.from_pretrained(" in card
    assert (tmp_path / "ckpt" / "sample_grid.png").read_bytes() == grid.read_bytes()
    with pytest.raises(ValueError, match="PNG"):
        tiny_model().save_pretrained(tmp_path / "bad", sample_grid=tmp_path / "ckpt" / "README.md")


def test_a_readme_written_by_hand_is_kept(tmp_path: Path) -> None:
    tmp_path.joinpath("README.md").write_text("# my notes\n")
    tiny_model().save_pretrained(tmp_path)
    assert tmp_path.joinpath("README.md").read_text() == "# my notes\n"


# ----------------------------------------------------------------------------- what cannot be saved


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.conv(x)


class TinyConvNet(Denoiser):
    """A user network registered in NETWORKS, with a complete config()."""

    def __init__(self, channels: int = 1, width: int = 4) -> None:
        super().__init__()
        self.channels, self.width = channels, width
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.Conv2d(width, channels, 3, padding=1)
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.body(x)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "width": self.width}


class ForgetfulNet(TinyConvNet):
    """Registered, but its config() forgets ``width``."""

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels}


class BufferNet(TinyConvNet):
    """Registered, with a tensor that no state dict holds (a non-persistent buffer)."""

    def __init__(self, channels: int = 1, width: int = 4) -> None:
        super().__init__(channels, width)
        self.register_buffer("gain", torch.full((1,), 3.0), persistent=False)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.gain * self.body(x)


NETWORKS.register(TinyConvNet)
NETWORKS.register(ForgetfulNet)
NETWORKS.register(BufferNet)


def test_a_plain_module_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"not registered in diffusionkit\.networks\.NETWORKS"):
        DenoiseDiffusion(PlainNet()).save_pretrained(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_registered_user_network_round_trips(tmp_path: Path) -> None:
    model = DenoiseDiffusion(TinyConvNet(width=3), CosineSchedule(timesteps=5))
    model.save_pretrained(tmp_path)
    loaded = DenoiseDiffusion.from_pretrained(tmp_path)
    assert isinstance(loaded.net, TinyConvNet) and loaded.net.width == 3
    assert torch.equal(sample(loaded), sample(model))


def test_loaded_weights_are_trainable_and_unsaved_buffers_initialized(tmp_path: Path) -> None:
    tiny_model().save_pretrained(tmp_path / "unet")
    loaded = DenoiseDiffusion.from_pretrained(tmp_path / "unet")
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    loaded.loss(torch.rand(SHAPE) * 2 - 1).backward()
    assert loaded.net.conv_in.weight.grad is not None

    model = DenoiseDiffusion(BufferNet(), CosineSchedule(timesteps=5))
    model.save_pretrained(tmp_path / "buffer")
    net = DenoiseDiffusion.from_pretrained(tmp_path / "buffer").net
    assert isinstance(net, BufferNet) and torch.equal(net.gain, torch.full((1,), 3.0))


def test_a_config_that_drops_an_argument_is_caught_when_saving(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"different tensors.*config\(\) misses"):
        DenoiseDiffusion(ForgetfulNet(width=3)).save_pretrained(tmp_path)


# ----------------------------------------------------------------------------- strict, safe loading


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    tiny_model().save_pretrained(folder)
    return folder


def _resave_weights(folder: Path, tensors: dict[str, Tensor]) -> None:
    """Replace model.safetensors and record its sha256, as a well-meaning but wrong tool would."""
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["model"]["sha256"] = sha256_file(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_unexpected_and_misshaped_tensors(saved: Path) -> None:
    tensors = load_file(saved / "model.safetensors")
    del tensors["conv_in.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    tensors["conv_out.bias"] = torch.zeros(7)
    _resave_weights(saved, tensors)
    with pytest.raises(CheckpointError) as info:
        DenoiseDiffusion.from_pretrained(saved)
    message = str(info.value)
    assert "model.safetensors" in message
    assert "missing tensor(s): conv_in.bias" in message
    assert "unexpected tensor(s): extra.weight" in message
    assert "conv_out.bias is (7,), expected (1,)" in message


def test_truncated_weights(saved: Path) -> None:
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*does not match the sha256"):
        DenoiseDiffusion.from_pretrained(saved)
    # even with a checksum that agrees (a cut copy recorded as is), the header check catches it
    config = json.loads((saved / "config.json").read_text())
    config["weights"]["model"]["sha256"] = sha256_file(path)
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        DenoiseDiffusion.from_pretrained(saved)


def test_same_size_corruption_of_the_weights(saved: Path) -> None:
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    data[8 + header_len + 100] ^= 0xFF  # one byte of tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        DenoiseDiffusion.from_pretrained(saved)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"diffusionkit_format": 1, "kind": "diff', "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"diffusionkit_format": NaN}', "not valid JSON"),
    ],
)
def test_corrupt_config_json(saved: Path, content: bytes, match: str) -> None:
    (saved / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"config\.json in .*{match}"):
        DenoiseDiffusion.from_pretrained(saved)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"diffusionkit_format": 4}, "format 4.*Upgrade"),
        ({"diffusionkit_format": "1"}, "positive int"),
        ({"kind": "pipeline"}, "'kind' must be one of"),
        ({"prediction": "noise"}, "invalid config: prediction must be one of"),
        ({"sampler": 3}, "argument 'sampler' must be Sampler | str | None"),
        ({"sampler": {"class": "DDPMSampler"}}, "must be an object with a 'class' name and"),
        ({"guidance_scale": 2.0}, "takes no argument\\(s\\) guidance_scale"),
        ({"net": {"class": "NoSuchNet", "config": {}}}, "unknown network 'NoSuchNet'.*UNet"),
        ({"schedule": {"class": "Quadratic", "config": {}}}, "valid names: .*LinearSchedule"),
        ({"weights": {"model": {"file": "model.bin", "sha256": "0" * 64}}}, "pickles are never"),
        ({"weights": {"model": {"file": "../x.safetensors", "sha256": "0" * 64}}}, "plain file"),
        ({"weights": {"model": {"file": "model.safetensors"}}}, "'sha256' must be"),
        ({"weights": {"raw": {}}}, "'model' entry"),
    ],
)
def test_invalid_config_json(saved: Path, changes: dict[str, Any], match: str) -> None:
    rewrite_config(saved, **changes)
    with pytest.raises(CheckpointError, match=match) as info:
        DenoiseDiffusion.from_pretrained(saved)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("dim", "8", "dim must be an integer, got '8'"),  # the size limits check first
        ("attns", [0, 1], "'attns' must be Sequence\\[bool\\]"),
        ("wings", 2, "takes no argument\\(s\\) wings"),
        ("groups", 3, "invalid config"),  # right type, impossible value: the constructor says
    ],
)
def test_net_config_values_are_validated(saved: Path, key: str, value: Any, match: str) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["net"]["config"][key] = value
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        DenoiseDiffusion.from_pretrained(saved)


def test_missing_weights_file_and_missing_folder(saved: Path, tmp_path: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"model\.safetensors"):
        DenoiseDiffusion.from_pretrained(saved)
    with pytest.raises(CheckpointNotFoundError, match="neither an existing folder"):
        DenoiseDiffusion.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="neither a diffusionkit checkpoint"):
        DenoiseDiffusion.from_pretrained(tmp_path / "empty")


# ----------------------------------------------------------------------------- atomic saving


def test_a_crash_while_writing_leaves_the_previous_checkpoint(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(checkpoint, "save_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(seed=3).save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == ["ckpt"]  # no staging folder left
    DenoiseDiffusion.from_pretrained(saved)


def test_a_crash_while_publishing_never_loads_mixed_weights(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "config.json":  # new weights moved in, config.json not yet
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(seed=3).save_pretrained(saved)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        DenoiseDiffusion.from_pretrained(saved)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_saved_folder_is_readable_like_any_other(tmp_path: Path) -> None:
    # the staging folder is private while it is written (mkdtemp: 0700), the result is not
    old = os.umask(0o022)
    try:
        tiny_model().save_pretrained(tmp_path / "new")
        tiny_model().save_pretrained(tmp_path / "new")  # into an existing folder
    finally:
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755
    for path in (tmp_path / "new").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path.name
