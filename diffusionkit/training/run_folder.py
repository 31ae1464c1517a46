"""What a run folder may hold, so that training never overwrites or mixes in anything else.

A run writes and replaces files in its folder (checkpoints, sample grids, the metrics log and,
at the end, the exported model: ``config.json``, weights, model card). A folder that holds
other files (someone's notes, another program's ``config.json``) or another run's checkpoints
is refused before anything is written, with the entries named. Hidden entries (names starting
with ".") are not checked: training writes only its lock file and temporary files under such
names, and never touches another hidden file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusionkit.training.checkpoint import CHECKPOINTS_DIRNAME
from diffusionkit.utils.files import read_regular

__all__ = ["RUN_ENTRIES", "RunFolderError", "check_run_folder"]

#: entries a run folder may hold: what training writes, what ``save_pretrained`` writes
#: (``diffusionkit.hub.checkpoint``), and the command line's ``train_config.json``
RUN_ENTRIES = frozenset(
    {
        CHECKPOINTS_DIRNAME,
        "samples",
        "metrics.jsonl",
        "samples.png",
        "denoise.gif",
        "train_config.json",
        "config.json",
        "model.safetensors",
        "ema.safetensors",
        "sample_grid.png",
        "README.md",
    }
)
_MODEL_CONFIG = "config.json"
_FORMAT_KEY = "diffusionkit_format"


class RunFolderError(ValueError):
    """A run folder holds something training must not overwrite or mix with."""


def _entries(folder: Path) -> list[str]:
    return sorted(
        name for name in os.listdir(folder) if not name.startswith(".")
    )  # hidden entries: see the module docstring


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not _entries(path)


def _names(entries: list[str], folder: Path) -> str:
    shown = [f"{e}/" if (folder / e).is_dir() else e for e in entries[:5]]
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return ", ".join(shown) + more


def check_run_folder(folder: str | os.PathLike[str], *, new_run: bool) -> None:
    """Refuse a run folder that holds anything training must not touch.

    Args:
        folder: the run folder (need not exist).
        new_run: ``True`` for a run starting at step 0, which needs a folder that is new or
            empty; ``False`` for a resumed run, whose folder may hold the run's own files.

    Raises:
        RunFolderError: the folder is a file, holds entries that are not a run's, holds a
            ``config.json`` that is not a diffusionkit model's, or (``new_run``) holds a run.
    """
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} is a file; choose a folder")
    entries = _entries(folder)
    foreign = [e for e in entries if e not in RUN_ENTRIES]
    if foreign:
        raise RunFolderError(
            f"{folder} holds entries that are not part of a training run "
            f"({_names(foreign, folder)}); a run writes and replaces files in its folder, so it "
            "needs one of its own: choose a new run folder, or move those entries away"
        )
    config = folder / _MODEL_CONFIG
    if config.exists():
        try:
            data = json.loads(read_regular(config, "model config"))
            ours = isinstance(data, dict) and _FORMAT_KEY in data
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise RunFolderError(
                f"{config} is not a diffusionkit model's config (no {_FORMAT_KEY!r} in it); "
                "training would replace it when it exports the model: move it away, or "
                "choose a new run folder"
            )
    if new_run:
        held = [e for e in entries if not _is_empty_dir(folder / e)]
        if held:
            raise RunFolderError(
                f"{folder} already holds a training run ({_names(held, folder)}); resume it to "
                "continue, or choose a new run folder"
            )
