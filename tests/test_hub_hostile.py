"""Checkpoint folders used carelessly (issue 15's findings in the Hub code).

* 6: ``save_pretrained`` removes only files it wrote itself, never what an old ``config.json``
  happens to name, and refuses to overwrite a ``config.json`` that is not a diffusionkit
  checkpoint's; the diffusers exporters refuse foreign files the same way.
* 4: sizes in a ``config.json`` or a diffusers config are bounded before anything is allocated.
* 7: a ``config.json`` missing a constructor argument is refused instead of loading defaults.
* 9: ``from_pretrained('/')`` answers at once instead of walking the file system; the loss of
  an empty batch or with a seed for a generator says what is wrong.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from diffusionkit import ClipX0, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.hub import CheckpointError, CheckpointNotFoundError
from diffusionkit.hub.remote import LISTED_FILES, _shallow_listing


def tiny_model(timesteps: int = 50) -> DenoiseDiffusion:
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=4, dim_mults=(1, 2), attns=(False, False), n_blocks=1, groups=2)
    return DenoiseDiffusion(net, LinearSchedule(timesteps), x0_processing=ClipX0())


def test_save_pretrained_never_deletes_a_file_an_old_config_names(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    config = json.loads((tmp_path / "config.json").read_text())
    config["sample_grid"] = "notes.txt"
    config["weights"]["ema"] = {"file": "notes.txt", "sha256": "0" * 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model.save_pretrained(tmp_path)
    assert notes.read_text() == "my notes"


def test_save_pretrained_still_removes_its_own_stale_files(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path, ema=model.net)
    assert (tmp_path / "ema.safetensors").is_file()
    model.save_pretrained(tmp_path)  # no EMA this time: the old one would be loaded by default
    assert not (tmp_path / "ema.safetensors").exists()


@pytest.mark.parametrize(
    "content",
    ['{"_class_name": "UNet2DModel", "in_channels": 3}', '{"lr": 0.1}', "not json at all"],
)
def test_save_pretrained_refuses_a_foreign_config_json(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(FileExistsError, match=r"not a diffusionkit checkpoint's config\.json"):
        tiny_model().save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_the_diffusers_exporters_refuse_foreign_files(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path / "dk")
    before = (tmp_path / "dk" / "config.json").read_text()
    with pytest.raises(FileExistsError, match="UNet2DModel"):
        model.net.save_diffusers(tmp_path / "dk", sample_size=8)
    with pytest.raises(FileExistsError, match="another model"):
        model.save_diffusers(tmp_path / "dk", sample_size=8)
    assert (tmp_path / "dk" / "config.json").read_text() == before
    # its own earlier export is fine to overwrite
    model.save_diffusers(tmp_path / "pipe", sample_size=8)
    model.save_diffusers(tmp_path / "pipe", sample_size=8)


@pytest.mark.parametrize("key", ["schedule", "sampler", "prediction", "weighting", "x0_processing"])
def test_a_config_missing_an_argument_is_refused(tmp_path: Path, key: str) -> None:
    tiny_model(timesteps=50).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    del config[key]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"missing '{key}'.*incomplete"):
        DenoiseDiffusion.from_pretrained(tmp_path)


def test_a_format_1_config_missing_an_argument_is_refused(tmp_path: Path) -> None:
    """Format 1 has no x0_processing (it is derived), but the other arguments are required."""
    tiny_model().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["diffusionkit_format"] = 1
    for later in ("x0_processing", "learned_variance", "vlb_weight"):
        del config[later]
    path.write_text(json.dumps(config))
    assert DenoiseDiffusion.from_pretrained(tmp_path).x0_processing is None
    del config["schedule"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing 'schedule'"):
        DenoiseDiffusion.from_pretrained(tmp_path)


def test_from_pretrained_of_the_root_folder_answers_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match="neither a diffusionkit checkpoint"):
        DenoiseDiffusion.from_pretrained("/")
    assert time.monotonic() - started < 10  # the old code walked the whole file system


def test_the_listing_for_messages_is_shallow_and_bounded(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / "deep" / "hidden.txt").write_text("")
    (tmp_path / "a" / "one.txt").write_text("")
    (tmp_path / "top.txt").write_text("")
    assert _shallow_listing(tmp_path) == ["a/one.txt", "top.txt"]
    for i in range(LISTED_FILES + 20):
        (tmp_path / f"f{i:04d}").write_text("")
    assert len(_shallow_listing(tmp_path)) == LISTED_FILES


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("schedule", "config", "timesteps"), 10**9, "timesteps 1000000000 is above the limit"),
        (("net", "config", "dim"), 10**6, "level width"),
        (("net", "config", "dim_mults"), [1] * 40, "number of levels"),
        (("net", "config", "in_channels"), 10**5, "image channels"),
    ],
)
def test_sizes_in_a_config_are_bounded_before_anything_is_allocated(
    tmp_path: Path, path: tuple[str, ...], value: object, match: str
) -> None:
    """Finding 4: a config asking for 1e9 timesteps allocated gigabytes, then failed raw."""
    tiny_model().save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    config_path.write_text(json.dumps(config))
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=match) as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert "config.json" in str(info.value)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("file", "key", "value", "match"),
    [
        ("scheduler/scheduler_config.json", "num_train_timesteps", 10**8, "timesteps"),
        ("unet/config.json", "block_out_channels", [8, 10**6], "level width"),
        ("unet/config.json", "in_channels", 10**5, "image channels"),
    ],
)
def test_sizes_in_a_diffusers_config_are_bounded(
    tmp_path: Path, file: str, key: str, value: object, match: str
) -> None:
    tiny_model().save_diffusers(tmp_path, sample_size=8)
    path = tmp_path / file
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(CheckpointError, match=match) as info:
        DenoiseDiffusion.from_pretrained(tmp_path)
    assert file.split("/")[-1] in str(info.value)


def test_the_loss_names_an_empty_batch_and_a_seed_given_as_generator() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="x0 is an empty batch"):
        model.loss(torch.zeros(0, 1, 8, 8))
    with pytest.raises(TypeError, match=r"torch.Generator\(\).manual_seed"):
        model.loss(torch.zeros(2, 1, 8, 8), generator=5)
    with pytest.raises(TypeError, match=r"generator\[1\] is 2"):
        model.reverse_sample((2, 1, 8, 8), generator=[torch.Generator(), 2], progress=False)
