"""Content checksums: the sha256 a checkpoint records, and the checksum the Hub announced.

huggingface_hub checks a download only by its size, so a same-size corruption (flipped bits on
the wire, a damaged disk) enters its cache and is served again on every later load. Its cache
names each file's bytes after the ETag the Hub sent (``blobs/<etag>``): the sha256 of the content
for LFS files, the git blob id (sha1 of ``"blob <size>\\0" + content``) for regular ones. So any
file fetched through the cache can be checked against what the Hub said it should be.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from diffusionkit.hub.errors import CheckpointError

__all__ = ["file_digests", "sha256_file", "verify_cached_download"]

_CHUNK = 1 << 22
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def file_digests(path: Path, *, sha256: bool = True, git_sha1: bool = False) -> dict[str, str]:
    """Hex digests of a file, computed in one pass: ``"sha256"`` and/or ``"git-sha1"``."""
    size = path.stat().st_size
    hashers: dict[str, hashlib._Hash] = {}
    if sha256:
        hashers["sha256"] = hashlib.sha256()
    if git_sha1:
        hashers["git-sha1"] = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's content."""
    return file_digests(path)["sha256"]


def _cache_blob(path: Path) -> tuple[str, str] | None:
    """``(kind, digest)`` if ``path`` resolves to a Hub-cache blob named by a content hash."""
    real = Path(os.path.realpath(path))
    if real.parent.name != "blobs":
        return None
    if _SHA256.fullmatch(real.name):
        return "sha256", real.name
    if _SHA1.fullmatch(real.name):
        return "git-sha1", real.name
    return None


def verify_cached_download(path: Path, label: str) -> dict[str, str]:
    """Check a file from the Hub cache against the checksum the Hub announced for it.

    Files outside the cache layout (a local folder, a copy) are not checked here.

    Args:
        path: the file, usually a snapshot link into the cache's ``blobs/``.
        label: how to name the file in an error, e.g. ``"model.safetensors of alice/x@1a2b3c4"``.

    Returns:
        The digests computed (``{"sha256": ...}`` for LFS blobs, else ``{}`` or ``{"git-sha1": ...}``),
        so a caller that also needs the sha256 does not read the file twice.

    Raises:
        CheckpointError: the cached content does not match; the message says to reload with
            ``force_download=True``.
    """
    blob = _cache_blob(path)
    if blob is None:
        return {}
    kind, expected = blob
    digests = file_digests(path, sha256=kind == "sha256", git_sha1=kind == "git-sha1")
    if digests[kind] != expected:
        raise CheckpointError(
            f"{label}: the cached download is corrupt (its content does not match the checksum "
            f"the Hub announced, {kind} {expected[:12]}...). Load again with force_download=True "
            "to fetch a fresh copy."
        )
    return digests
