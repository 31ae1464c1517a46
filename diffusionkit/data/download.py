"""Verified, atomic downloads into the diffusionkit cache.

A file is streamed into a temporary file next to its destination, hashed while it arrives,
checked, and only then renamed into place (``os.replace`` is atomic on one file system). An
interrupted or corrupted download therefore never leaves a file under the final name that a
later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from diffusionkit.utils.atomic import publishable

_CHUNK = 1 << 20


class DownloadError(OSError):
    """No URL delivered a file that passed its checks (offline, unreachable, or corrupted)."""


def default_cache_dir() -> Path:
    """Folder for downloaded data: ``$DIFFUSIONKIT_CACHE``, else ``$XDG_CACHE_HOME/diffusionkit``,
    else ``~/.cache/diffusionkit``."""
    if env := os.environ.get("DIFFUSIONKIT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "diffusionkit"


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file's bytes, e.g. ``file_digest(p, "sha256")``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    check: Callable[[Path], None] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers a file passing the checks.

    Args:
        urls: mirrors, tried in order.
        dest: final path; its folder is created.
        md5, sha256: expected hex digests of the downloaded bytes (either, both or neither).
        check: further verification of the downloaded temporary file; raises ``ValueError``
            to reject it.
        timeout: seconds to wait for a server before trying the next URL.

    Returns:
        ``dest`` as a Path.

    Raises:
        DownloadError: listing each URL with the reason it failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digests = _fetch(url, out, timeout)
            for name, expected in (("md5", md5), ("sha256", sha256)):
                if expected is not None and digests[name] != expected.lower():
                    raise ValueError(
                        f"{name} checksum mismatch: got {digests[name]}, expected {expected}"
                    )
            if check is not None:
                check(tmp)
            publishable(tmp)
            os.replace(tmp, dest)
            return dest
        # urllib's URLError and socket timeouts are OSErrors; checksum failures ValueErrors.
        except (OSError, ValueError) as error:
            failures.append(f"  {url}: {error}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {dest.name}:\n" + "\n".join(failures))


def _fetch(url: str, out: BinaryIO, timeout: float) -> dict[str, str]:
    """Stream ``url`` into the binary file ``out``; return its md5 and sha256 hex digests."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        while chunk := response.read(_CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            out.write(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}
