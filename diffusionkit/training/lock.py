"""One writer per run folder: a lock that a training process holds while it writes the folder.

Why a kernel lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) rather than a lock file
created with ``O_EXCL``: the kernel drops the lock when its holder dies, however it dies
(``kill -9``, the OOM killer, a crash), so a dead run never blocks the next one, and no one has
to decide whether a recorded PID is still the holder, a question an ``O_EXCL`` file cannot
answer reliably (PIDs are reused after a crash or a reboot, and the holder may be on another
host). On local disks flock is exact. On NFS, Linux implements flock with the server's POSIX
byte-range locks (since 2.6.12), so processes on different hosts exclude each other too, as
long as the server runs a lock manager; without one the lock cannot be taken and the run stops
with that message rather than running unprotected.

The lock file, ``.diffusionkit-lock`` in the run folder, also records its holder (PID, host,
boot id and the process's start time) so that a refusal names who holds the folder, and so
that a record left by a holder that died without releasing (the file names it, but nobody holds
the lock) is reported as a stale lock being taken over. Recording the start time and boot id
besides the PID lets that report tell a dead holder from a reused PID. The file itself is never
deleted: deleting it would let a newcomer lock a fresh file of the same name while another
process still holds the old, unlinked one.

Within one process the lock is re-entrant (the command line holds it around the whole run and
the ``Trainer`` inside takes it again): flock locks belong to open files, so a second ``open``
of the same file in the same process would otherwise conflict with the first. Under
``torchrun`` only rank 0 writes, so only rank 0 takes the lock; the other ranks never touch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "HolderRecord", "RunLock", "RunLockedError", "run_lock", "who_holds"]

#: name of the lock file inside a run folder
LOCK_NAME = ".diffusionkit-lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run folder; the message names it."""


