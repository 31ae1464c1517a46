"""Where checkpoint files come from (a local folder or a Hub repo) and where they go (the Hub).

Downloads go through ``huggingface_hub.snapshot_download`` and its cache. A load first fetches
the small config files at the requested revision, then pins the commit that revision resolved to
for every later file, so a push landing in between cannot mix files of two commits. Every file
read from the cache is checked against the checksum the Hub announced for it
(:func:`~diffusionkit.hub.integrity.verify_cached_download`), and the Hub's errors are turned
into :class:`~diffusionkit.hub.errors.CheckpointNotFoundError` with a message saying what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from huggingface_hub import CommitInfo, HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from diffusionkit.hub.errors import CheckpointNotFoundError
from diffusionkit.hub.integrity import verify_cached_download

__all__ = ["Source", "open_source", "upload_folder_to_hub"]

T = TypeVar("T")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Source:
    """A checkpoint's origin: a local folder, or a Hub repo pinned to one commit once resolved.

    Attributes:
        name: the folder path or repo id, as the user gave it.
        folder: the local folder (``None`` for a repo).
        revision: for a repo, the revision asked for, replaced by its commit once resolved.
    """

    name: str
    folder: Path | None
    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike[str] | None = None
    local_files_only: bool = False
    force_download: bool = False
    #: digests computed while verifying downloaded files (file -> {"sha256": ...}), for reuse
    digests: dict[str, dict[str, str]] = field(default_factory=dict)

    def label(self, file: str) -> str:
        """How errors name ``file`` of this source: ``"config.json in alice/m@3f2a1c9"``."""
        if self.folder is not None:
            return f"{file} in {self.folder}"
        if self.revision is None:
            return f"{file} in Hub repo {self.name}"
        short = self.revision[:7] if _COMMIT.fullmatch(self.revision) else self.revision
        return f"{file} in Hub repo {self.name}@{short}"

    def fetch(self, files: Sequence[str]) -> Path:
        """Make those of ``files`` (paths in the repo) that exist available; return the root.

        A local folder is returned as is. For a repo, the first call resolves the revision and
        later calls reuse the commit it resolved to.
        """
        if self.folder is not None:
            return self.folder
        root = _translate(
            lambda: snapshot_download(
                self.name,
                revision=self.revision,
                allow_patterns=list(files),
                token=self.token,
                cache_dir=None if self.cache_dir is None else Path(self.cache_dir),
                local_files_only=self.local_files_only,
                force_download=self.force_download,
            ),
            self,
        )
        path = Path(root)
        if _COMMIT.fullmatch(path.name):  # cache layout: snapshots/<commit>
            self.revision = path.name
        return path

    def path(self, root: Path, file: str) -> Path | None:
        """``root / file`` if present, after checking a downloaded file against the Hub's checksum.

        Returns:
            The path, or ``None`` if the file does not exist in the folder or repo.
        """
        path = root / file
        if not path.is_file():
            return None
        if self.folder is None:
            self.digests[file] = verify_cached_download(path, self.label(file))
        return path

    def corrupt_hint(self) -> str:
        """What to do when a file's content is wrong."""
        if self.folder is None:
            return "load again with force_download=True to fetch a fresh copy"
        return "the file was modified or only partly written after config.json"

    def list_files(self) -> list[str] | None:
        """The files of the folder (its top level and one level down, at most
        :data:`LISTED_FILES` of them: a folder such as ``/`` must not be walked) or of the
        repo commit (``None`` when the Hub cannot be asked)."""
        if self.folder is not None:
            return _shallow_listing(self.folder)
        if self.local_files_only:
            return None
        try:
            return sorted(
                HfApi(token=self.token).list_repo_files(self.name, revision=self.revision)
            )
        except Exception:  # only used to improve an error message
            return None


#: how many entries of a local folder an error message may list
LISTED_FILES = 200


def _shallow_listing(folder: Path) -> list[str]:
    """Up to :data:`LISTED_FILES` files of ``folder`` and its direct subfolders (sorted)."""
    found: list[str] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if len(found) >= LISTED_FILES:
            break
        try:
            if entry.is_file():
                found.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    names = sorted(e.name for e in inner if e.is_file())
                found += [f"{entry.name}/{n}" for n in names[: LISTED_FILES - len(found)]]
        except OSError:  # unreadable entries are left out of a listing meant for messages
            continue
    return sorted(found)


def open_source(
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    force_download: bool,
) -> Source:
    """A :class:`Source` for an existing local folder or a Hub repo id.

    Raises:
        CheckpointNotFoundError: neither an existing folder nor a valid repo id.
        ValueError: ``revision`` given with a local folder.
    """
    name = os.fspath(path_or_repo_id)
    path = Path(name).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {name} is a folder")
        return Source(name=name, folder=path)
    if path.exists():
        raise CheckpointNotFoundError(
            f"{name} is a file; expected a checkpoint folder or a repo id"
        )
    looks_like_path = isinstance(path_or_repo_id, os.PathLike) or name.startswith(
        (".", "/", "~", "\\")
    )
    if looks_like_path or not _is_repo_id(name):
        raise CheckpointNotFoundError(
            f"{name!r} is neither an existing folder nor a Hub repo id ('user/name')"
        )
    return Source(
        name=name,
        folder=None,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
    )


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _translate(call: Callable[[], T], source: Source) -> T:
    """Run a Hub call, turning "cannot find or read it" errors into CheckpointNotFoundError."""
    repo = source.name
    try:
        return call()
    except GatedRepoError as err:
        raise CheckpointNotFoundError(
            f"Hub repo {repo} is gated: accept its conditions on the Hub, then pass a token "
            "(token=... or `hf auth login`) of an account that has access"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"Hub repo {repo} was not found: it does not exist, or it is private and the token "
            "in use (token=..., HF_TOKEN or `hf auth login`) cannot read it"
        ) from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(
            f"revision {source.revision!r} does not exist in Hub repo {repo} (a branch, a tag or "
            "a commit sha is expected)"
        ) from err
    except (LocalEntryNotFoundError, IncompleteSnapshotError) as err:
        where = f"revision {source.revision!r} of " if source.revision else ""
        why = (
            "local_files_only=True"
            if source.local_files_only
            else "the Hub could not be reached (offline?)"
        )
        raise CheckpointNotFoundError(
            f"{where}Hub repo {repo} is not in the local cache and {why}: {err}"
        ) from err


def upload_folder_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool | None,
    token: str | None,
    branch: str | None,
    commit_message: str,
    delete_patterns: list[str],
) -> CommitInfo:
    """Create the repo (and branch) if needed, then upload ``folder`` as one commit.

    Returns:
        The commit (a ``str`` holding its URL; ``.oid`` is the commit sha).
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if branch is not None:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=branch,
        commit_message=commit_message,
        delete_patterns=delete_patterns or None,
    )
