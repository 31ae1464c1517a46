"""Multi-process training with ``torch.distributed``, as launched by ``torchrun``.

``torchrun --nproc_per_node=N`` starts ``N`` copies of a script with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_distributed` reads them and joins the process group (``nccl`` on CUDA, ``gloo``
on the CPU); a plain ``python`` run is a "world" of one process and needs no set-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedContext", "init_distributed", "launch_rank"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the training processes.

    Attributes:
        rank: this process's index, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: index among the processes on this machine (picks the GPU).
        device: the device this process trains on.
        owns_group: whether :func:`init_distributed` created the process group (and so
            :meth:`shutdown` destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes checkpoints, samples and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every process (a no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over all processes (returned on every process)."""
        if not self.enabled:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def shutdown(self) -> None:
        """Destroy the process group if this context created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launch_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without ``torchrun``), readable before any
    process group exists: only rank 0 writes (and locks) a run folder."""
    return _env_int("RANK", 0)


def init_distributed(device: torch.device | str | None = None) -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment, if any.

    Args:
        device: the device to train on. ``None`` picks ``cuda:<LOCAL_RANK>`` when CUDA is
            available and the CPU otherwise. Under ``torchrun`` a CUDA device without an
            index becomes ``cuda:<LOCAL_RANK>``.

    Returns:
        The context; a single-process one when ``WORLD_SIZE`` is unset or 1 and no process
        group exists yet.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        owns = False
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        owns = world > 1
    local_rank = _env_int("LOCAL_RANK", rank)
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if owns:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistributedContext(
        rank=rank, world_size=world, local_rank=local_rank, device=resolved, owns_group=owns
    )
