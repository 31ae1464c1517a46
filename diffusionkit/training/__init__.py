"""Training: the :class:`Trainer` loop, EMA, checkpoints, precision and multi-process runs.

Not imported by ``import diffusionkit``. Start with::

    from diffusionkit.training import Trainer

    trainer = Trainer(model, "digits", batch_size=128, lr=2e-3, steps=3000, out_dir="runs/digits")
    trainer.train()                      # or trainer.resume().train() after an interruption

Parts: :class:`EMA` (weight averaging with a warm-up), :class:`Precision` (fp32/bf16/fp16),
:class:`WarmupSchedule` (learning rate), :class:`DataOrder` (resumable data order),
:mod:`~diffusionkit.training.checkpoint` (atomic safetensors + JSON checkpoints) and
:mod:`~diffusionkit.training.distributed` (``torchrun``).
"""

from diffusionkit.training.checkpoint import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from diffusionkit.training.data_order import DataOrder
from diffusionkit.training.distributed import DistributedContext, init_distributed
from diffusionkit.training.ema import EMA
from diffusionkit.training.errors import NonFiniteLossError
from diffusionkit.training.lr import LRDecay, WarmupSchedule
from diffusionkit.training.metrics import MetricsLog, read_metrics
from diffusionkit.training.precision import (
    Precision,
    autocast,
    default_precision,
    make_grad_scaler,
)
from diffusionkit.training.trainer import Trainer, TrainResult

__all__ = [
    "EMA",
    "Checkpoint",
    "DataOrder",
    "DistributedContext",
    "LRDecay",
    "MetricsLog",
    "NonFiniteLossError",
    "Precision",
    "TrainResult",
    "Trainer",
    "WarmupSchedule",
    "autocast",
    "default_precision",
    "find_checkpoint",
    "init_distributed",
    "list_checkpoints",
    "load_checkpoint",
    "make_grad_scaler",
    "read_metrics",
    "save_checkpoint",
]
