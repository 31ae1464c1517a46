"""Write a folder of files so that a crash never leaves a half-written checkpoint.

Files are written into a fresh temporary folder beside the target and, once all are complete and
flushed to disk, moved into place with ``os.replace`` (atomic on one filesystem). A target that
does not exist yet is created by one rename of the whole folder. Into an existing folder, files
move one by one with the *commit file* (the ``config.json`` that lists the others with their
checksums) last: a crash in between leaves the old commit file, whose checksums no longer match
the new weights, so loading fails loudly instead of mixing two checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffusionkit.utils.atomic import fsync_dir, publishable

__all__ = ["staged_directory"]


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


@contextmanager
def staged_directory(target: Path, *, commit_file: str) -> Iterator[Path]:
    """Yield an empty staging folder; on success publish its files into ``target``.

    Args:
        target: the folder to create or update.
        commit_file: relative path of the file published last (it vouches for the others).

    On an exception inside the ``with`` block nothing in ``target`` changes and the staging
    folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder")
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield stage
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        for path in files:
            _fsync_file(path)
            publishable(path)
        for folder in (stage, *(p for p in stage.rglob("*") if p.is_dir())):
            publishable(folder)
        if not target.exists():
            os.replace(stage, target)  # the whole checkpoint appears at once
            fsync_dir(target.parent)
            return
        commit = stage / commit_file
        for path in sorted(files, key=lambda p: p == commit):  # commit file last
            dest = target / path.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        fsync_dir(target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
