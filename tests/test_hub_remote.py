"""Push to and pull from the test Hub server with the real huggingface_hub client (unpatched).

The server (tests/hub_server.py) runs for the whole session; HF_TOKEN is alice's token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hub_server import Fault, HubServer
from huggingface_hub import HfApi
from torch import Tensor

from diffusionkit import CosineSchedule, DDPMSampler, DenoiseDiffusion, UNet
from diffusionkit.hub import CheckpointError, CheckpointNotFoundError

SHAPE = (2, 1, 8, 8)


def tiny_model(seed: int = 0) -> DenoiseDiffusion:
    torch.manual_seed(seed)
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, True), groups=4)
    return DenoiseDiffusion(net, CosineSchedule(timesteps=8), DDPMSampler("beta", clip_x0=True))


def sample(model: DenoiseDiffusion) -> Tensor:
    return model.reverse_sample(SHAPE, generator=torch.Generator().manual_seed(0), progress=False)


@pytest.fixture
def repo_id(hub_server: HubServer) -> str:
    return hub_server.new_repo_id(prefix="ddpm")


def test_push_then_pull_samples_identically(
    hub_server: HubServer, repo_id: str, fresh_hf_cache: Path
) -> None:
    model = tiny_model()
    commit = model.push_to_hub(repo_id, commit_message="first model")
    assert commit.oid == hub_server.head(repo_id)
    files = hub_server.list_files(repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    card = hub_server.read_file(repo_id, "README.md").decode()
    assert "library_name: diffusionkit" in card
    assert f'DenoiseDiffusion.from_pretrained("{repo_id}")' in card

    loaded = DenoiseDiffusion.from_pretrained(repo_id, cache_dir=fresh_hf_cache)
    assert torch.equal(sample(loaded), sample(model))
    # offline, from the cache alone
    cached = DenoiseDiffusion.from_pretrained(
        repo_id, cache_dir=fresh_hf_cache, local_files_only=True
    )
    assert torch.equal(sample(cached), sample(model))
    assert not hub_server.errors


def test_branches_tags_and_commits(hub_server: HubServer, repo_id: str) -> None:
    v1, v2, dev = tiny_model(1), tiny_model(2), tiny_model(3)
    first = v1.push_to_hub(repo_id).oid
    HfApi().create_tag(repo_id, tag="v1")
    v2.push_to_hub(repo_id)
    dev.push_to_hub(repo_id, branch="dev")  # the branch is created from main

    expected = {None: v2, "main": v2, "v1": v1, first: v1, first[:10]: v1, "dev": dev}
    for revision, model in expected.items():
        loaded = DenoiseDiffusion.from_pretrained(repo_id, revision=revision)
        assert torch.equal(loaded.net.conv_in.weight, model.net.conv_in.weight), revision
    assert torch.equal(sample(DenoiseDiffusion.from_pretrained(repo_id, revision="v1")), sample(v1))


def test_private_repo_needs_its_owners_token(
    hub_server: HubServer, repo_id: str, hub_tokens: dict[str, str], fresh_hf_cache: Path
) -> None:
    model = tiny_model()
    model.push_to_hub(repo_id, private=True)
    assert hub_server.state.repos[("model", repo_id)].private
    for token in (hub_tokens["bob"], False):  # another user, then nobody
        with pytest.raises(CheckpointNotFoundError, match="private") as info:
            DenoiseDiffusion.from_pretrained(repo_id, token=token, cache_dir=fresh_hf_cache)
        assert hub_tokens["bob"] not in str(info.value) and repo_id in str(info.value)
    owner = DenoiseDiffusion.from_pretrained(
        repo_id, token=hub_tokens["alice"], cache_dir=fresh_hf_cache
    )
    assert torch.equal(sample(owner), sample(model))


def test_missing_repo_and_missing_revision(hub_server: HubServer, repo_id: str) -> None:
    with pytest.raises(CheckpointNotFoundError, match=f"Hub repo {repo_id} was not found"):
        DenoiseDiffusion.from_pretrained(repo_id)
    tiny_model().push_to_hub(repo_id)
    with pytest.raises(CheckpointNotFoundError, match="revision 'v9' does not exist"):
        DenoiseDiffusion.from_pretrained(repo_id, revision="v9")
    with pytest.raises(CheckpointNotFoundError, match="not in the local cache"):
        DenoiseDiffusion.from_pretrained(repo_id, revision="v9", local_files_only=True)
    with pytest.raises(CheckpointNotFoundError, match="neither a diffusionkit checkpoint"):
        HfApi().create_repo(repo_id + "-empty")
        DenoiseDiffusion.from_pretrained(repo_id + "-empty")


def test_a_corrupted_download_never_loads_silently(
    hub_server: HubServer, repo_id: str, fresh_hf_cache: Path
) -> None:
    model = tiny_model()
    model.push_to_hub(repo_id)
    # same size, every byte inverted: huggingface_hub accepts it and caches it
    hub_server.inject_fault(repo_id, "model.safetensors", Fault.CORRUPT)
    for _ in range(2):  # the corrupt copy stays in the cache: it must keep failing, not load
        with pytest.raises(CheckpointError, match="force_download=True") as info:
            DenoiseDiffusion.from_pretrained(repo_id, cache_dir=fresh_hf_cache)
        assert "model.safetensors" in str(info.value)
    assert hub_server.pending_faults(repo_id, "model.safetensors") == 0
    healed = DenoiseDiffusion.from_pretrained(
        repo_id, cache_dir=fresh_hf_cache, force_download=True
    )
    assert torch.equal(sample(healed), sample(model))


def test_a_corrupted_config_download_is_caught(
    hub_server: HubServer, repo_id: str, fresh_hf_cache: Path
) -> None:
    tiny_model().push_to_hub(repo_id)
    hub_server.inject_fault(repo_id, "config.json", Fault.CORRUPT)
    with pytest.raises(CheckpointError, match=r"config\.json.*force_download=True"):
        DenoiseDiffusion.from_pretrained(repo_id, cache_dir=fresh_hf_cache)


def test_an_interrupted_download_is_not_cached(
    hub_server: HubServer, repo_id: str, fresh_hf_cache: Path
) -> None:
    model = tiny_model()
    model.push_to_hub(repo_id)
    hub_server.inject_fault(repo_id, "model.safetensors", Fault.SHORT)  # half the announced size
    with pytest.raises(OSError, match="Consistency check failed"):
        DenoiseDiffusion.from_pretrained(repo_id, cache_dir=fresh_hf_cache)
    retried = DenoiseDiffusion.from_pretrained(repo_id, cache_dir=fresh_hf_cache)
    assert torch.equal(sample(retried), sample(model))


def test_pushing_without_ema_removes_the_previous_ema(hub_server: HubServer, repo_id: str) -> None:
    model = tiny_model()
    ema = tiny_model(seed=5)
    model.push_to_hub(repo_id, ema=ema)
    assert "ema.safetensors" in hub_server.list_files(repo_id)
    assert torch.equal(
        DenoiseDiffusion.from_pretrained(repo_id).net.conv_in.weight, ema.net.conv_in.weight
    )
    model.push_to_hub(repo_id)
    assert "ema.safetensors" not in hub_server.list_files(repo_id)
    raw = DenoiseDiffusion.from_pretrained(repo_id)
    assert torch.equal(raw.net.conv_in.weight, model.net.conv_in.weight)


def test_a_diffusers_pipeline_pulled_from_the_hub(
    hub_server: HubServer, repo_id: str, tmp_path: Path
) -> None:
    model = tiny_model()
    model.save_diffusers(tmp_path / "pipeline", sample_size=8)
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=tmp_path / "pipeline")
    loaded = DenoiseDiffusion.from_pretrained(repo_id)
    assert isinstance(loaded.sampler, DDPMSampler) and loaded.sampler == model.sampler
    x, t = torch.randn(SHAPE), torch.tensor([0, 7])
    torch.testing.assert_close(loaded.predict_eps(x, t), model.predict_eps(x, t))
    assert torch.equal(UNet.from_pretrained(repo_id).conv_in.weight, model.net.conv_in.weight)
