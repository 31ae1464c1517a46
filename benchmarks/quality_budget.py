"""Benchmark 4: sample quality at an equal training budget, on the 8x8 digits (and benchmark 5,
the same on Fashion-MNIST at 28x28, for a longer budget).

Every configuration trains a U-Net of about 0.25M parameters (each library its own network:
diffusionkit ``UNet``, diffusers ``UNet2DModel``, lucidrains ``Unet``) on the fixed training
split of the budget's dataset (``benchmarks.quality.dataset_split``: the stratified digits
split, or Fashion-MNIST's official one), for the same number of optimizer steps
at the same batch size, with the same optimizer (AdamW, constant learning rate) and the same
loop structure (draw a batch, the library's own loss, backward, step, update an exponential
moving average of the weights). At each checkpoint it draws ``n_samples`` images from the
averaged weights with the library's own full ancestral sampling chain and scores
them against the held-out split with the project metric (``benchmarks.quality.score``: Frechet
distance, KID, precision/recall in the feature space of a small classifier of that dataset).
The reference scores of real training images and of a Gaussian fitted to the pixels are
computed on the same scale.

To fit 2 CPU cores, every configuration uses ``T = 100`` diffusion steps for training and
sampling (sampling cost is ``T`` network calls per image; at ``T = 1000`` the samples alone would
take hours). Linear schedules keep the DDPM paper's endpoints by scaling both ends by
``1000 / T`` (improved-diffusion's and lucidrains' convention; diffusers leaves ``beta_start``
and ``beta_end`` as given, so its configurations are given the scaled values explicitly).
Each (configuration, seed) runs in its own worker process with one thread; ``threads`` workers
run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import Context, n_params

NAME = "quality"
#: diffusionkit's network: 252,545 parameters
DK_NET: dict[str, Any] = {
    "in_channels": 1,
    "dim": 16,
    "dim_mults": (1, 2),
    "attns": (False, True),
    "groups": 8,
}
#: the same architecture in diffusers (its own defaults otherwise): 252,545 parameters
DIFFUSERS_NET: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (16, 32),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": None,
}
#: lucidrains' network of about the same size: 240,401 parameters
LUCIDRAINS_NET: dict[str, Any] = {"dim": 16, "dim_mults": (1, 2), "channels": 1}


@dataclass(frozen=True)
class Budget:
    """What every configuration gets.

    Attributes:
        timesteps: diffusion steps ``T`` (training and sampling: full chains).
        checkpoints: optimizer steps at which samples are drawn and scored (ascending).
        batch: training batch size.
        lr: AdamW learning rate (constant, weight decay 0).
        ema_decay: decay of the weights' exponential moving average, with the usual warm-up
            ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates; samples come from it
            (both peers' training scripts sample from an EMA; without one, a checkpoint's
            quality depends mostly on its last few updates).
        n_samples: images drawn and scored per checkpoint.
        seeds: one run per seed (network init, data order, noise, sampling).
        dataset: ``"digits"`` (8x8) or ``"fashion-mnist"`` (28x28, Debian's
            ``dataset-fashion-mnist`` package).
    """

    timesteps: int = 100
    checkpoints: tuple[int, ...] = (500, 1000, 2000)
    batch: int = 64
    lr: float = 1e-3
    ema_decay: float = 0.995
    n_samples: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)
    dataset: str = "digits"

    def __post_init__(self) -> None:
        from diffusionkit.metrics import SHIPPED_CLASSIFIERS

        if self.dataset not in SHIPPED_CLASSIFIERS:
            raise ValueError(
                f"unknown dataset {self.dataset!r}; known: {sorted(SHIPPED_CLASSIFIERS)}"
            )
        if list(self.checkpoints) != sorted(set(self.checkpoints)) or self.checkpoints[0] < 1:
            raise ValueError(f"checkpoints must be ascending positive ints, got {self.checkpoints}")
        if self.n_samples < 2 or self.batch < 1 or self.timesteps < 2 or not self.seeds:
            raise ValueError(f"bad budget {self}")

    @property
    def image(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the dataset's images."""
        from diffusionkit.metrics import SHIPPED_CLASSIFIERS

        size = SHIPPED_CLASSIFIERS[self.dataset]
        return (1, size, size)


