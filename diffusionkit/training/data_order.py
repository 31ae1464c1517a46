"""The order in which training examples are visited, as a small checkpointable state.

Each epoch is a permutation of the dataset drawn from a ``torch.Generator`` seeded from
``(seed, epoch)`` alone, and the position inside the epoch is a counter. Saving
``(epoch, position)`` therefore captures the whole data order: a resumed run continues
mid-epoch with exactly the examples the interrupted run would have seen, on any number of
processes (the order is global; each process takes its slice of every global batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["DataOrder"]

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive epochs' seeds apart
_MASK63 = (1 << 63) - 1


class DataOrder:
    """An endless stream of dataset indices, epoch after epoch, resumable from its state.

    Args:
        size: number of examples ``N`` in the dataset.
        seed: seed of the permutations.
        shuffle: draw a new permutation each epoch; ``False`` visits ``0 .. N - 1`` in order.

    Attributes:
        epoch: the current epoch (0-based).
        position: how many indices of the current epoch have been taken.
    """

    def __init__(self, size: int, seed: int = 0, *, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError(f"the dataset is empty (size {size}); it needs at least one example")
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0
        self.position = 0
        self._perm: Tensor | None = None
        self._perm_epoch = -1

    def permutation(self, epoch: int) -> Tensor:
        """The ``(N,)`` int64 visiting order of ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.size)
        if epoch != self._perm_epoch or self._perm is None:
            seed = (self.seed * _MIX + epoch) & _MASK63
            generator = torch.Generator().manual_seed(seed)
            self._perm = torch.randperm(self.size, generator=generator)
            self._perm_epoch = epoch
        return self._perm

    def take(self, count: int) -> Tensor:
        """The next ``count`` indices ``(count,)`` int64, continuing into the next epoch(s)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        parts: list[Tensor] = []
        remaining = count
        while remaining > 0:
            perm = self.permutation(self.epoch)
            chunk = perm[self.position : self.position + remaining]
            parts.append(chunk)
            remaining -= chunk.numel()
            self.position += chunk.numel()
            if self.position == self.size:
                self.epoch += 1
                self.position = 0
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: ``size``, ``seed``, ``shuffle``, ``epoch``, ``position``."""
        return {
            "size": self.size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; the dataset size must be the same."""
        if int(state["size"]) != self.size:
            raise ValueError(
                f"the checkpoint was trained on a dataset of {state['size']} examples, this one "
                f"has {self.size}; resume with the same data"
            )
        position = int(state["position"])
        if not 0 <= position < self.size:
            raise ValueError(f"data-order position {position} out of range [0, {self.size})")
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self.epoch = int(state["epoch"])
        self.position = position
        self._perm, self._perm_epoch = None, -1

    def copy(self) -> DataOrder:
        """An independent order at the same state."""
        other = DataOrder(self.size, self.seed, shuffle=self.shuffle)
        other.load_state_dict(self.state_dict())
        return other
