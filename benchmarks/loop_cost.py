"""diffusionkit's sampling loop without a network: its own cost per step, warm and cold.

The network is a stub that returns a fixed prediction, so everything timed is the loop: the
schedule's scalars, the prediction split, the sampler's step and its noise draw. It runs twice:
once on warm caches, and once with a stub that also sweeps a 32 MB buffer at every call, as a
real network's activations do, so that the loop runs on cold caches, as it does between real
network calls. Network time
is taken out with the same hooks as benchmark 2 (``sampling_overhead.NetTimer``).

Run: ``python benchmarks/loop_cost.py [--batch 1] [--threads 1] [--repeats 9]``
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from benchmarks.common import cpu_model  # noqa: E402
from benchmarks.sampling_overhead import NetTimer  # noqa: E402
from diffusionkit import DenoiseDiffusion, LinearSchedule  # noqa: E402

STEPS = 100
EVICT_FLOATS = 8_000_000  # 32 MB: more than the last-level cache a 2-core slice has


class StubNet(nn.Module):
    """Returns a fixed ``(B, 3, 32, 32)`` prediction; with ``evict``, sweeps 32 MB first."""

    def __init__(self, batch: int, evict: bool) -> None:
        super().__init__()
        self.in_channels = 3
        self.register_buffer("out", 0.1 * torch.randn(batch, 3, 32, 32))
        self.register_buffer("sweep", torch.zeros(EVICT_FLOATS) if evict else None)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.sweep is not None:
            self.sweep.add_(1.0)
        return self.out.clone()


def loop_us_per_step(batch: int, evict: bool, repeats: int) -> float:
    """Median over ``repeats`` chains of (chain time - stub time) / steps, in microseconds."""
    net = StubNet(batch, evict)
    model = DenoiseDiffusion(net, LinearSchedule(timesteps=STEPS))
    timer = NetTimer(net, torch.device("cpu"), capture=False)

    def chain() -> float:
        timer.reset()
        start = time.perf_counter()
        model.reverse_sample(
            (batch, 3, 32, 32), generator=torch.Generator().manual_seed(0), progress=False
        )
        return (time.perf_counter() - start - timer.seconds) / STEPS * 1e6

    chain()  # warm-up
    return statistics.median(chain() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if min(args.batch, args.threads, args.repeats) < 1:
        parser.error("--batch, --threads and --repeats must be positive")
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {args.threads} torch threads, batch {args.batch}, {STEPS} steps")
    for evict in (False, True):
        us = loop_us_per_step(args.batch, evict, args.repeats)
        print(f"loop cost per step, {'cold caches' if evict else 'warm caches'}: {us:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
