"""``Trainer``: the DDPM training loop, with EMA, exact resume and multi-process training.

One optimizer step on a global batch of ``batch_size`` examples:

1. the next ``batch_size`` dataset indices come from :class:`DataOrder` (a seeded permutation
   per epoch), and the batch's timesteps ``t`` and noise ``eps`` come from one seeded
   ``torch.Generator``; every process draws the same global values and takes its slice, so the
   result does not depend on how many processes share the batch. The condition dropout of
   classifier-free guidance is the loss's own (``DenoiseDiffusion.loss(cond_drop_prob=...)``),
   drawn from one generator per example seeded by ``(seed, step, position in the global
   batch)``, so it too is the same however the batch is split;
2. ``grad_accum`` micro-batches run forward (under autocast for bf16/fp16) and backward, each
   example's class label and conditioning image (when the dataset has them and the network
   takes them) passed to the loss;
   under DistributedDataParallel each process handles ``batch_size / (grad_accum * world)``
   examples per micro-batch and gradients are averaged across processes;
3. the loss and gradient norm are checked (NaN/inf stops training before the update), the
   gradient is clipped, the learning rate set from the warm-up schedule, AdamW steps, and the
   EMA of the weights is updated.

Every state that influences the next step (weights, EMA, optimizer, step, data order, random
generators, loss scale) is saved in checkpoints, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffusionkit.data import NO_LABEL, CondItem, ImageDataset, load_dataset
from diffusionkit.diffusion import DenoiseDiffusion
from diffusionkit.limits import LimitError, check_sample_count
from diffusionkit.training.checkpoint import (
    CHECKPOINTS_DIRNAME,
    Checkpoint,
    CheckpointCorruptError,
    CheckpointWriteError,
    find_checkpoint,
    flatten_optimizer_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_aside_newer,
    unflatten_optimizer_state,
    verify_checkpoint,
)
from diffusionkit.training.data_order import DataOrder
from diffusionkit.training.distributed import DistributedContext, init_distributed
from diffusionkit.training.ema import EMA
from diffusionkit.training.errors import NonFiniteLossError, TrainingWarning
from diffusionkit.training.lock import RunLock, RunLockedError
from diffusionkit.training.lr import LRDecay, WarmupSchedule
from diffusionkit.training.memory import (
    MemoryEstimate,
    dataset_bytes,
    estimate_training_memory,
    format_bytes,
    physical_memory,
)
from diffusionkit.training.metrics import MetricsLog
from diffusionkit.training.precision import (
    Precision,
    autocast,
    default_precision,
    make_grad_scaler,
)
from diffusionkit.training.resume import (
    FIXED_SETTINGS,
    ResumeMismatchError,
    ResumeReport,
    apply_optimizer_settings,
    changed_settings,
    check_trainer_state,
    model_differences,
)
from diffusionkit.training.run_folder import check_run_folder
from diffusionkit.utils.images import FrameRecorder, save_gif, save_grid

__all__ = ["TrainResult", "Trainer"]

#: files and folders a run folder gets (beside what ``save_pretrained`` writes)
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIRNAME = "samples"
FINAL_SAMPLES = "samples.png"
FINAL_GIF = "denoise.gif"

_MIX = 0x9E3779B97F4A7C15
_STEP_MIX = 0xBF58476D1CE4E5B9
_INDEX_MIX = 0x94D049BB133111EB
_MASK63 = (1 << 63) - 1


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did.

    Attributes:
        steps: optimizer steps completed in total (including those before a resume).
        loss: mean loss of the last logged interval (``nan`` if nothing was logged).
        seconds: wall time of this call.
        checkpoint: the last checkpoint folder written, if any.
        export_dir: the folder ``save_pretrained`` wrote (the run folder), if any.
        samples: the final sample grid, if written.
        gif: the final denoising GIF, if written.
    """

    steps: int
    loss: float
    seconds: float
    checkpoint: Path | None = None
    export_dir: Path | None = None
    samples: Path | None = None
    gif: Path | None = None


class _IndexPlan:
    """The per-process index lists of the coming micro-batches, for a ``DataLoader``.

    Replays :meth:`DataOrder.take` from a copy of the trainer's order, so the loader (and its
    worker processes) produce exactly the batches the trainer's own order advances through.
    """

    def __init__(
        self, order: DataOrder, batch_size: int, grad_accum: int, rank: int, world: int
    ) -> None:
        self.order = order.copy()
        self.batch_size = batch_size
        self.micro = batch_size // grad_accum
        self.per_rank = self.micro // world
        self.grad_accum = grad_accum
        self.rank = rank

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            indices = self.order.take(self.batch_size)
            for a in range(self.grad_accum):
                start = a * self.micro + self.rank * self.per_rank
                yield indices[start : start + self.per_rank].tolist()


def _describe(diffusion: DenoiseDiffusion) -> dict[str, Any]:
    """A JSON description of the model's parts, stored in checkpoints for reference."""

    def part(obj: object) -> dict[str, Any]:
        config = getattr(obj, "config", None)
        out: dict[str, Any] = {"class": type(obj).__name__, "module": type(obj).__module__}
        if callable(config):
            try:
                value = config()
                json.dumps(value)
                out["config"] = value
            except (TypeError, ValueError):
                out["config"] = repr(value)
        return out

    weighting = getattr(diffusion, "weighting", None)
    return {
        "net": part(diffusion.net),
        "schedule": part(diffusion.schedule),
        "sampler": part(diffusion.sampler),
        "prediction": diffusion.prediction.value,
        "weighting": None if weighting is None else part(weighting),
        "learned_variance": bool(getattr(diffusion, "learned_variance", False)),
        "vlb_weight": getattr(diffusion, "vlb_weight", None),
    }


