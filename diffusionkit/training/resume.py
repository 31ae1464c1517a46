"""What a resume may change, and what it may not.

A checkpoint continues one training problem. Settings that *define* that problem must be the
same when it is resumed, or the resume is refused with every difference named:

* the network (its class and every constructor argument: the weights only fit their
  architecture, and the exported ``config.json`` records it);
* the noise schedule and its number of steps ``T``, the prediction target and the loss
  weighting (together, the objective the weights were optimised for);
* the image shape ``(C, H, W)``, the dataset's size, its classes and the channels of its
  conditioning images (the data order, the class embedding and the network's input refer to
  them); whether the network is class-conditional and how many conditioning channels it takes
  are part of its constructor arguments, above;
* the seed (the data order and the noise stream of the checkpoint continue; a new seed
  could not take effect without breaking the exact continuation, so it is refused rather than
  recorded while not in effect).

Everything else may change and takes effect for real from the first resumed step: the learning
rate, its warm-up and decay, the total number of steps, the batch size and gradient
accumulation, weight decay and Adam's betas (written into the resumed optimizer), gradient
clipping, the EMA decay and its warm-up, precision, the condition dropout of classifier-free
guidance (``cond_drop_prob``: how often the unconditional model is trained is a choice of
optimisation, which may start late, e.g. to add guidance to a conditional run), and the
checkpoint, sample and logging cadence. :func:`changed_settings` lists those that differ, for the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FIXED_MODEL_PARTS",
    "FIXED_SETTINGS",
    "ResumeMismatchError",
    "ResumeReport",
    "apply_optimizer_settings",
    "changed_settings",
    "check_trainer_state",
    "model_differences",
]

#: parts of the model description (``state.json["model"]``) a resume may not change
FIXED_MODEL_PARTS = ("net", "schedule", "prediction", "weighting", "learned_variance", "vlb_weight")
#: ``Trainer`` settings a resume may not change
FIXED_SETTINGS = ("seed",)
# settings that are not about the training problem or its optimisation (where files go)
_NOT_REPORTED = frozenset({"out_dir", "progress"})


class ResumeMismatchError(ValueError):
    """A checkpoint does not fit the model, data or settings it is resumed with.

    Attributes:
        differences: one line per difference, e.g. ``"schedule.timesteps: 20 in the
            checkpoint, 30 here"``.
    """

    def __init__(self, message: str, differences: list[str]) -> None:
        super().__init__(message)
        self.differences = differences


@dataclass
class ResumeReport:
    """What :meth:`Trainer.resume` did, for the user to read.

    Attributes:
        checkpoint: the checkpoint resumed from.
        step: its step.
        verified: whether its files were checked against a manifest.
        skipped: newer checkpoints passed over as damaged (with ``fallback=True``).
        set_aside: newer checkpoints of the run folder moved to ``checkpoints/abandoned/``.
        changed: settings that differ from the checkpoint's: name -> (old, new).
    """

    checkpoint: Path
    step: int
    verified: bool
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """What the user should know beyond the resume itself: an unverifiable checkpoint,
        damaged ones skipped, newer ones moved aside."""
        out = []
        if not self.verified:
            out.append(
                f"{self.checkpoint} was written before checkpoints had checksums: it cannot be "
                "verified"
            )
        out += [f"skipped damaged checkpoint {path}: {problem}" for path, problem in self.skipped]
        if self.set_aside:
            out.append(
                f"resumed from step {self.step}: moved the newer checkpoints of the abandoned "
                f"branch to {self.set_aside[0].parent} (delete them when no longer needed): "
                + ", ".join(p.name for p in self.set_aside)
            )
        return out

    def changes(self) -> str | None:
        """The changed settings in one line, or ``None``."""
        if not self.changed:
            return None
        return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changed.items())


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            if key == "module":  # where the class lives may move; its name and config count
                continue
            _diff(old.get(key), new.get(key), f"{path}.{key}" if path else str(key), out)
    elif old != new:
        out.append(f"{path}: {old!r} in the checkpoint, {new!r} here")


def model_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The differences between two model descriptions in the parts that define the problem.

    A part missing from ``saved`` (a checkpoint written before it was recorded) is not
    compared.
    """
    out: list[str] = []
    for part in FIXED_MODEL_PARTS:
        if part in saved:
            _diff(saved[part], current.get(part), part, out)
    return out


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The changeable settings whose value differs: name -> ``(checkpoint's, current)``."""
    return {
        key: (saved[key], value)
        for key, value in current.items()
        if key in saved
        and key not in FIXED_SETTINGS
        and key not in _NOT_REPORTED
        and _normal(saved[key]) != _normal(value)
    }


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def apply_optimizer_settings(
    optimizer: torch.optim.Optimizer, wanted: list[dict[str, Any]]
) -> None:
    """Write the hyperparameters of ``wanted`` (the optimizer's own groups before the
    checkpoint was loaded into it) back over those the checkpoint brought.

    ``load_state_dict`` replaces every parameter group's settings with the saved ones, so a
    new weight decay or new betas would otherwise be recorded but not used.
    """
    for group, now in zip(optimizer.param_groups, wanted, strict=True):
        for key, value in now.items():
            if key not in ("params", "lr", "initial_lr"):
                group[key] = value


def _int_field(state: Mapping[str, Any], path: tuple[str, ...], minimum: int = 0) -> int:
    value: Any = state
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{'.'.join(path)} is {value!r}; it must be an integer >= {minimum}")
    return value


def check_trainer_state(state: Mapping[str, Any], stems: set[str], where: Path) -> None:
    """Check that a checkpoint holds what a ``Trainer`` resumes from, before any of it is used.

    Args:
        state: its ``state.json``.
        stems: the tensor files it holds (``"model"``, ``"ema"``, ...).
        where: the checkpoint folder, for the message.

    Raises:
        ValueError: a file or a field is missing or malformed; the message names it.
    """
    missing = [f"{s}.safetensors" for s in ("model", "ema", "optimizer", "rng") if s not in stems]
    if missing:
        raise ValueError(
            f"checkpoint {where} lacks {', '.join(missing)}: it cannot be resumed exactly; "
            "resume from another checkpoint of the run"
        )
    try:
        _int_field(state, ("ema", "num_updates"))
        for key in ("size", "epoch", "position"):
            _int_field(state, ("data_order", key))
        if not isinstance(state.get("optimizer"), Mapping):
            raise ValueError("optimizer is missing")
    except ValueError as error:
        raise ValueError(
            f"checkpoint {where}: state.json is malformed ({error}); resume from another "
            "checkpoint of the run"
        ) from None
