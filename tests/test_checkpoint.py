"""Training checkpoints: safetensors + JSON, atomic, rotating, verified by a manifest, and exact
for the optimizer."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
import torch
from torch import nn

from diffusionkit.training import checkpoint as ckpt_mod
from diffusionkit.training.checkpoint import (
    CheckpointCorruptError,
    find_checkpoint,
    flatten_optimizer_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer_state,
    verify_checkpoint,
)


def _tensors(value: float) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model": {"w": torch.full((3, 2), value), "b": torch.arange(3.0) + value},
        "rng": {"cpu": torch.get_rng_state()},
    }


def test_round_trip_and_layout(tmp_path):
    path = save_checkpoint(tmp_path, 7, _tensors(1.5), {"hello": [1, 2]})
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "model.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 7 and loaded.state["hello"] == [1, 2]
    assert torch.equal(loaded.tensors["model"]["w"], torch.full((3, 2), 1.5))
    assert loaded.tensors["rng"]["cpu"].dtype == torch.uint8
    # no pickle anywhere: the JSON is plain JSON and every other file is safetensors
    json.loads((path / "state.json").read_text())


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_checkpoint_files_are_readable_like_any_other(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    finally:
        os.umask(old)
    for file in path.iterdir():  # safetensors alone would leave its files 0600
        assert file.stat().st_mode & 0o777 == 0o644, file.name


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {"n": 1})
    real_write = ckpt_mod._write_tensor_file
    calls = []

    def crash_on_second_file(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("simulated crash halfway through the save")
        real_write(path, tensors)

    monkeypatch.setattr(ckpt_mod, "_write_tensor_file", crash_on_second_file)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 2, _tensors(2.0), {"n": 2})
    # the half-written checkpoint is invisible; the previous one still loads intact
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 1 and loaded.state["n"] == 1
    assert torch.equal(loaded.tensors["model"]["w"], torch.full((3, 2), 1.0))


def test_a_killed_save_leaves_a_hidden_folder_that_is_ignored_and_cleaned(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    # what a SIGKILL mid-save leaves behind: a temporary folder without state.json
    stale = tmp_path / ".tmp-step-00000002-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    assert find_checkpoint(tmp_path).name == "step-00000001"
    save_checkpoint(tmp_path, 4, _tensors(4.0), {})
    assert not stale.exists()
    assert find_checkpoint(tmp_path).name == "step-00000004"


def test_an_incomplete_newest_checkpoint_is_reported_not_skipped(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    partial = tmp_path / "step-00000003"  # a visible folder without manifest or state
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointCorruptError, match=r"step-00000003.*incomplete") as info:
        find_checkpoint(tmp_path)
    assert info.value.valid == [tmp_path / "step-00000001"]
    assert find_checkpoint(tmp_path, fallback=True).name == "step-00000001"


def test_keep_last_k_and_overwrite_same_step(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, _tensors(float(step)), {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    save_checkpoint(tmp_path, 4, _tensors(40.0), {"again": True}, keep=2)
    loaded = load_checkpoint(tmp_path)
    assert loaded.state["again"] is True
    assert loaded.tensors["model"]["w"][0, 0].item() == 40.0
    assert {p.name for p in tmp_path.iterdir()} == {"step-00000003", "step-00000004"}


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        find_checkpoint(tmp_path)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", 5, _tensors(0.0), {})
    assert find_checkpoint(run).name == "step-00000005"  # a run folder resolves too


def test_optimizer_state_round_trip_continues_identically():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    x = torch.randn(16, 4)

    def step(module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        module(x).square().mean().backward()
        optimizer.step()

    for _ in range(3):
        step(net, opt)
    live, meta = flatten_optimizer_state(opt.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in live.values())
    tensors = {k: v.clone() for k, v in live.items()}  # as if read back from disk
    json.dumps(meta)  # everything else is JSON
    clone = nn.Linear(4, 3)
    clone.load_state_dict(net.state_dict())
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1.0)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, meta, opt2.state_dict()))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for _ in range(2):
        step(net, opt)
        step(clone, opt2)
    for a, b in zip(net.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------- manifest (finding 3)


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte: tensor data, so the file still parses
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_detected_and_the_error_lists_the_valid_checkpoints(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _tensors(float(step)), {})
    _flip_a_bit(tmp_path / "step-00000003" / "model.safetensors")
    with pytest.raises(CheckpointCorruptError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "step-00000003" in message and "model.safetensors" in message
    assert "sha256" in message and "fallback=True" in message
    assert info.value.valid == [tmp_path / "step-00000002", tmp_path / "step-00000001"]
    assert "step-00000002, step-00000001" in message
    # asked for, the newest valid one is taken and the skipped one is named
    loaded = load_checkpoint(tmp_path, fallback=True)
    assert loaded.step == 2 and loaded.verified
    assert [(p.name, "model.safetensors" in why) for p, why in loaded.skipped] == [
        ("step-00000003", True)
    ]
    # a damaged checkpoint named explicitly is never replaced by another one
    with pytest.raises(CheckpointCorruptError, match="sha256"):
        load_checkpoint(tmp_path / "step-00000003", fallback=True)


@pytest.mark.parametrize("missing", ["model.safetensors", "rng.safetensors", "state.json"])
def test_a_deleted_file_is_detected(tmp_path, missing):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    (tmp_path / "step-00000001" / missing).unlink()
    with pytest.raises(CheckpointCorruptError, match=f"{re.escape(missing)} is missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointCorruptError, match="no other checkpoint"):
        find_checkpoint(tmp_path)


def test_a_deleted_manifest_makes_the_checkpoint_incomplete(tmp_path):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    (tmp_path / "step-00000001" / "manifest.json").unlink()
    with pytest.raises(CheckpointCorruptError, match=r"manifest\.json is missing"):
        load_checkpoint(tmp_path)


def _as_format_1(folder):
    """Turn a checkpoint into what diffusionkit wrote before manifests existed."""
    (folder / "manifest.json").unlink()
    state = json.loads((folder / "state.json").read_text())
    state["format_version"] = 1
    (folder / "state.json").write_text(json.dumps(state))


def test_checkpoints_from_before_manifests_load_unverified(tmp_path):
    path = save_checkpoint(tmp_path, 5, _tensors(5.0), {"n": 5})
    _as_format_1(path)
    assert verify_checkpoint(path) is False
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 5 and not loaded.verified and loaded.state["n"] == 5
    assert torch.equal(loaded.tensors["model"]["w"], torch.full((3, 2), 5.0))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"step": -5}, "step -5"),
        ({"step": 4}, "named step-00000005"),
        ({"format_version": 99}, "newer diffusionkit"),
    ],
)
def test_a_malformed_state_is_named_with_its_file_and_value(tmp_path, edit, needle):
    path = save_checkpoint(tmp_path, 5, _tensors(5.0), {})
    _as_format_1(path)  # unverifiable, so the fields themselves must be checked
    state = json.loads((path / "state.json").read_text())
    state.update(edit)
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointCorruptError, match=needle) as info:
        load_checkpoint(path)
    assert "state.json" in str(info.value) or "newer" in str(info.value)


def test_an_unparsable_tensor_file_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path, 1, _tensors(1.0), {})
    _as_format_1(path)
    (path / "model.safetensors").write_bytes(b"\xff" * 7)
    with pytest.raises(CheckpointCorruptError, match=r"model\.safetensors is not a readable"):
        load_checkpoint(path)


def test_a_full_disk_names_the_file_and_keeps_the_older_checkpoints(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, _tensors(1.0), {})

    def disk_full(path, tensors):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_tensor_file", disk_full)
    with pytest.raises(OSError) as info:
        save_checkpoint(tmp_path, 2, _tensors(2.0), {})
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "step-00000002" in message and "model.safetensors" in message
    assert "disk is full" in message and "intact" in message
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert load_checkpoint(tmp_path).step == 1
