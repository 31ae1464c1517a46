"""The test Hub server, driven by the real huggingface_hub client (no patching).

These tests pin the behaviour the rest of the suite relies on: uploads and downloads round-trip
byte for byte, revisions (branch, tag, sha) resolve, private repos stay private, errors map to
huggingface_hub's exception types, and injected faults reach the client.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
from hub_server import GITATTRIBUTES, Fault, HubServer
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    create_branch,
    create_repo,
    create_tag,
    hf_hub_download,
    hf_hub_url,
    list_repo_commits,
    list_repo_refs,
    snapshot_download,
    upload_folder,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import get_session

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
README = """---
license: mit
library_name: diffusionkit
tags:
  - ddpm
  - test
---

# A test model
"""


def _model_folder(root: Path, *, weights_seed: int = 0) -> dict[str, bytes]:
    """Write a small model folder (card, config, ~1 MB of binary weights); return its files."""
    files = {
        "README.md": README.encode(),
        "config.json": b'{"sample_size": 32, "in_channels": 3}\n',
        "unet/config.json": b'{"block_out_channels": [32, 64]}\n',
        WEIGHTS: random.Random(weights_seed).randbytes(1 << 20),
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


def _read_tree(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` (following the cache's symlinks), keyed by relative path."""
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def model_repo(hub_server: HubServer, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """A fresh public repo of alice's holding one upload of :func:`_model_folder`."""
    repo_id = hub_server.new_repo_id(prefix="model")
    create_repo(repo_id)
    files = _model_folder(tmp_path / "upload")
    upload_folder(repo_id=repo_id, folder_path=tmp_path / "upload")
    return repo_id, files


def test_whoami_names_the_token_owner(hub_tokens: dict[str, str]) -> None:
    api = HfApi()
    assert api.whoami()["name"] == "alice"  # HF_TOKEN from conftest
    assert api.whoami(token=hub_tokens["bob"])["name"] == "bob"
    with pytest.raises(HfHubHTTPError) as caught:
        api.whoami(token="hf_not_a_real_token")
    assert caught.value.response.status_code == 401


def test_upload_folder_then_downloads_are_byte_identical(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]], fresh_hf_cache: Path
) -> None:
    repo_id, files = model_repo
    expected = {**files, ".gitattributes": GITATTRIBUTES}  # the Hub's initial commit adds it

    assert hub_server.list_files(repo_id) == sorted(expected)
    assert _read_tree(snapshot_download(repo_id, cache_dir=fresh_hf_cache)) == expected
    for name, content in files.items():
        path = hf_hub_download(repo_id, name, cache_dir=fresh_hf_cache, force_download=True)
        assert Path(path).read_bytes() == content
    assert not hub_server.errors


def test_repo_info_and_tree_describe_the_upload(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]]
) -> None:
    repo_id, files = model_repo
    api = HfApi()
    info = api.repo_info(repo_id, files_metadata=True)
    assert info.sha == hub_server.head(repo_id)
    assert info.private is False
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
    assert sizes[WEIGHTS] == len(files[WEIGHTS])

    tree = {entry.path: entry for entry in api.list_repo_tree(repo_id, recursive=True)}
    assert "unet" in tree and not hasattr(tree["unet"], "size")  # a RepoFolder
    blob_id = tree[WEIGHTS].blob_id
    git_header = b"blob %d\0" % len(files[WEIGHTS])
    assert blob_id == hashlib.sha1(git_header + files[WEIGHTS]).hexdigest()
    assert [entry.path for entry in api.list_repo_tree(repo_id, "unet")] == [
        "unet/config.json",
        WEIGHTS,
    ]
    infos = api.get_paths_info(repo_id, ["config.json", "unet", "missing.txt"], expand=True)
    assert [entry.path for entry in infos] == ["config.json", "unet"]
    assert infos[0].last_commit is not None and infos[0].last_commit.oid == info.sha


def test_create_repo_conflicts_unless_exist_ok(hub_server: HubServer) -> None:
    repo_id = hub_server.new_repo_id()
    url = create_repo(repo_id)
    assert url.repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as caught:
        create_repo(repo_id)
    assert caught.value.response.status_code == 409
    assert create_repo(repo_id, exist_ok=True).repo_id == repo_id


