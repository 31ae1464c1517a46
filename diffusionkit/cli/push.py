"""``diffusionkit push``: upload a trained model (raw and EMA weights) to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import CLIError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``push`` subcommand to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "push",
        help="upload a trained model to the Hugging Face Hub",
        description=(
            "Upload the model of a run folder (its raw and EMA weights, config and sample "
            "grid) to a Hub repo, creating the repo if needed. The token comes from HF_TOKEN "
            "or a saved login ('hf auth login') and is never printed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="run folder to upload")
    parser.add_argument("--repo", required=True, metavar="USER/NAME", help="Hub repo id")
    parser.add_argument(
        "--private", action="store_true", help="create the repo as private (new repos only)"
    )
    parser.add_argument("--branch", default=None, metavar="NAME", help="branch (default: main)")
    parser.add_argument(
        "--message", default="Upload diffusionkit model", metavar="TEXT", help="commit message"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``diffusionkit push``; returns the exit status."""
    from diffusionkit import DenoiseDiffusion
    from diffusionkit.training.lock import who_holds

    folder = Path(args.model)
    holder = who_holds(folder)
    if holder is not None:
        raise CLIError(
            f"{folder} is being written by {holder} (a training run); push it when the run has "
            "finished, so that the upload is not a half-written model"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"{folder} holds no exported model (no config.json); train it to the end first"
        )
    try:
        weights = json.loads(config_file.read_text(encoding="utf-8")).get("weights", {})
    except (OSError, json.JSONDecodeError) as error:
        raise CLIError(f"cannot read {config_file}: {error}") from None
    model = DenoiseDiffusion.from_pretrained(folder, use_ema=False)
    ema = None
    if isinstance(weights, dict) and "ema" in weights:
        ema = DenoiseDiffusion.from_pretrained(folder, use_ema=True).net
    grid = folder / "sample_grid.png"
    commit = model.push_to_hub(
        args.repo,
        private=True if args.private else None,
        commit_message=args.message,
        branch=args.branch,
        ema=ema,
        sample_grid=grid if grid.is_file() else None,
    )
    oid = getattr(commit, "oid", None)
    print(f"pushed {folder} to {args.repo}" + (f" (commit {oid})" if oid else ""))
    return 0