class Trainer:
    """Train a :class:`~diffusionkit.DenoiseDiffusion` on images.

    Works unchanged under ``torchrun --nproc_per_node=N`` (see
    :mod:`diffusionkit.training.distributed`): the global batch ``batch_size`` is split over the
    processes, gradients are averaged by DistributedDataParallel, and only rank 0 writes files.

    What reaches the loss: every example's image; its class label when the network is
    class-conditional (``num_classes``; the dataset must then be labelled); its conditioning
    image when the dataset has them (``cond_channels``; the network must take as many). A
    network that takes a condition the data lacks, or the reverse, is refused when the trainer
    is built, with both named.

    Args:
        diffusion: the model to train (moved to ``device``).
        dataset: anything :func:`diffusionkit.data.load_dataset` accepts: a
            ``torch.utils.data.Dataset`` whose items are an image ``(C, H, W)``,
            ``(image, label)``, ``(image, cond)`` or a mapping with the keys ``"image"``,
            ``"label"``, ``"cond"`` (see :class:`~diffusionkit.data.DatasetAdapter`), a
            ``(N, C, H, W)`` tensor or array in ``[-1, 1]``, a built-in name, a folder path, or
            an :class:`~diffusionkit.data.ImageDataset` such as
            :class:`~diffusionkit.data.PairedFolderDataset` (images with conditioning images).
        batch_size: examples per optimizer step (the global batch, over all processes and
            accumulation steps); must be divisible by ``grad_accum * world_size``.
        lr: peak learning rate of AdamW.
        steps: total optimizer steps of the run (a resumed run continues up to it).
        out_dir: the run folder for checkpoints, samples, metrics and the exported model;
            ``None`` writes nothing.
        warmup_steps: steps of linear learning-rate warm-up.
        lr_decay: learning rate after warm-up: ``"constant"`` or ``"cosine"`` (to 0 at ``steps``).
        weight_decay: AdamW's decoupled weight decay.
        adam_betas: AdamW's ``(beta1, beta2)``.
        grad_clip: clip the global gradient norm to this (``None``: no clipping).
        grad_accum: micro-batches per optimizer step (gradient accumulation).
        ema_decay: target decay of the weights' EMA (see :class:`EMA`).
        ema_warmup: warm the EMA decay up as ``min(decay, (1 + n) / (10 + n))``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :class:`Precision`); ``None`` picks
            :func:`default_precision` for the device (fp32 on CPUs).
        device: where to train; ``None``: ``cuda:<LOCAL_RANK>`` if available, else the CPU.
        seed: seed of the data order, of ``t``/noise, and of the network's own randomness.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        keep_checkpoints: keep only the newest this many checkpoints (``None``: all).
        sample_every: write a sample grid every this many steps (0: only at the end).
        sample_count: images per sample grid.
        sample_steps: reverse steps for the grids (``None``: all ``T``).
        sample_seed: seed of the grids (fixed, so successive grids are comparable).
        log_every: steps between metrics records and progress-bar updates.
        cond_drop_prob: for conditional models, the probability per example of replacing its
            condition (label and conditioning image, jointly) by the null one, which trains
            the unconditional model classifier-free guidance needs (Ho & Salimans 2022 use
            0.1 to 0.2); passed to ``DenoiseDiffusion.loss``, whose dropout it is. May change
            on resume.
        label_dropout: the former name of ``cond_drop_prob`` (deprecated).
        num_workers: ``DataLoader`` worker processes for reading examples (0: in-process).
        progress: show a tqdm progress bar (rank 0 only).
        compile: compile the network with ``torch.compile`` (in place, with
            ``nn.Module.compile``: parameters and state-dict keys stay the same); a mapping gives
            ``torch.compile``'s keyword arguments, e.g. ``{"mode": "max-autotune"}``. Opt-in:
            compiling takes a minute or more on a CPU before the first step, and what it gains
            depends on the network and the hardware (see the performance page of the docs).
        export: at the end, write the model with its EMA weights to ``out_dir`` with
            ``save_pretrained``, so ``DenoiseDiffusion.from_pretrained(out_dir)`` loads it.

    Example:
        >>> import torch
        >>> from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
        >>> from diffusionkit.training import Trainer
        >>> net = UNet(in_channels=1, dim=8, dim_mults=(1,), attns=(False,), groups=4)
        >>> model = DenoiseDiffusion(net, LinearSchedule(timesteps=50))
        >>> trainer = Trainer(model, torch.rand(16, 1, 8, 8) * 2 - 1, batch_size=8, lr=1e-3,
        ...                   steps=2, progress=False)
        >>> trainer.train().steps
        2
    """

    def __init__(
        self,
        diffusion: DenoiseDiffusion,
        dataset: Dataset[Any] | Tensor | np.ndarray | str | os.PathLike[str],
        *,
        batch_size: int,
        lr: float,
        steps: int,
        out_dir: str | os.PathLike[str] | None = None,
        warmup_steps: int = 0,
        lr_decay: LRDecay | str = LRDecay.CONSTANT,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        grad_clip: float | None = 1.0,
        grad_accum: int = 1,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        precision: Precision | str | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        checkpoint_every: int = 1000,
        keep_checkpoints: int | None = 3,
        sample_every: int = 1000,
        sample_count: int = 64,
        sample_steps: int | None = None,
        sample_seed: int = 0,
        log_every: int = 10,
        cond_drop_prob: float = 0.0,
        label_dropout: float | None = None,
        num_workers: int = 0,
        progress: bool = True,
        compile: bool | Mapping[str, Any] = False,
        export: bool = True,
    ) -> None:
        if not isinstance(diffusion, DenoiseDiffusion):
            raise TypeError(f"diffusion must be a DenoiseDiffusion, got {type(diffusion).__name__}")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("steps", steps, 0),
            ("warmup_steps", warmup_steps, 0),
            ("grad_accum", grad_accum, 1),
            ("checkpoint_every", checkpoint_every, 0),
            ("sample_every", sample_every, 0),
            ("sample_count", sample_count, 1),
            ("log_every", log_every, 1),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        if label_dropout is not None:
            if cond_drop_prob not in (0.0, label_dropout):
                raise ValueError(
                    f"label_dropout ({label_dropout}) is the former name of cond_drop_prob "
                    f"({cond_drop_prob}): pass only cond_drop_prob"
                )
            warnings.warn(
                "Trainer(label_dropout=...) is now cond_drop_prob=..., the loss's own condition "
                "dropout (it drops conditioning images too)",
                FutureWarning,
                stacklevel=2,
            )
            cond_drop_prob = label_dropout
        if (
            isinstance(cond_drop_prob, bool)
            or not isinstance(cond_drop_prob, int | float)
            or not 0.0 <= cond_drop_prob < 1.0
        ):
            raise ValueError(f"cond_drop_prob must be a number in [0, 1), got {cond_drop_prob!r}")
        check_sample_count(sample_count, "sample_count")
        if not isinstance(compile, bool | Mapping):
            raise TypeError(
                f"compile must be True, False or a mapping of torch.compile options, got {compile!r}"
            )
        if compile and not hasattr(nn.Module, "compile"):
            raise RuntimeError(f"compile=True needs torch >= 2.2, this is {torch.__version__}")
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or None, got {keep_checkpoints}")
        if sample_steps is not None and not 1 <= sample_steps <= diffusion.timesteps:
            raise ValueError(
                f"sample_steps must lie in [1, {diffusion.timesteps}] (the model's T), got "
                f"{sample_steps}"
            )

        self.batch_size = batch_size
        self.lr = float(lr)
        self.steps = steps
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.warmup_steps = warmup_steps
        self.lr_decay = LRDecay(lr_decay)
        self.weight_decay = float(weight_decay)
        self.adam_betas = (float(adam_betas[0]), float(adam_betas[1]))
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.grad_accum = grad_accum
        self.ema_decay = float(ema_decay)
        self.ema_warmup = bool(ema_warmup)
        self.seed = int(seed)
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.sample_every = sample_every
        self.sample_count = sample_count
        self.sample_steps = sample_steps
        self.sample_seed = int(sample_seed)
        self.log_every = log_every
        self.cond_drop_prob = float(cond_drop_prob)
        self.num_workers = num_workers
        self.progress = bool(progress)
        self.export = bool(export)

        self.dist: DistributedContext = init_distributed(device)
        self.device = self.dist.device
        world = self.dist.world_size
        if batch_size % (grad_accum * world):
            raise ValueError(
                f"batch_size {batch_size} must be divisible by grad_accum ({grad_accum}) x the "
                f"number of processes ({world}), so that every process gets an equal share"
            )
        self.precision = (
            default_precision(self.device) if precision is None else Precision(precision)
        )

        self.dataset: ImageDataset = self._as_dataset(dataset, diffusion)
        channels, (height, width) = self.dataset.channels, self.dataset.image_size
        self.image_shape = (channels, height, width)
        try:
            diffusion._check_shape((1, *self.image_shape))
        except ValueError as error:
            raise ValueError(
                f"the model cannot take the dataset's {channels}x{height}x{width} images: {error}"
            ) from None
        #: the estimated memory of one training process, checked before anything of it is
        #: allocated (see :mod:`diffusionkit.training.memory`)
        self.memory: MemoryEstimate = estimate_training_memory(
            diffusion.net,
            self.image_shape,
            batch_size // (grad_accum * world),
            data=dataset_bytes(self.dataset),
        )
        self._check_memory()

        #: whether labels reach the loss (a class-conditional network)
        self.class_conditional = getattr(diffusion.net, "num_classes", None) is not None
        self._check_conditioning(diffusion.net)
        self.diffusion = diffusion.to(self.device)
        self.ema = EMA(diffusion.net, self.ema_decay, warmup=self.ema_warmup)
        if compile:  # after the EMA's copy: the EMA holds plain, uncompiled weights
            diffusion.net.compile(**({} if compile is True else dict(compile)))
        self.optimizer = torch.optim.AdamW(
            diffusion.parameters(),
            lr=self.lr,
            betas=self.adam_betas,
            weight_decay=self.weight_decay,
        )
        self.lr_schedule = WarmupSchedule(warmup_steps, steps, self.lr_decay)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.model: nn.Module = diffusion
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(diffusion, device_ids=ids)

        self.step = 0
        self.order = DataOrder(len(self.dataset), seed=self.seed)
        # t and noise of every global batch; seeded apart from the data order
        self.generator = torch.Generator().manual_seed((self.seed * _MIX + 1) & _MASK63)
        # the network's own randomness (dropout) differs per process
        torch.manual_seed((self.seed * _MIX + 2 + self.dist.rank) & _MASK63)
        self.last_checkpoint: Path | None = None
        self._resumed_from: Path | None = None
        #: what the last :meth:`resume` did (checkpoint, verification, changed settings)
        self.resume_report: ResumeReport | None = None
        self._claimed = False  # the run folder was checked and belongs to this run
        self._log = (
            MetricsLog(self.out_dir / METRICS_FILE)
            if self.out_dir is not None and self.dist.is_main
            else None
        )

    # ------------------------------------------------------------------ set-up
    def _check_memory(self) -> None:
        total = physical_memory(self.device)
        if total is None or self.memory.total <= total:
            return
        raise LimitError(
            f"this run needs {self.memory.describe()}, more than the {format_bytes(total)} of "
            f"memory on {self.device}; lower batch_size (or raise grad_accum), the image size "
            "or the network's width"
        )

    def _check_conditioning(self, net: nn.Module) -> None:
        """Refuse a network and data whose conditions do not match, naming both."""
        data, name = self.dataset, type(self.dataset).__name__
        if self.class_conditional:
            classes = net.num_classes
            # a wrapped Dataset may not know its number of classes: its first label tells
            # whether it has labels (the loss checks every batch's against the network's)
            if data.num_classes is None and int(data[0][1]) == NO_LABEL:
                raise ValueError(
                    f"the network is class-conditional (num_classes={classes}), but the dataset "
                    f"({name}) has no labels: give it labels (a folder with one subfolder per "
                    "class, TensorImageDataset(images, labels), (image, label) items), or build "
                    "the network without num_classes"
                )
            if (
                isinstance(classes, int)
                and data.num_classes is not None
                and data.num_classes > classes
            ):
                raise ValueError(
                    f"the dataset ({name}) has {data.num_classes} classes, more than the "
                    f"network's num_classes={classes}: build it with num_classes="
                    f"{data.num_classes}"
                )
        takes = getattr(net, "cond_channels", None)
        if isinstance(takes, int) and takes != data.cond_channels:
            if data.cond_channels == 0:
                raise ValueError(
                    f"the network takes conditioning images (cond_channels={takes}), but the "
                    f"dataset ({name}) has none: give it pairs (PairedFolderDataset, "
                    "TensorImageDataset(images, cond=...), (image, cond) items), or build the "
                    "network without cond_channels"
                )
            takes_what = "none (cond_channels=0)" if takes == 0 else f"cond_channels={takes}"
            raise ValueError(
                f"the dataset ({name}) has conditioning images of {data.cond_channels} "
                f"channel{'s' if data.cond_channels > 1 else ''}, but the network takes "
                f"{takes_what}: build it with cond_channels={data.cond_channels}"
            )
        if self.cond_drop_prob > 0 and not (self.class_conditional or data.cond_channels):
            raise ValueError(
                f"cond_drop_prob={self.cond_drop_prob} drops conditions, but this model has none "
                "(neither a class-conditional network nor conditioning images): leave it at 0"
            )

    @staticmethod
    def _as_dataset(dataset: Any, diffusion: DenoiseDiffusion) -> ImageDataset:
        if isinstance(dataset, ImageDataset):
            return load_dataset(dataset)
        channels = getattr(diffusion.net, "in_channels", None)
        if isinstance(dataset, str | os.PathLike):
            return load_dataset(dataset, channels=channels)
        return load_dataset(dataset)

    @property
    def _writes(self) -> bool:
        return self.out_dir is not None and self.dist.is_main

    def config(self) -> dict[str, Any]:
        """The constructor arguments other than ``diffusion``, ``dataset`` and ``device``."""
        return {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "steps": self.steps,
            "out_dir": None if self.out_dir is None else str(self.out_dir),
            "warmup_steps": self.warmup_steps,
            "lr_decay": self.lr_decay.value,
            "weight_decay": self.weight_decay,
            "adam_betas": list(self.adam_betas),
            "grad_clip": self.grad_clip,
            "grad_accum": self.grad_accum,
            "ema_decay": self.ema_decay,
            "ema_warmup": self.ema_warmup,
            "precision": self.precision.value,
            "seed": self.seed,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "sample_every": self.sample_every,
            "sample_count": self.sample_count,
            "sample_steps": self.sample_steps,
            "sample_seed": self.sample_seed,
            "log_every": self.log_every,
            "cond_drop_prob": self.cond_drop_prob,
            "num_workers": self.num_workers,
            "progress": self.progress,
            "export": self.export,
        }

    @property
    def checkpoint_dir(self) -> Path | None:
        """``out_dir/checkpoints``, or ``None`` without an ``out_dir``."""
        return None if self.out_dir is None else self.out_dir / CHECKPOINTS_DIRNAME

    # -------------------------------------------------------------- checkpoints
    def state(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """Everything a resume needs: ``(tensors by file stem, JSON state)``."""
        opt_tensors, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
        rng = {"torch_cpu": torch.get_rng_state(), "trainer": self.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda.{i}"] = s
        tensors = {
            "model": self.diffusion.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": opt_tensors,
            "rng": rng,
        }
        meta = {
            "world_size": self.dist.world_size,
            "data_order": self.order.state_dict(),
            "lr_schedule": {"base_lr": self.lr, **self.lr_schedule.config()},
            "optimizer": opt_meta,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "ema": {**self.ema.config(), "num_updates": self.ema.num_updates},
            "model": _describe(self.diffusion),
            "trainer": self.config(),
            "image_shape": list(self.image_shape),
            "data": {
                "size": len(self.dataset),
                "num_classes": self.dataset.num_classes,
                "cond_channels": self.dataset.cond_channels,
            },
        }
        return tensors, meta

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current state to ``out_dir/checkpoints`` (rank 0 only).

        Returns:
            The checkpoint folder on rank 0; ``None`` on other ranks or without ``out_dir``.

        Raises:
            CheckpointWriteError: the checkpoint could not be written (a full disk); the
                message names the file and the newest checkpoint that was kept.
        """
        if not self._writes:
            return None
        assert self.checkpoint_dir is not None
        with self._run_folder():
            tensors, meta = self.state()
            try:
                self.last_checkpoint = save_checkpoint(
                    self.checkpoint_dir, self.step, tensors, meta, keep=self.keep_checkpoints
                )
            except CheckpointWriteError as error:
                kept = self.last_checkpoint
                where = (
                    f"the newest checkpoint kept is {kept}: resume from it once the cause is fixed"
                    if kept is not None
                    else "no checkpoint of this run was written before it"
                )
                raise CheckpointWriteError(
                    error.errno, f"{error}; {where}", path=error.path, file=error.file
                ) from None
        return self.last_checkpoint

    # -------------------------------------------------------------- run folder
    @contextlib.contextmanager
    def _run_folder(self, *, collective: bool = False) -> Iterator[None]:
        """Hold the run folder's lock for the block (rank 0, with an ``out_dir``; see
        :mod:`diffusionkit.training.lock`).

        Args:
            collective: every process calls this together; the other ranks learn whether
                rank 0 got the lock, so that all of them stop (not only rank 0) if it did not.
        """
        lock = RunLock(self.out_dir) if self._writes and self.out_dir is not None else None
        try:
            if lock is not None:
                lock.acquire()
                note = lock.stale_note()
                if note:
                    warnings.warn(note, TrainingWarning, stacklevel=4)
        except BaseException:
            if collective:
                self._agree(False)
            raise
        try:
            if collective and not self._agree(True):
                raise RunLockedError(
                    f"rank 0 could not lock the run folder {self.out_dir}; see its message"
                )
            yield
        finally:
            if lock is not None:
                lock.release()

    def _agree(self, ok: bool) -> bool:
        """Whether every process says ``ok`` (one all-reduce; ``ok`` itself for one process)."""
        if not self.dist.enabled:
            return ok
        flag = torch.tensor(1.0 if ok else 0.0, device=self.device)
        return bool(self.dist.mean(flag).item() == 1.0)

    def claim_out_dir(self) -> None:
        """Check that ``out_dir`` may be written by this run, before anything is written.

        A run starting at step 0 needs a new or empty folder; a resumed run's folder may hold
        only the run's own files. :meth:`train` calls this; call it earlier to fail before
        doing other work. A no-op without an ``out_dir`` and on ranks other than 0.

        Raises:
            RunFolderError: the folder holds another run, or files that are not a run's.
            RunLockedError: another process is training in the folder.
        """
        if not self._writes or self._claimed:
            return
        assert self.out_dir is not None
        with self._run_folder():
            check_run_folder(self.out_dir, new_run=self._resumed_from is None and self.step == 0)
            self._claimed = True

    def resume(
        self, path: str | os.PathLike[str] | None = None, *, fallback: bool = False
    ) -> Trainer:
        """Restore the state of a checkpoint, so that :meth:`train` continues from it exactly.

        A run interrupted after step ``k`` and resumed from its step-``k`` checkpoint ends with
        the same weights, bit for bit on the CPU, as a run that was never interrupted. Resuming
        with a different number of processes continues the same data order and randomness;
        only the floating-point summation order differs.

        The checkpoint's files are verified against its manifest first. The model, the
        objective, the data and the seed must be those of the checkpoint (see
        :mod:`diffusionkit.training.resume`); the other settings of this trainer take effect
        (a new weight decay is written into the optimizer) and are listed in
        :attr:`resume_report`. Resuming this run from an older checkpoint moves its newer
        ones to ``checkpoints/abandoned/``, so they do not win the next lookup.

        Args:
            path: a checkpoint folder, or a run folder / folder of checkpoints (the newest is
                taken); ``None`` means this trainer's ``out_dir``.
            fallback: if the newest checkpoint is damaged, resume from the newest valid one
                (named in a :class:`TrainingWarning`) instead of raising.

        Returns:
            ``self``.

        Raises:
            CheckpointCorruptError: the checkpoint (the newest, without ``fallback``) is
                incomplete or damaged; the message lists the valid ones.
            ResumeMismatchError: it does not fit this model, data or seed; the message names
                every difference.
        """
        if path is None:
            if self.out_dir is None:
                raise ValueError("resume() needs a path when the trainer has no out_dir")
            path = self.out_dir
        with self._run_folder(collective=True):
            ckpt = load_checkpoint(path, map_location="cpu", fallback=fallback)
            self._check_fits(ckpt.state, set(ckpt.tensors), ckpt.path)
            self._restore(ckpt)
            self._resumed_from = ckpt.path
            self.last_checkpoint = ckpt.path
            report = ResumeReport(ckpt.path, ckpt.step, ckpt.verified, skipped=ckpt.skipped)
            saved = ckpt.state.get("trainer")
            if isinstance(saved, Mapping):
                report.changed = changed_settings(saved, self.config())
            if self._writes:
                assert self.checkpoint_dir is not None
                self.claim_out_dir()
                report.set_aside = set_aside_newer(self.checkpoint_dir, ckpt.step)
                if self._log is not None:
                    self._log.truncate_after(self.step)
        self.resume_report = report
        for note in report.notes():
            warnings.warn(note, TrainingWarning, stacklevel=2)
        return self

    def _check_fits(self, state: Mapping[str, Any], stems: set[str], where: Path) -> None:
        """Refuse a checkpoint that does not continue this trainer's problem, naming each
        difference (see :mod:`diffusionkit.training.resume`)."""
        check_trainer_state(state, stems, where)
        differences = model_differences(state.get("model") or {}, _describe(self.diffusion))
        saved_shape = state.get("image_shape")
        if saved_shape is not None and list(saved_shape) != list(self.image_shape):
            differences.append(
                f"image shape (C, H, W): {tuple(saved_shape)} in the checkpoint, "
                f"{self.image_shape} here"
            )
        size = state["data_order"]["size"]
        if size != len(self.dataset):
            differences.append(
                f"dataset size: {size} examples in the checkpoint, {len(self.dataset)} here"
            )
        data = state.get("data") or {}
        if "num_classes" in data and data["num_classes"] != self.dataset.num_classes:
            differences.append(
                f"dataset classes: {data['num_classes']} in the checkpoint, "
                f"{self.dataset.num_classes} here"
            )
        if data.get("cond_channels", 0) != self.dataset.cond_channels:
            differences.append(
                f"conditioning image channels of the dataset: {data.get('cond_channels', 0)} in "
                f"the checkpoint, {self.dataset.cond_channels} here"
            )
        saved = state.get("trainer") or {}
        for key in FIXED_SETTINGS:
            if key in saved and saved[key] != getattr(self, key):
                differences.append(
                    f"{key}: {saved[key]!r} in the checkpoint, {getattr(self, key)!r} here"
                )
        if differences:
            raise ResumeMismatchError(
                f"the checkpoint {where} does not fit this model and data: "
                + "; ".join(differences)
                + ". These settings define what is trained and cannot change when a run is "
                "resumed: resume with the checkpoint's settings, or start a new run in another "
                "folder",
                differences,
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        """Load a checked checkpoint's state into the model, EMA, optimizer and generators."""
        tensors, meta, step = ckpt.tensors, ckpt.state, ckpt.step
        try:
            self.diffusion.net.load_state_dict(tensors["model"], strict=True)
            self.ema.load_state_dict(dict(tensors["ema"]), int(meta["ema"]["num_updates"]))
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ValueError(
                f"the checkpoint {ckpt.path} does not fit this model's architecture: {first}"
            ) from None
        wanted = [
            {k: v for k, v in group.items() if k != "params"}
            for group in self.optimizer.param_groups
        ]
        optimizer_state = unflatten_optimizer_state(
            tensors["optimizer"], meta["optimizer"], self.optimizer.state_dict()
        )
        self.optimizer.load_state_dict(optimizer_state)
        apply_optimizer_settings(self.optimizer, wanted)
        self.order.load_state_dict(meta["data_order"])
        scaler_state = meta.get("grad_scaler")
        if self.scaler is not None and scaler_state:
            self.scaler.load_state_dict(scaler_state)
        rng = tensors["rng"]
        if "trainer" in rng:
            self.generator.set_state(rng["trainer"])
        if self.dist.is_main and "torch_cpu" in rng:
            torch.set_rng_state(rng["torch_cpu"])
        else:  # other processes: a fresh stream per (seed, rank, step)
            torch.manual_seed((self.seed * _MIX + 3 + self.dist.rank * 7919 + step) & _MASK63)
        cuda_states = [rng[f"cuda.{i}"] for i in range(len(rng)) if f"cuda.{i}" in rng]
        if cuda_states and self.device.type == "cuda" and self.dist.world_size == 1:
            torch.cuda.set_rng_state_all(cuda_states)
        self.step = step

    # ------------------------------------------------------------------ sampling
    def ema_diffusion(self) -> DenoiseDiffusion:
        """The model around the EMA weights (the weights sampling and export use by default):
        the same schedule, sampler, prediction, weighting and x0 processing."""
        return self.diffusion.with_net(self.ema.module)

    def sample(
        self,
        count: int | None = None,
        *,
        seed: int | None = None,
        steps: int | None = None,
        use_ema: bool = True,
        gif: str | os.PathLike[str] | None = None,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Draw samples from the model being trained.

        A conditional model samples with conditions by default, so that grids show what it
        learned: a class-conditional one cycles through the classes (sample ``i`` has label
        ``i % num_classes``), an image-conditional one takes the conditioning images of
        ``count`` examples spread evenly over the dataset (the same ones every time).

        Args:
            count: number of images (default ``sample_count``).
            seed: generator seed (default ``sample_seed``): the same seed gives the same noise.
            steps: reverse steps (default ``sample_steps``, else all ``T``).
            use_ema: sample with the EMA weights (default) or the raw trained weights.
            gif: also write a denoising GIF of the chain to this file.
            labels: class labels ``(count,)`` (or one int) instead of the default cycle.
            cond: conditioning images ``(count, C_cond, H, W)`` instead of the dataset's.
            guidance_scale: classifier-free guidance scale (``None``: plain conditional).

        Returns:
            ``(count, C, H, W)`` samples in ``[-1, 1]`` on the CPU.
        """
        count = self.sample_count if count is None else count
        seed = self.sample_seed if seed is None else seed
        steps = self.sample_steps if steps is None else steps
        model = self.ema_diffusion() if use_ema else self.diffusion
        generator = torch.Generator().manual_seed(seed)
        chain = steps or model.timesteps
        nrow = self._grid_columns(count)
        recorder = FrameRecorder(chain, nrow=nrow) if gif is not None else None
        if labels is None and self.class_conditional:
            labels = self.sample_labels(count)
        if cond is None and self.dataset.cond_channels:
            cond = self.sample_conds(count)
        samples = model.reverse_sample(
            (count, *self.image_shape),
            generator=generator,
            steps=steps,
            progress=False,
            clip=True,
            callback=recorder,
            labels=labels,
            cond=cond,
            guidance_scale=guidance_scale,
        )
        if recorder is not None and gif is not None:
            save_gif(recorder.frames, gif, scale=self._display_scale())
        return samples.cpu()

    def sample_labels(self, count: int) -> Tensor:
        """``(count,)`` int64: ``i % num_classes``, the labels sample grids cycle through."""
        return torch.arange(count) % self._classes()

    def _classes(self) -> int:
        """The number of classes samples cycle through: the data's (or, when a wrapped
        dataset does not know it, the network's)."""
        classes = self.dataset.num_classes or getattr(self.diffusion.net, "num_classes", None)
        return int(classes) if isinstance(classes, int) and classes > 0 else 1

    def sample_conds(self, count: int) -> Tensor:
        """``(count, C_cond, H, W)``: the conditioning images of ``count`` examples spread
        evenly over the dataset (the first, the last, and evenly between), for sample grids."""
        picks = torch.linspace(0, len(self.dataset) - 1, count).round().long().tolist()
        return torch.stack([cast(CondItem, self.dataset[i])[2] for i in picks])

    def _grid_columns(self, count: int) -> int:
        """Columns of a sample grid: one per class for class-conditional models (their
        samples cycle through the classes), else a square."""
        if self.class_conditional:
            k = self._classes()
            if 1 < k <= count:
                return k
        return max(1, round(math.sqrt(count)))

    def _display_scale(self) -> int:
        return max(1, 64 // max(self.image_shape[1:]))

    def _write_grid(self, path: Path, gif: Path | None = None) -> Path:
        samples = self.sample(gif=gif)
        nrow = self._grid_columns(samples.shape[0])
        return save_grid(samples, path, nrow=nrow, scale=self._display_scale())

    # ------------------------------------------------------------------ training
    def _loader(self) -> Iterator[Sequence[Tensor]]:
        plan = _IndexPlan(
            self.order, self.batch_size, self.grad_accum, self.dist.rank, self.dist.world_size
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # its own generator: creating the iterator must not draw from the global RNG,
            # whose saved state drives dropout after a resume
            generator=torch.Generator().manual_seed(self.seed),
        )
        return iter(loader)

    def _drop_generators(self, step: int, part: slice) -> list[torch.Generator]:
        """One generator per example of ``part`` of the global batch of ``step``, seeded by
        ``(seed, step, position)``: the loss draws each example's condition dropout from its
        own, so the drops do not depend on how processes and micro-batches split the batch,
        and a resumed run draws the same ones (nothing to save)."""
        base = (self.seed * _MIX + 4 + step * _STEP_MIX) & _MASK63
        return [
            torch.Generator().manual_seed((base + i * _INDEX_MIX) & _MASK63)
            for i in range(part.start, part.stop)
        ]

    def _train_step(self, batches: Iterator[Sequence[Tensor]]) -> tuple[float, float]:
        """One optimizer step; returns ``(mean loss over the global batch, gradient norm)``."""
        step = self.step
        self.order.take(self.batch_size)  # advance in lockstep with the loader's copy
        n = self.batch_size
        t_all = torch.randint(0, self.diffusion.timesteps, (n,), generator=self.generator)
        noise_all = torch.randn((n, *self.image_shape), generator=self.generator)
        micro = n // self.grad_accum
        per_rank = micro // self.dist.world_size
        dev = self.device
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev)
        for a in range(self.grad_accum):
            batch = next(batches)  # (images, labels) or (images, labels, conds)
            images = batch[0]
            start = a * micro + self.dist.rank * per_rank
            part = slice(start, start + per_rank)
            kwargs: dict[str, Any] = {
                "t": t_all[part].to(dev, non_blocking=True),
                "noise": noise_all[part].to(dev, non_blocking=True),
            }
            if self.class_conditional:
                kwargs["labels"] = batch[1].to(dev, non_blocking=True)
            if len(batch) > 2:
                kwargs["cond"] = batch[2].to(dev, non_blocking=True)
            if self.cond_drop_prob > 0:
                kwargs["cond_drop_prob"] = self.cond_drop_prob
                kwargs["generator"] = self._drop_generators(step, part)
            last = a == self.grad_accum - 1
            sync = (
                contextlib.nullcontext()
                if last or not isinstance(self.model, DistributedDataParallel)
                else self.model.no_sync()
            )
            with sync:
                with autocast(self.precision, dev):
                    loss = self.model(images.to(dev, non_blocking=True), **kwargs)
                scaled = loss / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            loss_sum += loss.detach().float()
        mean_loss = float(self.dist.mean(loss_sum / self.grad_accum).item())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(
                self.diffusion.parameters(),
                self.grad_clip if self.grad_clip is not None else math.inf,
            )
        )
        # fp16: an overflowing gradient is the loss scaler's to handle (it skips the step)
        bad_grad = self.scaler is None and not math.isfinite(grad_norm)
        if not math.isfinite(mean_loss) or bad_grad:
            self._stop_non_finite(step, mean_loss, grad_norm)
        factor = self.lr_schedule.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * factor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.diffusion.net)
        self.step += 1
        return mean_loss, grad_norm

    def _stop_non_finite(self, step: int, loss: float, grad_norm: float) -> None:
        what = (
            f"the loss is {loss}"
            if not math.isfinite(loss)
            else f"the gradient norm is {grad_norm}"
        )
        kept, where = self._last_good_checkpoint()
        advice = "a lower learning rate or gradient clipping"
        if self.precision is not Precision.FP32:
            advice += f", or precision fp32 instead of {self.precision.value}"
        message = (
            f"training stopped at step {step}: {what}. The bad update was not applied and no "
            f"checkpoint was written after it; {where}. Try {advice}."
        )
        raise NonFiniteLossError(message, step=step, checkpoint=None if kept is None else str(kept))

    def _last_good_checkpoint(self) -> tuple[Path | None, str]:
        """The newest checkpoint that verifies, and a sentence about it for a message."""
        kept = self.last_checkpoint
        if kept is None:
            return None, "no checkpoint had been written yet"
        if not self._writes:  # rank 0 verifies it and says so
            return kept, f"the last checkpoint is {kept}"
        try:
            verify_checkpoint(kept)
            return kept, f"the last good checkpoint is {kept} (resume from it)"
        except CheckpointCorruptError as error:
            damaged = f"the last checkpoint written, {kept}, is damaged ({error.problem})"
        except OSError as error:
            damaged = f"the last checkpoint written, {kept}, cannot be read ({error})"
        assert self.checkpoint_dir is not None
        try:
            valid = find_checkpoint(self.checkpoint_dir, fallback=True)
        except (OSError, CheckpointCorruptError):
            return None, f"{damaged}, and no valid checkpoint is left"
        return valid, f"{damaged}; the newest valid one is {valid} (resume from it)"

    def train(self) -> TrainResult:
        """Run (or continue) training up to ``steps``, then write the final checkpoint, the
        exported model, a sample grid and a denoising GIF (with an ``out_dir``).

        Raises:
            NonFiniteLossError: the loss or gradients became NaN/inf (message names the step
                and the last good checkpoint).
            RunLockedError: another process is training in ``out_dir``.
            RunFolderError: ``out_dir`` holds another run or files that are not a run's.
        """
        with self._run_folder(collective=True):
            self.claim_out_dir()
            return self._train()

    def _train(self) -> TrainResult:
        started = time.perf_counter()
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc="training",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.progress and self.dist.is_main),
        )
        losses: list[float] = []
        norms: list[float] = []
        last_loss = math.nan
        step_seconds, interval_steps = 0.0, 0  # time in training steps only, for throughput
        self.diffusion.train()
        batches = self._loader() if self.step < self.steps else iter(())
        try:
            while self.step < self.steps:
                tic = time.perf_counter()
                loss, norm = self._train_step(batches)
                step_seconds += time.perf_counter() - tic
                losses.append(loss)
                norms.append(norm)
                interval_steps += 1
                bar.update(1)
                if self.step % self.log_every == 0 or self.step == self.steps:
                    last_loss = sum(losses) / len(losses)
                    record = {
                        "step": self.step,
                        "epoch": self.order.epoch,
                        "loss": last_loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "grad_norm": sum(norms) / len(norms),
                        "samples_per_s": interval_steps * self.batch_size / max(step_seconds, 1e-9),
                        "ema_decay": self.ema.decay_at(max(0, self.ema.num_updates - 1)),
                    }
                    if self._log is not None:
                        self._log.write(record)
                    bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
                    losses, norms = [], []
                    step_seconds, interval_steps = 0.0, 0
                if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if (
                    self._writes
                    and self.sample_every
                    and self.step % self.sample_every == 0
                    and self.step < self.steps
                ):
                    assert self.out_dir is not None
                    self._write_grid(self.out_dir / SAMPLES_DIRNAME / f"step-{self.step:08d}.png")
        finally:
            bar.close()
        return self._finish(started, last_loss)

    def _finish(self, started: float, last_loss: float) -> TrainResult:
        result = TrainResult(steps=self.step, loss=last_loss, seconds=0.0)
        if self._writes and self.out_dir is not None:
            assert self.checkpoint_dir is not None
            saved = list_checkpoints(self.checkpoint_dir)
            if not saved or saved[-1].name != f"step-{self.step:08d}":
                self.save_checkpoint()
            result.checkpoint = self.last_checkpoint or (saved[-1] if saved else None)
            gif = self.out_dir / FINAL_GIF
            result.samples = self._write_grid(self.out_dir / FINAL_SAMPLES, gif=gif)
            result.gif = gif
            if self.export:
                self.export_pretrained(self.out_dir, sample_grid=result.samples)
                result.export_dir = self.out_dir
        self.dist.barrier()
        result.seconds = time.perf_counter() - started
        return result

    def export_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        sample_grid: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the model with its EMA weights via ``save_pretrained`` (rank 0's job), so
        that ``DenoiseDiffusion.from_pretrained(directory)`` loads the EMA model.

        Args:
            directory: the folder (other files in it, such as checkpoints, are kept).
            sample_grid: a PNG of samples shown on the model card.
        """
        return self.diffusion.save_pretrained(
            directory, ema=self.ema.module, sample_grid=sample_grid
        )

    def close(self) -> None:
        """Leave the process group if this trainer joined it."""
        self.dist.shutdown()
