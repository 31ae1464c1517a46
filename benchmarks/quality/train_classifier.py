"""Train the feature classifiers shipped in ``diffusionkit/metrics/weights`` and print calibration scores.

Run from the repository root::

    python -m benchmarks.quality.train_classifier                     # digits
    python -m benchmarks.quality.train_classifier --dataset fashion-mnist
    python -m benchmarks.quality.train_classifier --calibrate-only    # use the shipped weights

Training is seeded (a ``torch.Generator`` drives initialisation, shuffling and augmentation) and
uses only the training split; held-out accuracy is measured on the split that benchmarks score
against. Bitwise reproducibility holds on one machine and thread count (``--threads``, default 1);
other CPUs may differ in the last bits.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.quality.calibrate import calibration
from benchmarks.quality.splits import dataset_split
from diffusionkit.metrics import (
    SHIPPED_CLASSIFIERS,
    ClassifierConfig,
    SmallCNN,
    classifier_accuracy,
    classifier_files,
    init_weights,
    load_classifier,
    save_classifier,
)
from diffusionkit.metrics.shipped import WEIGHTS_DIR


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings; stored in the asset's JSON."""

    epochs: int  # passes over the training split
    batch_size: int  # images per step
    lr: float  # AdamW peak learning rate (cosine decay to 0)
    weight_decay: float  # AdamW decoupled weight decay
    max_shift: int  # random translation augmentation, pixels in each direction
    seed: int = 0  # seeds the torch.Generator for init, shuffling and augmentation


ARCHITECTURES = {
    "digits": ClassifierConfig(dataset="digits", image_size=8, feature_dim=64),
    "fashion-mnist": ClassifierConfig(
        dataset="fashion-mnist", image_size=28, feature_dim=128, stem_stride=2
    ),
}
TRAINING = {
    "digits": TrainingConfig(epochs=40, batch_size=64, lr=3e-3, weight_decay=1e-4, max_shift=1),
    "fashion-mnist": TrainingConfig(
        epochs=2, batch_size=128, lr=6e-3, weight_decay=1e-4, max_shift=0
    ),
}


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image ``[N x C x H x W]`` by up to ``max_shift`` pixels, filling with -1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)  # -1 is the background
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(x.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


def train_classifier(dataset: str, config: TrainingConfig | None = None) -> tuple[SmallCNN, dict]:
    """Train the classifier for ``dataset`` on its training split.

    Returns:
        The trained model (eval mode) and a metadata dict (accuracies, timings, settings).
    """
    config = config or TRAINING[dataset]
    split = dataset_split(dataset)
    g = torch.Generator().manual_seed(config.seed)
    model = SmallCNN(ARCHITECTURES[dataset])
    init_weights(model, g)
    steps_per_epoch = -(-split.train_images.shape[0] // config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1
    )
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(split.train_images.shape[0], generator=g)
        total = 0.0
        for i in range(0, order.shape[0], config.batch_size):
            idx = order[i : i + config.batch_size]
            x = random_shift(split.train_images[idx], config.max_shift, g)
            loss = nn.functional.cross_entropy(model(x), split.train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.shape[0]
        print(f"  epoch {epoch + 1}/{config.epochs}: loss {total / order.shape[0]:.4f}")
    seconds = time.perf_counter() - start
    model.eval().requires_grad_(False)
    model.fit_feature_normalization(split.train_images)
    metadata = {
        "training": asdict(config),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "train_accuracy": classifier_accuracy(model, split.train_images, split.train_labels),
        "heldout_accuracy": classifier_accuracy(model, split.test_images, split.test_labels),
        "n_train": int(split.train_images.shape[0]),
        "n_heldout": int(split.test_images.shape[0]),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, metadata


def summarize_calibration(
    dataset: str, n_samples: int, seeds: list[int], classifier: SmallCNN | None = None
) -> dict:
    """Run :func:`~benchmarks.quality.calibrate.calibration` per seed; print and return mean, std.

    Returns:
        ``{"n_samples", "n_reference", "seeds", "scores": {candidate: {metric: [mean, std]}}}``.
    """
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        result = calibration(dataset, n_samples=n_samples, seed=seed, classifier=classifier)
        for name, scores in result.items():
            rows.setdefault(name, []).append(scores)
    n_reference = int(next(iter(rows.values()))[0]["n_reference"])
    print(
        f"\nCalibration on {dataset}: {n_samples} images per candidate vs the "
        f"{n_reference} held-out real images, seeds {seeds} (mean +- std over seeds)"
    )
    columns = [("fd", ".3f"), ("kid", ".4f"), ("precision", ".3f"), ("recall", ".3f"),
               ("density", ".3f"), ("coverage", ".3f")]  # fmt: skip
    print(f"{'candidate':<16}" + "".join(f"{key:>18}" for key, _ in columns))
    summary: dict[str, dict[str, list[float]]] = {}
    for name, runs in rows.items():
        cells = []
        for key, fmt in columns:
            v = torch.tensor([r[key] for r in runs], dtype=torch.float64)
            mean, std = float(v.mean()), float(v.std()) if len(runs) > 1 else 0.0
            summary.setdefault(name, {})[key] = [round(mean, 5), round(std, 5)]
            cells.append(f"{mean:{fmt}} +- {std:{fmt}}")
        print(f"{name:<16}" + "".join(f"{c:>18}" for c in cells))
    return {"n_samples": n_samples, "n_reference": n_reference, "seeds": seeds, "scores": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*SHIPPED_CLASSIFIERS, "all"], default="digits")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=WEIGHTS_DIR,
        help="where the classifier files are written (default: the package's own, which "
        "diffusionkit.metrics and diffusionkit eval load)",
    )
    parser.add_argument("--calibrate-only", action="store_true", help="skip training")
    parser.add_argument("--n-samples", type=int, default=1000, help="images per candidate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: bitwise reproducible, and 10x faster than 2 threads "
        "when other processes share the cores)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = list(SHIPPED_CLASSIFIERS) if args.dataset == "all" else [args.dataset]
    for dataset in datasets:
        stem = args.out_dir / classifier_files(dataset)[1].stem  # e.g. <out-dir>/digits_classifier
        if not args.calibrate_only:
            print(f"Training the {dataset} classifier")
            model, metadata = train_classifier(dataset)
            metadata["calibration"] = summarize_calibration(
                dataset, args.n_samples, args.seeds, classifier=model
            )
            paths = save_classifier(model, stem, metadata)
            print(
                f"  held-out accuracy {metadata['heldout_accuracy']:.4f}, "
                f"train {metadata['train_accuracy']:.4f}, {metadata['train_seconds']} s, "
                f"{metadata['n_parameters']} parameters -> {', '.join(map(str, paths))}"
            )
        else:
            model = load_classifier(stem)
            split = dataset_split(dataset)
            acc = classifier_accuracy(model, split.test_images, split.test_labels)
            print(f"{dataset}: classifier {stem}, held-out accuracy {acc:.4f}")
            summarize_calibration(dataset, args.n_samples, args.seeds, classifier=model)


if __name__ == "__main__":
    main()