def test_unchanged_upload_makes_no_commit(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    repo_id, _ = model_repo
    head = hub_server.head(repo_id)
    # Preupload reports each file's current blob id, so the client drops unchanged files.
    info = upload_folder(repo_id=repo_id, folder_path=tmp_path / "upload")
    assert info.oid == head == hub_server.head(repo_id)


def test_readme_with_broken_front_matter_is_rejected(hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = hub_server.new_repo_id()
    create_repo(repo_id)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n\n# front matter never closed\n")
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md"):
        upload_folder(repo_id=repo_id, folder_path=tmp_path)
    assert hub_server.list_files(repo_id) == [".gitattributes"]


def test_stale_parent_commit_is_refused(model_repo: tuple[str, dict[str, bytes]]) -> None:
    repo_id, _ = model_repo
    api = HfApi()
    first = api.list_repo_commits(repo_id)[-1].commit_id  # the initial commit
    add = CommitOperationAdd("notes.txt", b"late\n")
    with pytest.raises(HfHubHTTPError) as caught:
        api.create_commit(repo_id, [add], commit_message="stale", parent_commit=first)
    assert caught.value.response.status_code == 412


def test_delete_operations_remove_files_and_folders(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]]
) -> None:
    repo_id, _ = model_repo
    api = HfApi()
    api.delete_file("config.json", repo_id)
    api.delete_folder("unet", repo_id)
    assert hub_server.list_files(repo_id) == [".gitattributes", "README.md"]
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("config.json", repo_id)
    assert len(api.list_repo_commits(repo_id)) == 4  # initial, upload, two deletions


def test_branches_tags_and_shas_resolve_to_their_own_content(
    hub_server: HubServer, tmp_path: Path
) -> None:
    repo_id = hub_server.new_repo_id()
    create_repo(repo_id)
    v1, v2, v3 = (_model_folder(tmp_path / f"v{i}", weights_seed=i) for i in (1, 2, 3))
    first = upload_folder(repo_id=repo_id, folder_path=tmp_path / "v1").oid
    create_branch(repo_id, branch="dev")
    dev = upload_folder(repo_id=repo_id, folder_path=tmp_path / "v2", revision="dev").oid
    main = upload_folder(repo_id=repo_id, folder_path=tmp_path / "v3").oid
    create_tag(repo_id, tag="v1.0", revision=first[:7])  # a short sha, behind main's head

    refs = list_repo_refs(repo_id)
    assert {ref.name: ref.target_commit for ref in refs.branches} == {"main": main, "dev": dev}
    assert {ref.name: ref.target_commit for ref in refs.tags} == {"v1.0": first}
    assert [c.commit_id for c in list_repo_commits(repo_id, revision="dev")][:2] == [dev, first]
    assert [c.commit_id for c in list_repo_commits(repo_id)][:2] == [main, first]

    expected = {"main": v3, "dev": v2, "v1.0": v1, first: v1, dev: v2, main[:7]: v3}
    for revision, files in expected.items():
        path = hf_hub_download(repo_id, WEIGHTS, revision=revision, force_download=True)
        assert Path(path).read_bytes() == files[WEIGHTS], revision
    assert _read_tree(snapshot_download(repo_id, revision="dev"))[WEIGHTS] == v2[WEIGHTS]
    assert _read_tree(snapshot_download(repo_id, revision=first))[WEIGHTS] == v1[WEIGHTS]


def test_private_repo_is_invisible_to_other_users(
    hub_server: HubServer,
    hub_tokens: dict[str, str],
    tmp_path: Path,
    fresh_hf_cache: Path,
) -> None:
    repo_id = hub_server.new_repo_id(prefix="private")
    create_repo(repo_id, private=True)
    files = _model_folder(tmp_path)
    upload_folder(repo_id=repo_id, folder_path=tmp_path)
    assert _read_tree(snapshot_download(repo_id))["config.json"] == files["config.json"]

    # A fresh cache: snapshot_download would otherwise serve alice's cached copy to bob.
    for token in (hub_tokens["bob"], False):
        with pytest.raises(RepositoryNotFoundError):
            snapshot_download(repo_id, token=token, cache_dir=fresh_hf_cache)
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download(repo_id, "config.json", token=token, cache_dir=fresh_hf_cache)
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).repo_info(repo_id)

    HfApi().update_repo_settings(repo_id, private=False)
    path = hf_hub_download(
        repo_id, "config.json", token=hub_tokens["bob"], cache_dir=fresh_hf_cache
    )
    assert Path(path).read_bytes() == files["config.json"]


def test_only_the_owner_can_write(
    model_repo: tuple[str, dict[str, bytes]], hub_tokens: dict[str, str]
) -> None:
    repo_id, _ = model_repo
    bob = HfApi(token=hub_tokens["bob"])
    with pytest.raises(HfHubHTTPError) as caught:
        bob.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert caught.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as caught:
        bob.create_repo("alice/not-bobs")
    assert caught.value.response.status_code == 403


