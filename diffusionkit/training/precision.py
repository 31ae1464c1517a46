"""Numeric precision of the training forward pass: fp32, or bf16/fp16 autocast."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from enum import Enum

import torch

__all__ = ["Precision", "autocast", "default_precision", "make_grad_scaler"]


class Precision(str, Enum):
    """Precision of the forward pass (weights, optimizer state and EMA always stay fp32).

    * ``FP32``: no autocast. The default on CPUs: whether bf16 is faster there depends on the
      CPU in ways its flags do not predict (measured 5-7x slower on one CPU, 0.63-0.71 of the
      fp32 time on another and 1.5x slower on a third with the same ``avx512_bf16`` flag; see
      docs/performance.md), and fp32 gives the same samples from the same seed on every CPU.
    * ``BF16``: ``torch.autocast`` to bfloat16. Same exponent range as fp32, so no loss
      scaling is needed; the default on GPUs that support it.
    * ``FP16``: ``torch.autocast`` to float16 with a dynamic loss scale
      (:class:`torch.amp.GradScaler`), which skips steps whose scaled gradients overflow.
    """

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (``torch.float32`` for ``FP32``)."""
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.value]


def default_precision(device: torch.device | str) -> Precision:
    """A sensible precision for ``device``: bf16 on CUDA GPUs that have it, fp16 on older
    CUDA GPUs, fp32 everywhere else (CPU, MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16
    return Precision.FP32


def autocast(precision: Precision, device: torch.device | str) -> AbstractContextManager[object]:
    """The autocast context for ``precision`` on ``device`` (a no-op for ``FP32``)."""
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=precision.dtype)


def make_grad_scaler(
    precision: Precision, device: torch.device | str
) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for ``FP16``; ``None`` for the other precisions."""
    if precision is not Precision.FP16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)
