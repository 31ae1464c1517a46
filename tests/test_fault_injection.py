"""Fault injection: ``kill -9`` a training run at random points, then resume it.

A tiny ``diffusionkit train`` runs in a subprocess and is killed with SIGKILL after a random,
seeded delay, anywhere from setting up to the export: between steps, in the middle of a
checkpoint write or a checkpoint rotation, while the metrics log or the exported model is being
written. After each kill:

* the newest checkpoint must verify (a kill never leaves a damaged visible checkpoint) and hold
  exactly the model, EMA, optimizer and random states of an uninterrupted reference run at the
  same step;
* ``--resume`` (in this process) must finish the run with weights equal, bit for bit, to the
  reference's, take over the dead process's lock with a note, and leave an exported model that
  loads with the reference's weights;
* a run killed before its first checkpoint must be refused by ``--resume`` with a message.

The child imports everything and waits for a "go" line before it trains, so that the delay
measures training time rather than import time, and the next child can warm up while the
previous one is checked. Both sides use one thread, so their floating-point results agree.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusionkit import DenoiseDiffusion
from diffusionkit.cli import main
from diffusionkit.training import find_checkpoint, list_checkpoints, load_checkpoint
from diffusionkit.training.lock import LOCK_NAME, HolderRecord

TRIALS = 24
STEPS = 16
SEED = 15

ARGS = [
    "--data", "digits", "--image-size", "8", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-count", "4", "--sample-every", "0", "--no-progress", "--threads", "1",
    "--steps", str(STEPS), "--checkpoint-every", "1", "--log-every", "1",
]  # fmt: skip

WARM_UP = """
import torch
from PIL import Image  # noqa: F401 - imported now, not while the clock runs

import diffusionkit.training  # noqa: F401
from diffusionkit.data.digits import load_digits_arrays

load_digits_arrays()
torch.nn.functional.group_norm(torch.zeros(1, 4, 2, 2, device="meta"), 2)  # meta kernels
"""

CHILD = f"""
import sys
{WARM_UP}
from diffusionkit.cli import main

print("ready", flush=True)
if sys.stdin.readline().strip() == "go":
    sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DIFFUSIONKIT_DEBUG"):
        env.pop(name, None)
    return env


class Child:
    """A training process, started (warm, waiting) now and told to train later."""

    def __init__(self, script: Path, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "train", "--out", str(out), *ARGS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=_env(),
        )  # fmt: skip

    def go(self) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"the child did not start: {line!r}"
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> bool:
        """SIGKILL; returns whether the run had already finished."""
        if self.proc.returncode is not None:  # killed and reaped already
            return True
        finished = self.proc.poll() is not None
        self.proc.kill()
        self.proc.communicate()
        return finished


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for stem in ("model", "ema", "optimizer", "rng"):
        out.update({f"{stem}.{k}": v for k, v in load_file(folder / f"{stem}.safetensors").items()})
    return out


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def _check_after_kill(
    out: Path,
    i: int,
    ref_steps: dict[int, dict[str, torch.Tensor]],
    ref_model: DenoiseDiffusion,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The checks of one trial (see the module docstring)."""
    lock = out / LOCK_NAME
    record = HolderRecord.parse(lock.read_text()) if lock.exists() else None
    if not list_checkpoints(out / "checkpoints"):
        code = main(["train", "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        assert code == 2 and "resume" in err, f"trial {i}: {err}"
        return

    # the newest checkpoint verifies and is the reference's state at its step
    newest = find_checkpoint(out)  # raises if the newest one were damaged
    step = load_checkpoint(newest).step
    _assert_equal(_tensors(newest), ref_steps[step], f"trial {i}, checkpoint at step {step}")

    # resume to the end: bit-exact, the dead process's lock taken over with a note
    code = main(["train", "--out", str(out), "--resume"])
    captured = capsys.readouterr()
    assert code == 0, f"trial {i}: {captured.err}"
    if record is not None:
        assert "took over the lock" in captured.err, f"trial {i}: {captured.err}"
    final = find_checkpoint(out)
    assert load_checkpoint(final).step == STEPS
    _assert_equal(_tensors(final), ref_steps[STEPS], f"trial {i}, final weights")
    loaded = DenoiseDiffusion.from_pretrained(out)
    for (name, a), b in zip(
        loaded.net.state_dict().items(), ref_model.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"trial {i}: exported {name} differs"


def _when(out: Path, finished: bool) -> str:
    """Where in the run a kill landed, as far as the files tell."""
    saved = list_checkpoints(out / "checkpoints")
    if finished:
        return "after the end"
    if list((out / "checkpoints").glob(".tmp-*")):
        return "during a checkpoint write or rotation"
    if not saved:
        return "before the first checkpoint"
    if saved[-1].name != f"step-{STEPS:08d}":
        return "between checkpoints"
    return "after the last checkpoint (samples, export)"


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the command line set it to 1 in this process


@pytest.mark.slow  # about 1.5-3 minutes on two cores
def test_kill_9_at_random_points_then_resume_bit_exactly(tmp_path, capsys, one_thread):
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    # the uninterrupted reference, with every checkpoint kept, timed as warm as the children
    exec(WARM_UP, {})  # the statements the children run before they say "ready"
    reference = tmp_path / "reference"
    started = time.monotonic()
    assert main(["train", "--out", str(reference), *ARGS, "--keep-checkpoints", "100"]) == 0
    duration = time.monotonic() - started
    capsys.readouterr()
    ref_steps = {
        load_checkpoint(p).step: _tensors(p) for p in list_checkpoints(reference / "checkpoints")
    }
    assert sorted(ref_steps) == list(range(1, STEPS + 1))
    ref_model = DenoiseDiffusion.from_pretrained(reference)

    rng = random.Random(SEED)
    # up to 1.1x the reference's time: kills land from set-up to just after the end
    limit = 1.1 * duration
    delays = [rng.uniform(0.0, limit) for _ in range(TRIALS)]
    outcomes: dict[str, int] = {}
    child = Child(script, tmp_path / "trial-00")
    try:
        for i, delay in enumerate(delays):
            current = child
            current.go()
            if i + 1 < TRIALS:  # the next one warms up while this one is killed and checked
                child = Child(script, tmp_path / f"trial-{i + 1:02d}")
            time.sleep(delay)
            finished = current.kill()
            when = _when(current.out, finished)
            outcomes[when] = outcomes.get(when, 0) + 1
            _check_after_kill(current.out, i, ref_steps, ref_model, capsys)
    finally:
        child.kill()  # a child still waiting, if a check failed
    print(f"\nkills (seed {SEED}, {TRIALS} trials, delays up to {limit:.2f} s): {outcomes}")
    assert sum(outcomes.values()) == TRIALS
