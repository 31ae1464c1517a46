"""``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` and the diffusers bridge, as methods.

:class:`~diffusionkit.DenoiseDiffusion` and :class:`~diffusionkit.UNet` inherit
:class:`PretrainedMixin`, whose methods hand the work to a :class:`CheckpointIO`: the core
defines what saving and loading are, and :mod:`diffusionkit.hub` (which sits above the core and
imports it, never the other way round) provides how. ``import diffusionkit`` registers the Hub's
implementation (:func:`set_checkpoint_io`); importing any ``diffusionkit`` module runs that
package ``__init__`` first, so the methods always find it. No module of the core imports
:mod:`diffusionkit.hub`, not even inside a function.

Why not ``huggingface_hub.PyTorchModelHubMixin``: it writes ``config.json`` from the JSON-able
constructor arguments and silently drops the rest (the network of a ``DenoiseDiffusion``), loads
weights non-strictly, writes in place (a crash leaves half a checkpoint) and renders model cards
with jinja2, which is not a dependency. These methods keep its names and arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn
from typing_extensions import Self

if TYPE_CHECKING:  # the Hub client is imported only by diffusionkit.hub, when it is used
    from huggingface_hub import CommitInfo

__all__ = ["CheckpointIO", "PretrainedMixin", "checkpoint_io", "set_checkpoint_io"]

StrPath = str | os.PathLike[str]
EmaWeights = nn.Module | Mapping[str, Tensor] | None


class CheckpointIO(Protocol):
    """What :class:`PretrainedMixin`'s methods need from a checkpoint implementation.

    Each method does what the mixin's method of the same name documents; ``model`` is the
    object the method was called on (a ``DenoiseDiffusion`` or a network), ``cls`` the class a
    classmethod was called on.
    """

    def save_pretrained(
        self, model: nn.Module, directory: StrPath, *, ema: EmaWeights, sample_grid: StrPath | None
    ) -> Path: ...

    def load_pretrained(
        self, cls: type, path_or_repo_id: StrPath, *, diffusers_only: bool, **options: Any
    ) -> nn.Module: ...

    def push_to_hub(self, model: nn.Module, repo_id: str, **options: Any) -> Any: ...

    def save_diffusers(
        self,
        model: nn.Module,
        directory: StrPath,
        *,
        sample_size: int | tuple[int, int],
        ema: EmaWeights,
    ) -> Path: ...


_IO: CheckpointIO | None = None


def set_checkpoint_io(io: CheckpointIO) -> None:
    """Install the implementation the mixin's methods use (``diffusionkit.hub`` does)."""
    global _IO
    _IO = io


def checkpoint_io() -> CheckpointIO:
    """The installed implementation; an error if none is (``diffusionkit`` was not imported)."""
    if _IO is None:
        raise RuntimeError(
            "no checkpoint implementation is installed: 'import diffusionkit' installs the Hub "
            "one (diffusionkit.hub)"
        )
    return _IO


def _module(obj: object) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise TypeError(f"PretrainedMixin needs an nn.Module, got {type(obj).__name__}")
    return obj


