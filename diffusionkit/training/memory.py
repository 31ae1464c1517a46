"""An estimate of a training run's memory, computed before the first step allocates it.

What it counts, per process (fp32 unless noted):

* weights, their gradients, AdamW's two moment buffers and the EMA copy: 5 x the parameters'
  bytes (exact);
* activations: what autograd keeps for the backward pass of one micro-batch. The network runs
  once on PyTorch's ``meta`` device (shapes only, nothing allocated) at batch 1 and at batch 2
  under ``saved_tensors_hooks``, which see every tensor saved for the backward pass; their
  bytes give a per-example figure and a batch-independent part, scaled to the micro-batch.
  This counts fp32 sizes: under bf16/fp16 autocast many activations are stored at half
  size, so there it is an upper bound. Temporary buffers of single operations (convolution
  workspaces, the attention matrix inside a fused kernel) are not counted, so it can be
  below the true peak by those;
* the data the dataset holds in memory (the built-in digits; image folders read lazily).

It is an estimate for a decision ("will this fit?"), not a measurement; the run prints it at
the start so that a surprising number is seen before hours are spent.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "MemoryEstimate",
    "activation_bytes",
    "dataset_bytes",
    "estimate_training_memory",
    "format_bytes",
    "physical_memory",
]


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest unit that keeps it >= 1 (``"1.5 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training process needs, by what needs them (see the module docstring).

    Attributes:
        weights: the network's parameters and buffers.
        gradients: one gradient per parameter.
        optimizer: AdamW's two moment buffers.
        ema: the EMA copy of the network.
        activations: saved for the backward pass of one micro-batch; ``None`` when the
            network could not run on the meta device.
        data: tensors the dataset holds in memory.
        micro_batch: examples per forward pass on this process.
    """

    weights: int
    gradients: int
    optimizer: int
    ema: int
    activations: int | None
    data: int
    micro_batch: int

    @property
    def total(self) -> int:
        """The sum of the parts (activations counted as 0 when unknown)."""
        return (
            self.weights + self.gradients + self.optimizer + self.ema
            + (self.activations or 0) + self.data
        )  # fmt: skip

    def describe(self) -> str:
        """One line: the total and its parts."""
        acts = (
            "activations not estimated (the network does not run on the meta device)"
            if self.activations is None
            else f"activations {format_bytes(self.activations)} for {self.micro_batch} "
            "images per forward pass"
        )
        return (
            f"about {format_bytes(self.total)} per process: weights "
            f"{format_bytes(self.weights)}, gradients {format_bytes(self.gradients)}, AdamW "
            f"state {format_bytes(self.optimizer)}, EMA {format_bytes(self.ema)}, {acts}, "
            f"data {format_bytes(self.data)}"
        )


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _saved_bytes(net: nn.Module, shape: tuple[int, ...]) -> int:
    params = {id(p) for p in net.parameters()}
    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if id(t) not in params:
            sizes[id(t)] = t.numel() * t.element_size()
        return t

    x = torch.zeros(shape, device="meta")
    t = torch.zeros(shape[0], dtype=torch.int64, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, t)  # kept alive until the sizes are summed, so ids stay unique
    total = sum(sizes.values())
    del out
    return total


def _meta_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` on the meta device, made without copying its weights first."""
    memo: dict[int, object] = {}
    for p in net.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in net.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(net, memo)


def activation_bytes(net: nn.Module, image_shape: tuple[int, int, int], batch: int) -> int | None:
    """Bytes autograd saves for the backward pass of ``net`` on ``batch`` images.

    Measured on the ``meta`` device (no memory is allocated) at batch 1 and 2, extrapolated
    linearly to ``batch``. ``None`` when the network cannot run there (it needs inputs
    besides ``(x, t)``, or an operation has no meta implementation).

    Args:
        net: the network, called as ``net(x, t)``; it is copied, not moved.
        image_shape: ``(C, H, W)``.
        batch: examples per forward pass.
    """
    try:
        meta = _meta_copy(net).train()
        one = _saved_bytes(meta, (1, *image_shape))
        two = _saved_bytes(meta, (2, *image_shape))
    except Exception:  # any failure means "unknown", never a failed run
        return None
    per_example = max(0, two - one)
    return one + per_example * (batch - 1)


def dataset_bytes(dataset: object) -> int:
    """Bytes of the tensors a dataset holds as attributes (``images``, ``labels``, ...)."""
    total = 0
    for value in vars(dataset).values():
        if isinstance(value, Tensor):
            total += value.numel() * value.element_size()
    return total


def estimate_training_memory(
    net: nn.Module,
    image_shape: tuple[int, int, int],
    micro_batch: int,
    *,
    data: int = 0,
) -> MemoryEstimate:
    """Estimate one training process's memory (see the module docstring for the method).

    Args:
        net: the network to train.
        image_shape: ``(C, H, W)`` of the training images.
        micro_batch: examples per forward pass on one process
            (``batch_size / (grad_accum * world_size)``).
        data: bytes the dataset holds in memory (see :func:`dataset_bytes`).
    """
    weights = _module_bytes(net)
    params = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    return MemoryEstimate(
        weights=weights,
        gradients=params,
        optimizer=2 * params,
        ema=weights,
        activations=activation_bytes(net, image_shape, micro_batch),
        data=data,
        micro_batch=micro_batch,
    )


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 or v1), if there is one."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text)
    return None


def physical_memory(device: torch.device) -> int | None:
    """Total memory of ``device``: the GPU's, or the machine's RAM (within a container's
    limit) for the CPU; ``None`` where it cannot be read (then nothing is refused)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    limit = _cgroup_limit()
    return min(total, limit) if limit else total
