"""``diffusionkit eval``: score a trained model's samples and likelihood against held-out images.

``--fd`` draws ``N`` samples and compares them with ``N`` held-out images in the feature space
of a classifier (:mod:`diffusionkit.metrics`): the Frechet distance, KID, precision, recall,
density and coverage, and for a class-conditional model (whose samples are drawn for the
held-out images' labels) how often the classifier gives each sample its label. Beside the
model's scores, ``N`` real images of the training split are scored the same way: what a
perfect model would reach at this ``N``, since these metrics depend on the sample size.
``--nll`` bounds the model's negative log-likelihood of the ``N`` held-out images in bits per
dimension (:meth:`~diffusionkit.DenoiseDiffusion.nll`).

The held-out images are a fixed subset of the data's held-out split, the same for every
``--seed``: the samples vary with the seed, the reference does not. The results are printed as
a table and written as JSON (``--json``, default ``eval.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import EXIT_USAGE, CLIError
from diffusionkit.cli.model_options import (
    HelpFormatter,
    add_loading_arguments,
    add_model_argument,
    build_sampler,
    chain_steps,
    check_local,
    check_output,
    device_of,
    recorded_image_size,
)
from diffusionkit.cli.options import positive_int

__all__ = [
    "DEFAULT_COUNT",
    "INCEPTION",
    "MAX_COUNT",
    "MIN_FD_COUNT",
    "EvalData",
    "FeatureSpace",
    "add_parser",
    "evaluate",
    "feature_space",
    "load_data",
    "max_count",
    "run",
]

#: images evaluated when -n is not given (fewer if the held-out data has fewer)
DEFAULT_COUNT = 1000
#: the fewest images --fd accepts: precision and recall need more than k = 3 neighbours, and a
#: Frechet distance of fewer images says little
MIN_FD_COUNT = 10
#: the most images evaluated: the largest built-in held-out split (Fashion-MNIST's test set)
MAX_COUNT = 10_000
#: float32 values one set of images (samples, held-out or training images) may hold in memory
MAX_VALUES_PER_SET = 2**28  # 1 GiB
#: --features value for Inception-v3 features, i.e. FID (the [fid] extra)
INCEPTION = "inception"
#: seeds the choice of the held-out (and training) images, independently of --seed
SUBSET_SEED = 0
#: KID's random subsets (Binkowski et al. 2018 use 100 of up to 1000 images)
KID_SUBSETS = 100


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``subparsers``."""
    from diffusionkit.metrics import SHIPPED_CLASSIFIERS
    from diffusionkit.samplers import SAMPLERS

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="score a trained model against held-out images",
        description=(
            "Score a trained model (a run folder, a save_pretrained folder or a Hub repo) "
            "against held-out images: --fd compares N samples with N held-out images in a "
            "classifier's feature space (Frechet distance, KID, precision/recall, and "
            "accuracy for class-conditional models), --nll bounds the negative "
            "log-likelihood of N held-out images in bits/dim. Prints a table and writes "
            "JSON. The EMA weights are used when the model has them. See "
            "docs/guides/evaluation.md."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="'digits' or 'fashion-mnist' (their held-out split: the images 'diffusionkit "
        "train' leaves out), or a folder of images, read at the model's size as in training",
    )
    parser.add_argument(
        "-n",
        "--num",
        type=positive_int(1),
        default=None,
        metavar="N",
        help=f"samples drawn and held-out images used (default: {DEFAULT_COUNT}, or all the "
        f"held-out images if fewer; --fd needs at least {MIN_FD_COUNT}). Compare scores only "
        "at equal N",
    )
    parser.add_argument(
        "--fd",
        action="store_true",
        help="sample quality in a classifier's feature space (the default when neither --fd "
        "nor --nll is given)",
    )
    parser.add_argument(
        "--nll", action="store_true", help="negative log-likelihood bound, bits/dim"
    )
    shipped = ", ".join(repr(name) for name in SHIPPED_CLASSIFIERS)
    parser.add_argument(
        "--features",
        default=None,
        metavar="NAME_OR_STEM",
        help=f"feature space of --fd: a shipped classifier ({shipped}; the default for those "
        f"datasets), '{INCEPTION}' (FID with Inception-v3, for RGB images: needs pip install "
        "'diffusionkit[fid]' and downloads its weights on first use), or the path stem of a "
        "classifier written by benchmarks/quality/train_classifier.py (STEM.json + "
        "STEM.safetensors). Required for a folder",
    )
    names = ", ".join(n for n in SAMPLERS.names() if n.islower())
    parser.add_argument(
        "--sampler",
        default=None,
        metavar="NAME",
        help=f"solver of the reverse process for --fd: {names} (default: the model's own)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int(1),
        default=None,
        metavar="S",
        help="network calls per sample for --fd (default: one per timestep, all T)",
    )
    parser.add_argument(
        "--nll-steps",
        type=positive_int(2),
        default=None,
        metavar="K",
        help="network calls per image for --nll: K < T gives an unbiased estimate of the bound "
        "from K evenly spread terms (default: all T terms, the bound itself)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int(1, 4096),
        default=128,
        metavar="B",
        help="images per network call",
    )
    parser.add_argument(
        "--seed", type=positive_int(0), default=0, help="seed of the samples and of --nll's noise"
    )
    parser.add_argument(
        "--json",
        default="eval.json",
        metavar="FILE",
        help="where to write the results as JSON ('none': do not write)",
    )
    add_loading_arguments(
        parser,
        image_size_help="image size SxS the model makes (default: the size the run was trained "
        "at, from its train_config.json; required for Hub repos and save_pretrained folders)",
        device_help="device to sample and bound the likelihood on",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


# ---------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """The images a model is evaluated against, at the model's size and channels.

    Attributes:
        name: the ``--data`` value.
        heldout: ``(N, C, S, S)`` held-out images in [-1, 1]: the reference.
        labels: ``(N,)`` int64 labels of ``heldout`` (-1: unlabelled).
        train: ``(N, C, S, S)`` training images for the "real" column, or ``None`` (folders).
        train_labels: ``(N,)`` labels of ``train``, or ``None``.
        builtin: the built-in dataset's name, or ``None`` for a folder.
        described: a few words for the report, e.g. ``"359 held-out images of digits"``.
    """

    name: str
    heldout: Any
    labels: Any
    train: Any
    train_labels: Any
    builtin: str | None
    described: str


def _builtin_name(data: str) -> str | None:
    from diffusionkit.data import BUILTIN_DATASETS

    key = data.strip().lower().replace("_", "-")
    return key if key in BUILTIN_DATASETS else None


def _native_sizes() -> dict[str, int]:
    from diffusionkit.data import digits, fashion_mnist

    return {"digits": digits.NATIVE_SIZE, "fashion-mnist": fashion_mnist.NATIVE_SIZE}


def max_count(size: int, channels: int) -> int:
    """The most images of ``size x size x channels`` one evaluation holds in memory."""
    return max(1, min(MAX_COUNT, MAX_VALUES_PER_SET // (channels * size * size)))


def _count(requested: int | None, available: int, where: str, shape: tuple[int, int]) -> int:
    """``-n``, checked against the images ``available`` and the memory budget, or the default.

    Args:
        shape: ``(size, channels)`` of the images.
    """
    size, channels = shape
    most = max_count(size, channels)
    if requested is None:
        return min(DEFAULT_COUNT, available, most)
    if requested > most:
        raise CLIError(
            f"-n {requested}: eval holds its images in memory, at most {most:,} of "
            f"{size}x{size}x{channels}; average the scores of several --seed values for more",
            EXIT_USAGE,
        )
    if requested > available:
        raise CLIError(f"-n {requested}: {where} has only {available} images", EXIT_USAGE)
    return requested


def _take(dataset: Any, n: int) -> tuple[Any, Any]:
    """``n`` items of ``dataset`` chosen by a fixed permutation: ``(images, labels)``."""
    import torch

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SUBSET_SEED))
    items = [dataset[int(i)] for i in order[:n]]
    return torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items])


def load_data(
    data: str, size: int, channels: int, n: int | None, with_train: bool = True
) -> EvalData:
    """The held-out images of ``--data``, and for built-ins (``with_train``) training images.

    Raises:
        CLIError: unknown data, a size the data cannot be brought to, or too few images.
    """
    from diffusionkit.data import load_dataset

    builtin = _builtin_name(data)
    if builtin is not None:
        native = _native_sizes()[builtin]
        if size < native:
            raise CLIError(
                f"--data {data}: the model makes {size}x{size} images but {builtin}'s are "
                f"{native}x{native}, and held-out images are padded to the model's size, never "
                f"shrunk: evaluate the model on data of its own size",
                EXIT_USAGE,
            )
        heldout = load_dataset(builtin, image_size=size, channels=channels, train=False)
        count = _count(n, len(heldout), f"the held-out split of {builtin}", (size, channels))
        images, labels = _take(heldout, count)
        train_images = train_labels = None
        if with_train:
            train = load_dataset(builtin, image_size=size, channels=channels, train=True)
            train_images, train_labels = _take(train, min(count, len(train)))
        described = f"{count} held-out images of {builtin}"
        return EvalData(data, images, labels, train_images, train_labels, builtin, described)
    folder = Path(data).expanduser()
    if not folder.is_dir():
        names = ", ".join(_native_sizes())
        raise CLIError(
            f"--data {data}: not a built-in dataset ({names}) nor a folder of images",
            EXIT_USAGE,
        )
    dataset = load_dataset(folder, image_size=size, channels=channels)
    count = _count(n, len(dataset), f"the folder {folder}", (size, channels))
    images, labels = _take(dataset, count)
    return EvalData(data, images, labels, None, None, None, f"{count} images of {folder}")


# ---------------------------------------------------------------------------- feature spaces


@dataclass
class FeatureSpace:
    """Where --fd compares images: a classifier's features, or Inception's (FID).

    Attributes:
        classifier: a :class:`~diffusionkit.metrics.SmallCNN`, or ``None`` for Inception.
        described: a few words for the report, e.g. ``"the shipped digits classifier"``.
        device: where Inception runs (the small classifiers run on the CPU).
    """

    classifier: Any
    described: str
    device: Any = "cpu"

    @property
    def classes(self) -> int | None:
        """The classifier's number of classes (``None`` for Inception)."""
        return None if self.classifier is None else int(self.classifier.config.num_classes)

    def check(self, size: int, channels: int) -> None:
        """Refuse images the feature network cannot take."""
        import torch

        from diffusionkit.metrics import crop_to_classifier

        if self.classifier is None:
            from diffusionkit.metrics.fid import require_inception

            if channels not in (1, 3):
                raise CLIError(
                    f"--features {INCEPTION} takes RGB or grey images, not {channels} channels",
                    EXIT_USAGE,
                )
            require_inception()
            return
        try:
            crop_to_classifier(torch.zeros(1, channels, size, size), self.classifier.config)
        except ValueError as error:
            raise CLIError(f"--features: {error}", EXIT_USAGE) from None

    def scores(self, images: Any, reference: Any, labels: Any, seed: int) -> dict[str, float]:
        """Scores of ``images`` against ``reference`` (both ``(N, C, S, S)``)."""
        from diffusionkit import metrics

        if self.classifier is None:
            from diffusionkit.metrics.fid import frechet_inception_distance

            return {"fid": frechet_inception_distance(images, reference, device=self.device)}
        config = self.classifier.config
        features = metrics.extract_features(
            self.classifier, metrics.crop_to_classifier(images, config)
        )
        reference_features = metrics.extract_features(
            self.classifier, metrics.crop_to_classifier(reference, config)
        )
        out = metrics.score_features(
            features, reference_features, kid_subsets=KID_SUBSETS, seed=seed
        )
        del out["n_samples"], out["n_reference"]
        if labels is not None:
            out["accuracy"] = metrics.classifier_accuracy(
                self.classifier, metrics.crop_to_classifier(images, config), labels
            )
        return out


def feature_space(features: str | None, data: EvalData, device: Any = "cpu") -> FeatureSpace:
    """The feature space named by ``--features`` (default: the built-in data's classifier)."""
    from diffusionkit.metrics import SHIPPED_CLASSIFIERS, load_classifier, shipped_classifier

    name = features if features is not None else data.builtin
    if name is None:
        raise CLIError(
            f"--fd on the folder {data.name} needs --features: a classifier's path stem "
            f"(STEM.json + STEM.safetensors, written by benchmarks/quality/train_classifier.py) "
            f"or '{INCEPTION}' (FID, RGB images; pip install 'diffusionkit[fid]')",
            EXIT_USAGE,
        )
    if name == INCEPTION:
        return FeatureSpace(None, "Inception-v3 (FID, torchmetrics)", device)
    if name in SHIPPED_CLASSIFIERS:
        return FeatureSpace(shipped_classifier(name), f"the shipped {name} classifier")
    try:
        return FeatureSpace(load_classifier(Path(name)), f"the classifier {name}")
    except (OSError, ValueError) as error:
        raise CLIError(f"--features {name}: {error}", EXIT_USAGE) from None


# ---------------------------------------------------------------------------- the work


def _bar(total: int, what: str, unit: str, hide: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit=unit, disable=hide, leave=False)


def draw_samples(
    model: Any, args: argparse.Namespace, n: int, shape: tuple[int, int, int], labels: Any
) -> Any:
    """``(n, C, S, S)`` samples in [-1, 1], drawn in batches from one seeded generator
    (sample ``i`` gets ``labels[i]`` from a class-conditional model)."""
    import torch

    sampler = None if args.sampler is None else build_sampler(args.sampler)
    visited = chain_steps(model, sampler, args.steps)
    batches = math.ceil(n / args.batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    out = []
    with _bar(batches * visited, "sampling", "step", args.no_progress) as bar:
        for start in range(0, n, args.batch_size):
            size = min(args.batch_size, n - start)
            samples = model.reverse_sample(
                (size, *shape),
                generator=generator,
                sampler=sampler,
                steps=args.steps,
                labels=None if labels is None else labels[start : start + size],
                progress=False,
                clip=True,
                callback=lambda *_: bar.update(1),
            )
            out.append(samples.float().cpu())
    return torch.cat(out)


def bits_per_dim(model: Any, args: argparse.Namespace, data: EvalData, labels: Any) -> Any:
    """``(N,)`` bits/dim bounds of the held-out images (:meth:`DenoiseDiffusion.nll`)."""
    import torch

    n = len(data.heldout)
    device = next(model.net.parameters()).device
    generator = torch.Generator().manual_seed(args.seed)
    out = []
    with _bar(n, "nll", "image", args.no_progress) as bar:
        for start in range(0, n, args.batch_size):
            x0 = data.heldout[start : start + args.batch_size].to(device)
            batch_labels = None if labels is None else labels[start : start + len(x0)].to(device)
            out.append(
                model.nll(
                    x0,
                    steps=args.nll_steps,
                    generator=generator,
                    labels=batch_labels,
                    progress=False,
                ).double()
            )
            bar.update(len(x0))
    return torch.cat(out)


# ---------------------------------------------------------------------------- the report

#: (key, what it measures, which way is better) in the order of the table
ROWS = (
    ("fd", "Frechet distance of the features", "lower"),
    ("kid", "kernel distance (unbiased: about 0 at best)", "lower"),
    ("precision", "samples inside the real images' manifold", "higher"),
    ("recall", "real images inside the samples' manifold", "higher"),
    ("density", "real neighbours per sample / k (about 1 for real images)", "higher"),
    ("coverage", "real images with a sample among their neighbours", "higher"),
    ("accuracy", "samples the classifier gives their label", "higher"),
    ("fid", "Frechet distance of Inception-v3 features", "lower"),
    ("nll", "bits/dim: the variational bound on -log2 p(x) / dimensions", "lower"),
)


def _cell(scores: dict[str, float] | None, key: str) -> str:
    if scores is None or key not in scores:
        return "-"
    if key == "nll":
        return f"{scores['nll']:.4f} +- {scores['nll_sem']:.4f}"
    return f"{scores[key]:.4g}"


def format_table(model: dict[str, float], real: dict[str, float] | None) -> str:
    """The scores as a fixed-width text table, one metric per row."""
    header = ("metric", "model", "real images", "better", "what it measures")
    rows = [header]
    for key, meaning, better in ROWS:
        if key in model:
            rows.append((key, _cell(model, key), _cell(real, key), better, meaning))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    ).rstrip()


def _check_json(value: str) -> str | None:
    if value.strip().lower() == "none":
        return None
    check_output(value, "--json", "eval.json")
    return value


def _check_options(args: argparse.Namespace) -> None:
    """The checks that need no model: counts, combinations, the sampler's name."""
    if args.features is not None and not args.fd:
        raise CLIError("--features chooses the feature space of --fd; add --fd", EXIT_USAGE)
    if args.num is not None and args.fd and args.num < MIN_FD_COUNT:
        raise CLIError(
            f"-n {args.num}: --fd needs at least {MIN_FD_COUNT} images (precision and "
            "recall need more than 3 neighbours; a few hundred give stable scores)",
            EXIT_USAGE,
        )
    if (args.sampler is not None or args.steps is not None) and not args.fd:
        raise CLIError("--sampler and --steps set how --fd draws its samples; add --fd", EXIT_USAGE)
    if args.nll_steps is not None and not args.nll:
        raise CLIError("--nll-steps sets how --nll bounds the likelihood; add --nll", EXIT_USAGE)


def _image_shape(args: argparse.Namespace, model: Any) -> tuple[int, int]:
    """``(size, channels)`` of the model's images, checked against the network."""
    if getattr(model.net, "cond_channels", 0):
        raise CLIError(
            f"{args.model} is image-conditional; eval scores unconditional and "
            "class-conditional models (examples/super_resolution.py scores an image-to-image "
            "model)",
            EXIT_USAGE,
        )
    recorded = recorded_image_size(args.model)
    if args.image_size is not None and recorded is not None and args.image_size != recorded:
        raise CLIError(
            f"--image-size {args.image_size}: {args.model} was trained at {recorded}x{recorded}; "
            "evaluate it at that size (leave out --image-size)",
            EXIT_USAGE,
        )
    size = args.image_size or recorded
    if size is None:
        raise CLIError(
            f"{args.model} does not record the image size it was trained at; pass --image-size",
            EXIT_USAGE,
        )
    channels = getattr(model.net, "in_channels", None) or 3
    try:
        model.check_shape((1, channels, size, size))
    except ValueError as error:
        raise CLIError(f"image size {size}: {error}", EXIT_USAGE) from None
    return size, channels


def _labels(model: Any, data: EvalData) -> Any:
    """The labels to condition a class-conditional model on (the held-out ones), else None."""
    classes = getattr(model.net, "num_classes", None)
    if not classes:
        return None
    labels = data.labels
    if bool((labels < 0).any()):
        raise CLIError(
            f"the model is class-conditional, but {data.name} has no labels (a folder needs one "
            "subfolder per class, as in training)",
            EXIT_USAGE,
        )
    if int(labels.max()) >= classes:
        raise CLIError(
            f"{data.name} has labels up to {int(labels.max())}, but the model has {classes} "
            "classes",
            EXIT_USAGE,
        )
    return labels


def evaluate(
    model: Any,
    args: argparse.Namespace,
    data: EvalData,
    space: FeatureSpace | None,
    labels: Any,
) -> dict[str, Any]:
    """``{"model": scores, "real": scores or None}`` for the options of ``args``."""
    model_scores: dict[str, float] = {}
    real_scores = None
    if space is not None:
        shape = tuple(data.heldout.shape[1:])
        samples = draw_samples(model, args, len(data.heldout), shape, labels)
        # accuracy only where the classifier's classes are the model's
        scored = labels is not None and space.classes == getattr(model.net, "num_classes", None)
        model_scores = space.scores(samples, data.heldout, labels if scored else None, args.seed)
        if data.train is not None:
            real_labels = data.train_labels if scored else None
            real_scores = space.scores(data.train, data.heldout, real_labels, args.seed)
    if args.nll:
        bpd = bits_per_dim(model, args, data, labels)
        model_scores["nll"] = float(bpd.mean())
        # the standard error of the mean over images
        model_scores["nll_sem"] = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else 0.0
    return {"model": model_scores, "real": real_scores}


def run(args: argparse.Namespace) -> int:
    """Run ``diffusionkit eval``; returns the exit status."""
    json_path = _check_json(args.json)
    args.fd = args.fd or not args.nll
    _check_options(args)
    sampler = None if args.sampler is None else build_sampler(args.sampler)
    device = device_of(args.device)
    check_local(args.model)

    from diffusionkit import DenoiseDiffusion, __version__

    model = DenoiseDiffusion.from_pretrained(
        args.model, revision=args.revision, map_location=device, use_ema=not args.no_ema
    )
    size, channels = _image_shape(args, model)
    chain_steps(model, sampler, args.steps)
    if args.nll_steps is not None and args.nll_steps > model.timesteps:
        raise CLIError(
            f"--nll-steps {args.nll_steps}: the model has only {model.timesteps} timesteps",
            EXIT_USAGE,
        )
    data = load_data(args.data, size, channels, args.num, with_train=args.fd)
    space = feature_space(args.features, data, device) if args.fd else None
    if space is not None:
        space.check(size, channels)
    labels = _labels(model, data)
    result = evaluate(model, args, data, space, labels)

    chosen = sampler or model.sampler
    record = {
        "model": args.model,
        "revision": args.revision,
        "ema": not args.no_ema,
        "data": args.data,
        "n": len(data.heldout),
        "image_size": size,
        "channels": channels,
        "features": None if space is None else space.described,
        "sampler": None if space is None else (chosen.name or str(chosen)),
        "steps": (args.steps or model.timesteps) if space is not None else None,
        "nll_steps": (args.nll_steps or model.timesteps) if args.nll else None,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": str(device),
        "diffusionkit_version": __version__,
        "scores": result,
    }
    print(_summary(record, data, space))
    print(format_table(result["model"], result["real"]))
    if result["real"] is not None:
        print(
            f"real images: {len(data.train)} training images of {data.builtin}, scored the "
            "same way (what a perfect model reaches at this N)"
        )
    if json_path is not None:
        from diffusionkit.utils.atomic import atomic_write_text

        atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def _summary(record: dict[str, Any], data: EvalData, space: FeatureSpace | None) -> str:
    """The report's first line: what was evaluated, and how."""
    size, channels = record["image_size"], record["channels"]
    parts = []
    if space is not None:
        parts.append(
            f"{record['n']} samples ({record['sampler']}, {record['steps']} network calls, "
            f"seed {record['seed']}) in the features of {space.described}"
        )
    if record["nll_steps"] is not None:
        parts.append(f"bits/dim with {record['nll_steps']} network calls per image")
    return f"{record['model']} on {data.described} ({size}x{size}x{channels}): " + "; ".join(parts)
