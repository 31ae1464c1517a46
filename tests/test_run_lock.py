"""Finding 1: one writer per run folder.

Two ``train`` processes on one ``--out`` were not kept apart: a ``--resume`` started while a
run was active trained alongside it, both wrote checkpoints, and ``train_config.json`` ended up
describing the other run. The run lock refuses the second process, names the first, is released
however its holder ends (normally, by an exception, by Ctrl-C, by ``kill -9``) and a stale one
is taken over with a note.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusionkit.cli import main
from diffusionkit.training.lock import LOCK_NAME, RunLock, RunLockedError, run_lock

HOLDER = """
import sys
from diffusionkit.training.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes stdin or kills this process
"""

TINY = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--no-progress", "--threads", "1",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def _start_holder(folder: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def _kernel_lock_is_free(folder: Path) -> bool:
    """Whether a fresh open file of the lock could be locked (what another process would see)."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock")
def test_a_held_folder_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    child = _start_holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        message = str(info.value)
        assert f"process {child.pid}" in message and "is in use" in message
        assert "another run folder" in message
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == child.pid and record["host"] and "start_ticks" in record
    finally:
        child.kill()  # SIGKILL: no chance to release
        child.wait()
    lock = RunLock(tmp_path).acquire()
    try:
        note = lock.stale_note()
        assert note is not None
        assert f"process {child.pid}" in note and "is no longer running" in note
        assert "killed or crashed" in note
    finally:
        lock.release()
    assert _kernel_lock_is_free(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released cleanly: no record left
    again = RunLock(tmp_path).acquire()
    assert again.stale_note() is None
    again.release()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_released_on_an_exception_and_on_ctrl_c(tmp_path, error):
    with pytest.raises(type(error)), RunLock(tmp_path):
        assert not _kernel_lock_is_free(tmp_path)
        raise error
    assert _kernel_lock_is_free(tmp_path)


def test_reentrant_within_a_process_and_released_by_the_outermost(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path) as inner:
            assert inner.held
        assert not _kernel_lock_is_free(tmp_path)  # the inner release kept the outer lock
    assert _kernel_lock_is_free(tmp_path)


def test_a_stale_record_tells_a_reused_pid_and_a_reboot_from_a_dead_process(tmp_path):
    from diffusionkit.training.lock import HolderRecord

    now = HolderRecord.of_this_process()
    parent = os.getppid()  # alive, but it did not start at the recorded time
    cases = {
        "now belongs to another process": {**now.__dict__, "pid": parent, "start_ticks": 1},
        "before the machine last rebooted": {**now.__dict__, "boot_id": "another-boot"},
        "ran on host elsewhere": {**now.__dict__, "host": "elsewhere"},
    }
    for expected, record in cases.items():
        (tmp_path / LOCK_NAME).write_text(json.dumps(record))
        with RunLock(tmp_path) as lock:
            if record["pid"] == os.getpid():  # the same PID as ours: pretend another one
                lock.took_over = HolderRecord(**{**record, "pid": parent})
            note = lock.stale_note()
        assert note is not None and expected in note, note


def test_only_rank_0_takes_the_lock(tmp_path):
    with run_lock(tmp_path / "run", rank=1) as lock:
        assert lock is None
    assert not (tmp_path / "run").exists()  # other ranks do not even create the folder
    with run_lock(None) as lock:
        assert lock is None


@pytest.mark.slow  # a real training process in the background: about 5-10 s
def test_cli_refuses_a_second_writer_while_a_run_is_active(tmp_path, capsys):
    out = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "diffusionkit", "train", "--out", str(out), *TINY,
         "--steps", "100000", "--checkpoint-every", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        # checkpoint folders appear whole (renamed into place), so one file shows it is there
        while not (out / "checkpoints" / "step-00000002" / "state.json").exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the training process wrote no checkpoint"
            time.sleep(0.1)
        settings_before = (out / "train_config.json").read_text()

        # --resume while the run is active (it used to succeed and train alongside)
        code = main(["train", "--out", str(out), "--resume", "--steps", "2", "--lr", "0.0005"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert f"process {child.pid}" in err and "is in use" in err
        # a second new run into the same folder (it used to die with a rename error)
        code = main(["train", "--out", str(out), *TINY, "--steps", "2"])
        err = capsys.readouterr().err
        assert code == 1 and f"process {child.pid}" in err, err
        assert (out / "train_config.json").read_text() == settings_before
        assert child.poll() is None  # the first run was not disturbed
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock")
def test_push_refuses_a_folder_that_is_being_trained_in(tmp_path, capsys):
    from diffusionkit.training.lock import who_holds

    assert who_holds(tmp_path) is None  # no lock file: nothing is created
    assert not (tmp_path / LOCK_NAME).exists()
    child = _start_holder(tmp_path)
    try:
        assert (who_holds(tmp_path) or "").startswith(f"process {child.pid} on ")
        code = main(["push", "--model", str(tmp_path), "--repo", "alice/half-written"])
        err = capsys.readouterr().err
        assert code == 1 and f"process {child.pid}" in err and "being written" in err, err
    finally:
        child.kill()
        child.wait()
    assert who_holds(tmp_path) is None  # the holder died: the folder is free