@dataclass(frozen=True)
class HolderRecord:
    """Who took a lock: enough to name the process and to tell a dead one from a reused PID.

    Attributes:
        pid: the process id.
        host: ``socket.gethostname()`` of its machine.
        boot_id: the kernel's boot id (Linux), or ``""``; a different one means a reboot since.
        start_ticks: the process's start time in clock ticks after boot (Linux), or ``-1``.
        since: when it took the lock, seconds since the epoch.
    """

    pid: int
    host: str
    boot_id: str
    start_ticks: int
    since: float

    @classmethod
    def of_this_process(cls) -> HolderRecord:
        """The record of the calling process."""
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _boot_id(), _start_ticks(pid), time.time())

    @classmethod
    def parse(cls, text: str) -> HolderRecord | None:
        """The record in a lock file's text; ``None`` for an empty or unreadable one."""
        try:
            data = json.loads(text)
            return cls(
                int(data["pid"]),
                str(data["host"]),
                str(data.get("boot_id", "")),
                int(data.get("start_ticks", -1)),
                float(data.get("since", 0.0)),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def to_json(self) -> str:
        return json.dumps(self.__dict__) + "\n"

    def fate(self) -> str:
        """What became of the holder, as far as this machine can tell (a clause after "which")."""
        if self.host != socket.gethostname():
            return f"ran on host {self.host}, which this machine cannot check"
        if self.boot_id and self.boot_id != _boot_id():
            return "ran before the machine last rebooted"
        ticks = _start_ticks(self.pid)
        if ticks == -1 and not _pid_exists(self.pid):
            return "is no longer running"
        if self.start_ticks != -1 and ticks not in (-1, self.start_ticks):
            return f"is no longer running (PID {self.pid} now belongs to another process)"
        return "is still running but no longer holds the lock"

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"process {self.pid} on {self.host} (since {when})"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (start time after boot), or -1 where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    # the command name (field 2) is in parentheses and may contain spaces: split after it
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return -1


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# Windows locks are mandatory byte ranges: lock one byte far past the record, which stays
# readable for the message of a refused process.
_WINDOWS_LOCK_OFFSET = 1 << 30


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; ``False`` if someone holds it."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _write(fd: int, text: str) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, text.encode("utf-8"))
    os.fsync(fd)


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """The lock of one run folder; a context manager, re-entrant within a process.

    Args:
        folder: the run folder (created if needed, with the lock file in it).

    Attributes:
        path: the lock file.
        took_over: after :meth:`acquire`, the record of a holder that had died without
            releasing the lock (a stale lock this process took over), else ``None``.

    Raises (from :meth:`acquire`):
        RunLockedError: another process holds the folder; the message names it.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.took_over: HolderRecord | None = None
        self._key: str | None = None

    def acquire(self) -> RunLock:
        """Take the lock (or count one more use of it, when this process holds it already)."""
        if self._key is not None:
            raise RuntimeError(f"this RunLock of {self.folder} is already acquired")
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"run folder {self.folder} is a file; choose a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.count += 1
                self._key = key
                return self
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"cannot create the lock file {self.path} of the run folder: "
                    f"{error.strerror}; check that {self.folder} is a writable folder",
                ) from None
            try:
                locked = _try_lock(fd)
            except OSError as error:  # e.g. NFS without a lock manager
                os.close(fd)
                raise OSError(
                    error.errno,
                    f"cannot lock {self.path}: {error.strerror}; the file system of "
                    f"{self.folder} does not support locks (an NFS mount without a lock "
                    "manager?); train in a folder on a local disk",
                ) from None
            if not locked:
                record = HolderRecord.parse(_read(fd))
                os.close(fd)
                who = "another process" if record is None else record.describe()
                raise RunLockedError(
                    f"{self.folder} is in use: {who} is training there (lock file "
                    f"{self.path}). Wait for it to finish or stop it; to train in parallel, "
                    "use another run folder"
                )
            self.took_over = HolderRecord.parse(_read(fd))  # a record left by a dead holder
            _write(fd, HolderRecord.of_this_process().to_json())
            _HELD[key] = _Held(fd, 1)
            self._key = key
        return self

    def release(self) -> None:
        """Give the lock back (the last release of this process clears the record and unlocks)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_GUARD:
            held = _HELD[key]
            held.count -= 1
            if held.count > 0:
                return
            del _HELD[key]
            try:
                _write(held.fd, "")  # an empty record: released cleanly
                _unlock(held.fd)
            finally:
                os.close(held.fd)

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._key is not None

    def stale_note(self) -> str | None:
        """One line about the stale lock taken over, or ``None``."""
        record = self.took_over
        if record is None or record.pid == os.getpid():
            return None
        return (
            f"took over the lock of {self.folder} from {record.describe()}, which "
            f"{record.fate()}; it ended without releasing the lock (killed or crashed)"
        )

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str] | None, *, rank: int = 0) -> Iterator[RunLock | None]:
    """Hold the lock of ``folder`` for the block; a no-op without a folder or off rank 0.

    Args:
        folder: the run folder, or ``None`` (nothing is written, nothing to lock).
        rank: the process's rank under ``torchrun``; only rank 0 writes and locks.
    """
    if folder is None or rank != 0:
        yield None
        return
    with RunLock(folder) as lock:
        yield lock


def who_holds(folder: str | os.PathLike[str]) -> str | None:
    """Who is writing ``folder`` right now, for readers that must not read a half-written run.

    Creates nothing (a folder without a lock file is not being trained in). Returns ``None``
    when no other process holds the lock (or on Windows, where this is not checked), else a
    description such as ``"process 4242 on host (since 2024-05-01 10:12:03)"``.
    """
    path = Path(folder) / LOCK_NAME
    if sys.platform == "win32" or os.path.realpath(path) in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    import fcntl

    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            record = HolderRecord.parse(_read(fd))
            return "another process" if record is None else record.describe()
        except OSError:
            return None  # a file system without locks: nothing can be said
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