def test_missing_repo_revision_and_file_raise_their_errors(
    model_repo: tuple[str, dict[str, bytes]], fresh_hf_cache: Path
) -> None:
    repo_id, _ = model_repo
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/does-not-exist", "config.json", cache_dir=fresh_hf_cache)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/does-not-exist", cache_dir=fresh_hf_cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="no-such-branch", cache_dir=fresh_hf_cache)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(repo_id, revision="0" * 40, cache_dir=fresh_hf_cache)
    # The Remote variant: a generic 404 would surface as LocalEntryNotFoundError instead.
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "no-such-file.bin", cache_dir=fresh_hf_cache)


def test_deleted_repo_is_gone(hub_server: HubServer) -> None:
    repo_id = hub_server.new_repo_id()
    create_repo(repo_id)
    api = HfApi()
    assert api.repo_exists(repo_id)
    api.delete_repo(repo_id)
    assert not api.repo_exists(repo_id) and not hub_server.repo_exists(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo(repo_id)
    api.delete_repo(repo_id, missing_ok=True)


def test_truncated_download_is_retried_by_the_client(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]], fresh_hf_cache: Path
) -> None:
    repo_id, files = model_repo
    hub_server.inject_fault(repo_id, WEIGHTS, Fault.TRUNCATE)
    hub_server.clear_requests()

    path = hf_hub_download(repo_id, WEIGHTS, cache_dir=fresh_hf_cache)

    assert Path(path).read_bytes() == files[WEIGHTS]
    assert hub_server.pending_faults(repo_id, WEIGHTS) == 0
    gets = [r for r in hub_server.requests if r.method == "GET" and r.path.endswith(WEIGHTS)]
    # The client reads in 10 MB chunks: a cut inside the first chunk leaves nothing on disk to
    # resume from, so the retry (after a 1 s pause) fetches the whole file again.
    assert [(r.status, r.range) for r in gets] == [(200, None), (200, None)]


def test_range_requests_resume_from_an_offset(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]]
) -> None:
    repo_id, files = model_repo
    content = files[WEIGHTS]
    url = hf_hub_url(repo_id, WEIGHTS)
    buffer = io.BytesIO()
    hub_server.clear_requests()

    http_get(url, buffer, resume_size=1000, expected_size=len(content))

    assert buffer.getvalue() == content[1000:]
    assert [(r.status, r.range) for r in hub_server.requests] == [(206, "bytes=1000-")]
    suffix = get_session().get(url, headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.content == content[-10:]
    beyond = get_session().get(url, headers={"Range": f"bytes={len(content)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(content)}"


def test_short_download_raises_and_a_retry_succeeds(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]], fresh_hf_cache: Path
) -> None:
    repo_id, files = model_repo
    hub_server.inject_fault(repo_id, WEIGHTS, Fault.SHORT)
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(repo_id, WEIGHTS, cache_dir=fresh_hf_cache)

    hub_server.inject_fault(repo_id, WEIGHTS, Fault.SHORT)
    with pytest.raises(OSError, match="Consistency check failed"):
        snapshot_download(repo_id, cache_dir=fresh_hf_cache)

    path = hf_hub_download(repo_id, WEIGHTS, cache_dir=fresh_hf_cache)
    assert Path(path).read_bytes() == files[WEIGHTS]


def test_corrupted_download_passes_the_client_but_not_a_checksum(
    hub_server: HubServer, model_repo: tuple[str, dict[str, bytes]], fresh_hf_cache: Path
) -> None:
    repo_id, files = model_repo
    hub_server.inject_fault(repo_id, WEIGHTS, Fault.CORRUPT)

    # hf_hub_download checks sizes, not content: same-size corruption lands in the cache...
    path = hf_hub_download(repo_id, WEIGHTS, cache_dir=fresh_hf_cache)
    assert Path(path).read_bytes() != files[WEIGHTS]
    assert len(Path(path).read_bytes()) == len(files[WEIGHTS])

    # ...where a checksum against the Hub's blob ids finds it, and a forced download repairs it.
    api = HfApi()
    report = api.verify_repo_checksums(repo_id, cache_dir=fresh_hf_cache)
    assert [mismatch["path"] for mismatch in report.mismatches] == [WEIGHTS]
    path = hf_hub_download(repo_id, WEIGHTS, cache_dir=fresh_hf_cache, force_download=True)
    assert Path(path).read_bytes() == files[WEIGHTS]
    assert not api.verify_repo_checksums(repo_id, cache_dir=fresh_hf_cache).mismatches
