"""Training: the :class:`Trainer` loop, EMA, checkpoints, precision and multi-process runs.

Not imported by ``import diffusionkit``. Start with::

    from diffusionkit.training import Trainer

    trainer = Trainer(model, "digits", batch_size=128, lr=2e-3, steps=3000, out_dir="runs/digits")
    trainer.train()                      # or trainer.resume().train() after an interruption

Parts: :class:`EMA` (weight averaging with a warm-up), :class:`Precision` (fp32/bf16/fp16),
:class:`WarmupSchedule` (learning rate), :class:`DataOrder` (resumable data order),
:mod:`~diffusionkit.training.checkpoint` (atomic safetensors + JSON checkpoints with a
verified manifest), :mod:`~diffusionkit.training.resume` (what a resume may change),
:mod:`~diffusionkit.training.lock` (one writer per run folder),
:mod:`~diffusionkit.training.memory` (the memory estimate) and
:mod:`~diffusionkit.training.distributed` (``torchrun``).
"""

from diffusionkit.training.checkpoint import (
    Checkpoint,
    CheckpointCorruptError,
    CheckpointWriteError,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from diffusionkit.training.data_order import DataOrder
from diffusionkit.training.distributed import DistributedContext, init_distributed
from diffusionkit.training.ema import EMA
from diffusionkit.training.errors import NonFiniteLossError, TrainingWarning
from diffusionkit.training.lock import RunLock, RunLockedError
from diffusionkit.training.lr import LRDecay, WarmupSchedule
from diffusionkit.training.memory import MemoryEstimate, estimate_training_memory
from diffusionkit.training.metrics import MetricsLog, read_metrics
from diffusionkit.training.precision import (
    Precision,
    autocast,
    default_precision,
    make_grad_scaler,
)
from diffusionkit.training.resume import ResumeMismatchError, ResumeReport
from diffusionkit.training.run_folder import RunFolderError
from diffusionkit.training.trainer import Trainer, TrainResult

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointWriteError",
    "DataOrder",
    "DistributedContext",
    "LRDecay",
    "MemoryEstimate",
    "MetricsLog",
    "NonFiniteLossError",
    "Precision",
    "ResumeMismatchError",
    "ResumeReport",
    "RunFolderError",
    "RunLock",
    "RunLockedError",
    "TrainResult",
    "Trainer",
    "TrainingWarning",
    "WarmupSchedule",
    "autocast",
    "default_precision",
    "estimate_training_memory",
    "find_checkpoint",
    "init_distributed",
    "list_checkpoints",
    "load_checkpoint",
    "make_grad_scaler",
    "read_metrics",
    "save_checkpoint",
    "verify_checkpoint",
]