class PretrainedMixin:
    """Adds ``save_pretrained``, ``from_pretrained``, ``push_to_hub`` and diffusers conversion.

    On a :class:`~diffusionkit.DenoiseDiffusion` these save and load the whole model (network,
    schedule, sampler, prediction type); on a network class such as :class:`~diffusionkit.UNet`,
    the network alone (``UNet.from_pretrained`` also takes the network out of a full model's
    checkpoint or a diffusers pipeline). The format is described in
    :mod:`diffusionkit.hub.checkpoint`.
    """

    def save_pretrained(
        self,
        directory: StrPath,
        *,
        ema: nn.Module | Mapping[str, Tensor] | None = None,
        sample_grid: StrPath | None = None,
    ) -> Path:
        """Save to a folder: ``config.json``, ``model.safetensors``, a model card ``README.md``.

        The folder is written atomically: files are staged beside it and moved in with
        ``config.json`` last, which records each weights file's sha256, so a crash never leaves
        a checkpoint that loads with mixed or partial weights.

        Args:
            directory: the folder (created if needed; unrelated files in it are kept, and a
                ``README.md`` you wrote yourself is not overwritten).
            ema: EMA weights saved beside the raw ones as ``ema.safetensors`` and loaded by
                default: a module of the network's architecture (or the whole model, or an
                ``AveragedModel``), or a state dict with the network's tensor names.
            sample_grid: a PNG of samples, copied as ``sample_grid.png`` and shown on the card.

        Returns:
            The folder.

        Raises:
            TypeError: a component (network, schedule, sampler) is not registered or has no
                ``config()`` (a plain ``nn.Module`` cannot be saved: it cannot be rebuilt).
            ValueError: a component's ``config()`` does not rebuild it, or ``ema`` does not
                match the network.
        """
        return checkpoint_io().save_pretrained(
            _module(self), directory, ema=ema, sample_grid=sample_grid
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: StrPath,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: StrPath | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        map_location: str | torch.device = "cpu",
        use_ema: bool = True,
        allow_pickle: bool = False,
    ) -> Self:
        """Load from a folder or a Hub repo: a diffusionkit checkpoint or a diffusers pipeline.

        Loading is strict: every tensor must exist with the right shape, and nothing extra may
        be in the file. Weights are checked against the sha256 recorded in ``config.json``, and
        files from the Hub against the checksum the Hub announced, so a corrupt download fails
        here instead of sampling garbage.

        Args:
            path_or_repo_id: a local folder, or a Hub repo id such as ``"user/model"`` or
                ``"google/ddpm-cifar10-32"`` (diffusers DDPM pipelines are converted).
            revision: branch, tag or commit sha of the Hub repo (default: ``main``).
            token: Hub token for private repos (default: ``HF_TOKEN`` or the saved login).
            cache_dir: Hub cache folder (default: huggingface_hub's).
            local_files_only: use the cache only, never the network.
            force_download: download again even if cached (the fix for a corrupt cache).
            map_location: device of the returned model.
            use_ema: load the EMA weights when the checkpoint has them; ``False``: the raw ones.
            allow_pickle: let a diffusers checkpoint without safetensors be read from its
                pickled ``.bin`` with ``torch.load(weights_only=True)``; only for sources you
                trust. diffusionkit checkpoints never contain pickles.

        Returns:
            The model, in eval mode, on ``map_location``.

        Raises:
            CheckpointNotFoundError: the folder, repo, revision or a file does not exist, or the
                token cannot read the repo.
            CheckpointError: a file is corrupt, truncated, inconsistent, unsafe (a pickle without
                ``allow_pickle``), from a newer format, or describes something this class or
                diffusionkit cannot represent.
        """
        model = checkpoint_io().load_pretrained(
            cls,
            path_or_repo_id,
            diffusers_only=False,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            force_download=force_download,
            map_location=map_location,
            use_ema=use_ema,
            allow_pickle=allow_pickle,
        )
        assert isinstance(model, cls)
        return model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload diffusionkit model",
        branch: str | None = None,
        ema: nn.Module | Mapping[str, Tensor] | None = None,
        sample_grid: StrPath | None = None,
    ) -> CommitInfo:
        """Save (as :meth:`save_pretrained`) and upload to a Hub repo as one commit.

        Args:
            repo_id: ``"user/name"``; the repo is created if it does not exist.
            private: visibility of a newly created repo (``None``: the Hub's default).
            token: Hub token with write access (default: ``HF_TOKEN`` or the saved login).
            commit_message: the commit's title.
            branch: branch to commit to (created from ``main`` if missing); default ``main``.
            ema: EMA weights, as in :meth:`save_pretrained`.
            sample_grid: a PNG of samples for the model card.

        Returns:
            The commit: a ``str`` holding its URL, with the commit sha as ``.oid``.
        """
        return checkpoint_io().push_to_hub(
            _module(self),
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            branch=branch,
            ema=ema,
            sample_grid=sample_grid,
        )

    @classmethod
    def from_diffusers(
        cls,
        path_or_repo_id: StrPath,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: StrPath | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        map_location: str | torch.device = "cpu",
        allow_pickle: bool = False,
    ) -> Self:
        """Load a diffusers checkpoint: a ``DDPMPipeline``, or (for a network) a ``UNet2DModel``.

        Same as :meth:`from_pretrained` restricted to diffusers layouts: a pipeline folder or
        repo (``model_index.json``, ``unet/``, ``scheduler/``), or, for ``UNet.from_diffusers``,
        also a ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).
        Arguments as in :meth:`from_pretrained`.

        Raises:
            CheckpointError: the config uses a feature with no exact diffusionkit counterpart
                (the message names the field), or as :meth:`from_pretrained`.
        """
        model = checkpoint_io().load_pretrained(
            cls,
            path_or_repo_id,
            diffusers_only=True,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            force_download=force_download,
            map_location=map_location,
            use_ema=False,
            allow_pickle=allow_pickle,
        )
        assert isinstance(model, cls)
        return model

    def save_diffusers(
        self,
        directory: StrPath,
        *,
        sample_size: int | tuple[int, int],
        ema: nn.Module | Mapping[str, Tensor] | None = None,
    ) -> Path:
        """Export in diffusers' layout: a ``DDPMPipeline`` folder, or a ``UNet2DModel`` folder.

        ``DDPMPipeline.from_pretrained(directory)`` (or ``UNet2DModel.from_pretrained``) loads
        the result. Written atomically, like :meth:`save_pretrained`.

        Args:
            directory: the folder to write.
            sample_size: the training resolution (an int, or ``(height, width)``), which
                diffusers' pipelines sample at.
            ema: weights to export instead of the network's own (a pipeline holds one set);
                as in :meth:`save_pretrained`.

        Raises:
            ValueError: the model has no diffusers counterpart (a network other than
                :class:`~diffusionkit.UNet`, class conditioning, a schedule or sampler that
                ``DDPMScheduler`` cannot express, a UNet whose ``out_channels`` is not
                ``in_channels``, or ``2 * in_channels`` with ``learned_variance``, which
                exports as ``variance_type="learned_range"``); the message says which.
        """
        return checkpoint_io().save_diffusers(
            _module(self), directory, sample_size=sample_size, ema=ema
        )