FULL = Budget()
QUICK = Budget(checkpoints=(150,), n_samples=500, seeds=(0,))
#: benchmark 5: a 28x28 step costs 9 (diffusionkit, diffusers) to 14 (lucidrains) times an 8x8 one
FASHION = Budget(checkpoints=(1000, 2000), dataset="fashion-mnist")
QUICK_FASHION = Budget(checkpoints=(20,), n_samples=100, seeds=(0,), dataset="fashion-mnist")


# ---------------------------------------------------------------------------- contestants
class Contestant(ABC):
    """One library in one configuration: a network, its loss and its sampler."""

    net: nn.Module

    @abstractmethod
    def loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        """The library's training loss on clean images ``x0`` ``(B, 1, H, W)`` in [-1, 1]."""

    @abstractmethod
    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` samples ``(n, 1, H, W)`` in [-1, 1] from the library's full sampling chain."""

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.net.parameters()


class DiffusionkitContestant(Contestant):
    """``DenoiseDiffusion.loss`` / ``reverse_sample(clip=True)``.

    The model clips ``x0_hat`` (``x0_processing=ClipX0()``), as the command line's models do
    and as both peers sample by default (diffusers' ``clip_sample=True``, lucidrains' clipped
    ``x_start``); it samples with ``DDPMSampler()``.
    """

    def __init__(self, budget: Budget, seed: int, **diffusion_kwargs: Any) -> None:
        from diffusionkit import ClipX0, DenoiseDiffusion, LinearSchedule, UNet

        torch.manual_seed(seed)
        self.image = budget.image
        self.net = UNet(**DK_NET)
        diffusion_kwargs.setdefault("schedule", LinearSchedule(timesteps=budget.timesteps))
        diffusion_kwargs.setdefault("x0_processing", ClipX0())
        self.model = DenoiseDiffusion(self.net, **diffusion_kwargs)

    def loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        return self.model.loss(x0, generator=generator)

    def sample(self, n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.model.reverse_sample((n, *self.image), generator=g, progress=False, clip=True)


class DiffusersContestant(Contestant):
    """The loop of diffusers' ``train_unconditional.py`` (``add_noise``, MSE) and ``DDPMPipeline``."""

    def __init__(self, budget: Budget, seed: int, **scheduler_kwargs: Any) -> None:
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        torch.manual_seed(seed)
        self.net = UNet2DModel(sample_size=budget.image[-1], **DIFFUSERS_NET)
        self.scheduler = DDPMScheduler(num_train_timesteps=budget.timesteps, **scheduler_kwargs)
        self.pipe = DDPMPipeline(unet=self.net, scheduler=self.scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        self.timesteps = budget.timesteps

    def loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, self.timesteps, (x0.shape[0],), generator=generator)
        out = self.net(self.scheduler.add_noise(x0, noise, t), t).sample
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:  # "v_prediction"
            target = self.scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(out, target)

    def sample(self, n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        images = self.pipe(
            batch_size=n, generator=g, num_inference_steps=self.timesteps, output_type="pt"
        ).images  # (n, 1, H, W) in [0, 1]
        return images * 2 - 1


class LucidrainsContestant(Contestant):
    """``GaussianDiffusion.forward`` (its loss) and ``GaussianDiffusion.sample``."""

    def __init__(self, budget: Budget, seed: int, **diffusion_kwargs: Any) -> None:
        from benchmarks.quality.peers import import_lucidrains

        Unet, GaussianDiffusion = import_lucidrains()
        torch.manual_seed(seed)
        self.net = Unet(**LUCIDRAINS_NET)
        self.model = GaussianDiffusion(
            self.net, image_size=budget.image[-1], timesteps=budget.timesteps, **diffusion_kwargs
        )
        # lucidrains draws t and noise from the global RNG only
        torch.manual_seed(seed + 1000)

    def loss(self, x0: Tensor, generator: torch.Generator) -> Tensor:
        return self.model((x0 + 1) / 2)  # it normalizes [0, 1] data to [-1, 1] itself

    def sample(self, n: int, seed: int) -> Tensor:
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.model.sample(batch_size=n) * 2 - 1  # returns [0, 1]
        finally:
            torch.set_rng_state(state)


@dataclass(frozen=True)
class Entry:
    """A named configuration of one library."""

    label: str
    library: str
    setting: (
        str  # prediction target and schedule, e.g. "eps, linear": rows to compare like with like
    )
    settings: str  # what differs from the library's defaults, for the report
    build: Callable[[Budget, int], Contestant] = field(repr=False, compare=False)


def _scaled_linear(budget: Budget) -> dict[str, float]:
    scale = 1000 / budget.timesteps  # the DDPM paper's endpoints 1e-4, 0.02 at T = 1000
    return {"beta_start": 1e-4 * scale, "beta_end": 0.02 * scale}


def _sigmoid_betas(budget: Budget) -> list[float]:
    """The betas of lucidrains' default schedule (diffusers' ``"sigmoid"`` is another curve)."""
    from diffusionkit import SigmoidSchedule

    return SigmoidSchedule(budget.timesteps).betas.tolist()


def _dk_v_sigmoid(budget: Budget, seed: int) -> Contestant:
    from diffusionkit import SigmoidSchedule

    return DiffusionkitContestant(
        budget, seed, schedule=SigmoidSchedule(budget.timesteps), prediction="v"
    )


#: the two settings every library runs in: the DDPM paper's, and lucidrains' defaults
EPS_LINEAR, V_SIGMOID = "eps, linear", "v, sigmoid"

ENTRIES: dict[str, Entry] = {
    e.label: e
    for e in (
        Entry(
            "diffusionkit (eps, linear)",
            "diffusionkit",
            EPS_LINEAR,
            "defaults (linear schedule, eps prediction, DDPM sampler with posterior variance) "
            "with x0 clipped while sampling",
            lambda b, s: DiffusionkitContestant(b, s),
        ),
        Entry(
            "diffusionkit (v, sigmoid)",
            "diffusionkit",
            V_SIGMOID,
            "prediction='v', SigmoidSchedule (plain v MSE), DDPM sampler with posterior variance "
            "and x0 clipped while sampling",
            _dk_v_sigmoid,
        ),
        Entry(
            "diffusers (eps, linear)",
            "diffusers",
            EPS_LINEAR,
            "defaults (eps, fixed_small variance, clip_sample) with the linear betas scaled to T",
            lambda b, s: DiffusersContestant(b, s, **_scaled_linear(b)),
        ),
        Entry(
            "diffusers (v, sigmoid)",
            "diffusers",
            V_SIGMOID,
            "prediction_type='v_prediction', trained_betas = the sigmoid schedule's betas",
            lambda b, s: DiffusersContestant(
                b, s, prediction_type="v_prediction", trained_betas=_sigmoid_betas(b)
            ),
        ),
        Entry(
            "lucidrains (v, sigmoid)",
            "lucidrains",
            V_SIGMOID,
            "defaults: objective pred_v (v MSE weighted snr / (snr + 1)), sigmoid schedule, "
            "x0 clipped while sampling",
            lambda b, s: LucidrainsContestant(b, s),
        ),
        Entry(
            "lucidrains (eps, linear)",
            "lucidrains",
            EPS_LINEAR,
            "objective pred_noise, linear schedule",
            lambda b, s: LucidrainsContestant(b, s, objective="pred_noise", beta_schedule="linear"),
        ),
    )
}


# ---------------------------------------------------------------------------- one run
class TrainingRun:
    """One configuration trained on the budget's training split, as every library is:
    a batch drawn, the library's own loss, backward, AdamW step, an EMA of the weights
    updated with the warm-up ``min(ema_decay, (1 + n) / (10 + n))``."""

    def __init__(self, label: str, seed: int, budget: Budget) -> None:
        from benchmarks.quality import dataset_split

        self.split = dataset_split(budget.dataset)
        self.budget = budget
        self.label, self.seed = label, seed
        self.contestant = ENTRIES[label].build(budget, seed)
        self.params = list(self.contestant.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=budget.lr, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.params]
        self.data_g = torch.Generator().manual_seed(seed)
        self.noise_g = torch.Generator().manual_seed(seed + 1000)
        self.step = 0
        self.loss = float("nan")

    def train_to(self, until: int) -> float:
        """Train up to optimizer step ``until``; return the last loss."""
        data, budget = self.split.train_images, self.budget
        self.contestant.net.train()
        while self.step < until:
            idx = torch.randint(0, data.shape[0], (budget.batch,), generator=self.data_g)
            loss = self.contestant.loss(data[idx], self.noise_g)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            decay = min(budget.ema_decay, (1.0 + self.step) / (10.0 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema, self.params, strict=True):
                    e.lerp_(p, 1.0 - decay)
            self.loss = loss.item()
        if not math.isfinite(self.loss):
            raise FloatingPointError(f"{self.label} seed {self.seed}: loss {self.loss} at {until}")
        self.contestant.net.eval()
        return self.loss

    def averaged(self) -> contextlib.AbstractContextManager[None]:
        """Inside the ``with`` block the network holds the EMA weights."""
        return _swapped(self.params, self.ema)


def train_and_score(label: str, seed: int, budget: Budget) -> dict[str, Any]:
    """Train configuration ``label`` with ``seed`` and score it at every checkpoint."""
    from benchmarks.quality import score

    torch.set_num_threads(1)
    run = TrainingRun(label, seed, budget)
    scores: dict[str, dict[str, float]] = {}
    train_s = sample_s = 0.0
    for checkpoint in budget.checkpoints:
        start = time.perf_counter()
        loss = run.train_to(checkpoint)
        train_s += time.perf_counter() - start
        start = time.perf_counter()
        with run.averaged():
            samples = run.contestant.sample(budget.n_samples, seed=10_000 + seed)
        sample_s += time.perf_counter() - start
        result = score(samples.clamp(-1, 1), run.split.test_images, seed=seed)
        result["loss"] = loss
        scores[str(checkpoint)] = result
    return {
        "label": label,
        "seed": seed,
        "parameters": n_params(run.contestant.net),
        "scores": scores,
        "train_seconds": train_s,
        "sample_seconds": sample_s,
    }


@contextmanager
def _swapped(params: list[nn.Parameter], values: list[Tensor]) -> Iterator[None]:
    """Give ``params`` the ``values`` (e.g. EMA weights) for the duration of the block."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved, strict=True):
                p.copy_(v)


def _exit_when_orphaned(parent: int, interval: float = 2.0) -> None:
    """End this worker once ``parent`` is gone (a killed run must not leave its workers running)."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _worker_init(parent: int | None = None) -> None:
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(1)
    if parent is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "values": values,
    }


METRICS = ("fd", "kid", "precision", "recall")


def aggregate(runs: list[dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """Per configuration and checkpoint: mean, std, min, max of every metric over seeds."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        out[label] = {
            "library": ENTRIES[label].library if label in ENTRIES else label,
            "setting": ENTRIES[label].setting if label in ENTRIES else "",
            "settings": ENTRIES[label].settings if label in ENTRIES else "",
            "parameters": mine[0]["parameters"],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in mine),
            "sample_seconds": statistics.fmean(r["sample_seconds"] for r in mine),
            "checkpoints": {
                str(c): {m: _summary([r["scores"][str(c)][m] for r in mine]) for m in METRICS}
                for c in budget.checkpoints
            },
        }
    return out


def _compare(ours: dict[str, Any], peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Is ``ours`` (an FD summary) no worse than the best of ``peers`` within the spread?"""
    best = min(peers, key=lambda k: peers[k]["mean"])
    margin = max(ours["std"], peers[best]["std"])
    return {
        "diffusionkit_fd": ours["mean"],
        "best_peer": best,
        "best_peer_fd": peers[best]["mean"],
        "margin": margin,
        "met": ours["mean"] <= peers[best]["mean"] + margin,
    }


def verdict(configs: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """The target: diffusionkit's FD at the last checkpoint is no worse than the best peer's.

    "Within the spread" means: the mean FD is at most the best peer configuration's mean FD
    plus the larger of the two seed standard deviations; with one seed there is no spread and
    ``met`` is ``None`` (not judged). The target is judged on the best
    configuration of each side (every library in the setting it does best in), and reported
    for each setting (same prediction target and schedule) on its own, like against like.
    """
    last = str(budget.checkpoints[-1])
    fd = {k: v["checkpoints"][last]["fd"] for k, v in configs.items()}
    ours = {k: fd[k] for k, v in configs.items() if v["library"] == "diffusionkit"}
    peers = {k: fd[k] for k, v in configs.items() if v["library"] != "diffusionkit"}
    if not ours or not peers:
        return {"met": None}
    best_ours = min(ours, key=lambda k: ours[k]["mean"])
    by_setting = {}
    for setting in dict.fromkeys(v.get("setting", "") for v in configs.values()):
        mine = [k for k in ours if configs[k].get("setting", "") == setting]
        theirs = {k: peers[k] for k in peers if configs[k].get("setting", "") == setting}
        if len(mine) == 1 and theirs:
            by_setting[setting] = {"diffusionkit": mine[0], **_compare(ours[mine[0]], theirs)}
    out = {
        "checkpoint": int(last),
        "diffusionkit": best_ours,
        **_compare(ours[best_ours], peers),
        "by_setting": by_setting,
    }
    if len(budget.seeds) < 2:  # no spread to judge within: compare, but decide nothing
        out["met"] = None
        for c in by_setting.values():
            c["met"] = None
    return out


def selected_labels(settings: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The labels of :data:`ENTRIES` in ``settings`` (all of them when it is empty)."""
    return tuple(k for k, e in ENTRIES.items() if not settings or e.setting in settings)


def run(
    ctx: Context,
    budget: Budget | None = None,
    labels: tuple[str, ...] | None = None,
    default: Budget | None = None,
) -> dict[str, Any]:
    """Run benchmark 4 and return its results (JSON-serializable).

    Args:
        ctx: the run's context; its ``quality_changes`` replace fields of the default budget.
        budget: the budget to use as it is (``ctx.quality_changes`` are then ignored).
        labels: configurations to run (default: those of :data:`ENTRIES` in
            ``ctx.quality_settings``, or all).
        default: the budget before ``ctx.quality_changes`` (default: :data:`QUICK` or
            :data:`FULL`).
    """
    from benchmarks.quality import calibration

    if budget is None:
        base = default or (QUICK if ctx.quick else FULL)
        budget = dataclasses.replace(base, **ctx.quality_changes)
    labels = labels or selected_labels(ctx.quality_settings)
    jobs = [(label, seed) for seed in budget.seeds for label in labels]
    # longest first (lucidrains' network is the slowest), so the workers finish together
    jobs.sort(key=lambda j: ENTRIES[j[0]].library != "lucidrains")
    ctx.log(
        f"quality on {budget.dataset}: {len(jobs)} runs ({len(labels)} configurations x "
        f"{len(budget.seeds)} seeds), "
        f"{budget.checkpoints[-1]} steps at batch {budget.batch}, T={budget.timesteps}, "
        f"{budget.n_samples} samples per checkpoint, {ctx.threads} workers"
    )
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(
        ctx.threads,
        mp_context=get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    with pool:
        futures = [pool.submit(train_and_score, label, seed, budget) for label, seed in jobs]
        for future in futures:
            r = future.result()
            last = r["scores"][str(budget.checkpoints[-1])]
            ctx.log(
                f"  {r['label']} seed {r['seed']}: FD {last['fd']:.3f} KID {last['kid']:.4f} "
                f"(train {r['train_seconds']:.0f} s, sample {r['sample_seconds']:.0f} s)"
            )
            runs.append(r)
    configs = aggregate(runs, budget)
    baselines = calibration(budget.dataset, n_samples=min(budget.n_samples, 1000), seed=0)
    result = {
        "dataset": budget.dataset,
        "n_reference": runs[0]["scores"][str(budget.checkpoints[-1])]["n_reference"],
        "budget": asdict(budget),
        "networks": {
            "diffusionkit": DK_NET,
            "diffusers": DIFFUSERS_NET,
            "lucidrains": LUCIDRAINS_NET,
        },
        "optimizer": f"AdamW(lr={budget.lr}, weight_decay=0), constant, EMA decay "
        f"{budget.ema_decay} with warm-up, plain loop",
        "configs": configs,
        "baselines": {k: {m: v[m] for m in METRICS} for k, v in baselines.items()},
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
    }
    if any(c["library"] == "diffusionkit" for c in configs.values()):
        result["verdict"] = verdict(configs, budget)
    return result
