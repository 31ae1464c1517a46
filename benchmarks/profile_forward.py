"""Where the CIFAR-10 U-Net's forward time goes: the operator table behind docs/performance.md.

Profiles diffusionkit's forward pass of the DDPM CIFAR-10 U-Net (random weights, 32x32,
inference mode) with ``torch.profiler`` and prints each operator's share of the time. The
share spent outside convolutions bounds the fraction of the conv peak a forward pass can
reach, whatever the convolutions do.

Run: ``python benchmarks/profile_forward.py [--batch 16] [--threads 1] [--calls 2]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.common import cpu_model  # noqa: E402
from benchmarks.levers import CIFAR10  # noqa: E402
from diffusionkit import UNet  # noqa: E402


def shares(batch: int, calls: int) -> list[tuple[str, float, int]]:
    """``(operator, share of self time, calls)`` for ``calls`` forwards, largest first."""
    torch.manual_seed(0)
    net = UNet(**CIFAR10).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    with torch.inference_mode():
        net(x, t)  # warm-up: oneDNN picks its kernels on the first call
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                net(x, t)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [(e.key, e.self_cpu_time_total / total, e.count // calls) for e in events]
    return sorted(rows, key=lambda r: -r[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if min(args.batch, args.threads, args.calls, args.top) < 1:
        parser.error("--batch, --threads, --calls and --top must be positive")
    torch.set_num_threads(args.threads)
    print(
        f"{cpu_model()}, {args.threads} torch threads, batch {args.batch}, torch {torch.__version__}"
    )
    rows = shares(args.batch, args.calls)
    print(f"{'operator':45s} {'share':>7s} {'calls/forward':>14s}")
    for name, share, count in rows[: args.top]:
        print(f"{name[:45]:45s} {share:7.1%} {count:14d}")
    conv = sum(s for name, s, _ in rows if "conv" in name)
    print(f"convolutions: {conv:.1%} of the forward time; everything else {1 - conv:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
