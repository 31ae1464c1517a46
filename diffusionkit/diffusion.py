"""``DenoiseDiffusion``: a network, a noise schedule and a sampler composed into one model.

Conventions: timesteps ``t`` are 0-based (``t = 0`` is the first noising step, paper step 1;
``t = T - 1`` the last) and images live in ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusionkit._random import Generators, randn
from diffusionkit.hub.mixin import PretrainedMixin
from diffusionkit.samplers import DDPMSampler, Sampler
from diffusionkit.schedules import LinearSchedule, NoiseSchedule, RespacedSchedule
from diffusionkit.spacing import Spacing

__all__ = ["DenoiseDiffusion", "Prediction", "SampleTrajectory"]

#: ``callback(step, t, x_t, x0_pred)`` called after every reverse step; ``step`` counts from 0.
StepCallback = Callable[[int, int, Tensor, Tensor], None]


class Prediction(str, Enum):
    """What the network predicts from ``x_t``.

    With ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

    * ``EPS``: the noise ``eps`` (Ho et al. 2020, eq. 11-12);
    * ``X0``: the clean image ``x0``;
    * ``V``: the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022,
      Sec. 4).
    """

    EPS = "eps"
    X0 = "x0"
    V = "v"


@dataclass
class SampleTrajectory:
    """The reverse chain of :meth:`DenoiseDiffusion.reverse_sample` (all tensors on the CPU).

    Attributes:
        samples: final samples ``(B, C, H, W)`` on the model's device.
        x_t: ``(S + 1, B, C, H, W)``: the initial noise, then ``x`` after each of the ``S`` steps.
        x0_pred: ``(S, B, C, H, W)``: the network's estimate of ``x0`` at each step.
        timesteps: ``(S,)`` the model timestep of each step, in the order visited (descending).
    """

    samples: Tensor
    x_t: Tensor
    x0_pred: Tensor
    timesteps: Tensor


def _split(out: Tensor, x_t: Tensor, a: Tensor | float, b: Tensor | float, kind: Prediction):
    """Return ``(eps, x0)`` from a network output, where ``a = sqrt(abar)``, ``b = sqrt(1 - abar)``."""
    if kind is Prediction.EPS:
        return out, (x_t - b * out) / a
    if kind is Prediction.X0:
        return (x_t - a * out) / b, out
    # v = a eps - b x0 and x_t = a x0 + b eps, with a² + b² = 1  (Salimans & Ho 2022, App. D)
    return b * x_t + a * out, a * x_t - b * out


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


class DenoiseDiffusion(nn.Module, PretrainedMixin):
    """A DDPM: network + noise schedule + sampler (Ho et al. 2020).

    Args:
        net: the denoising network, a :class:`~diffusionkit.Denoiser` or any ``nn.Module``
            called as ``net(x, t)`` with ``x`` ``(B, C, H, W)`` and ``t`` ``(B,)`` int64.
        schedule: the forward-process schedule; a new :class:`LinearSchedule` (``T = 1000``)
            by default.
        sampler: the default reverse step; a new :class:`DDPMSampler` by default.
        prediction: what ``net`` predicts: ``"eps"``, ``"x0"`` or ``"v"`` (see :class:`Prediction`).

    Example:
        >>> from diffusionkit import DenoiseDiffusion, UNet
        >>> model = DenoiseDiffusion(UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8))
        >>> loss = model.loss(torch.rand(4, 1, 8, 8) * 2 - 1)
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | None = None,
        sampler: Sampler | None = None,
        prediction: Prediction | str = Prediction.EPS,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if schedule is None:
            schedule = LinearSchedule()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if sampler is None:
            sampler = DDPMSampler()
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a Sampler, got {type(sampler).__name__}")
        try:
            prediction = Prediction(prediction)
        except ValueError:
            valid = ", ".join(repr(p.value) for p in Prediction)
            raise ValueError(f"prediction must be one of {valid}; got {prediction!r}") from None
        self.net = net
        self.schedule = schedule
        self.sampler = sampler
        self.prediction = prediction
        # schedule tensors cast once per (name, device, dtype): not buffers, so they never
        # enter the state dict and never move on every call
        self._coef_cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps ``T`` of the schedule."""
        return self.schedule.timesteps

    # ---------------------------------------------------------------- helpers
    def _coef(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """``schedule.<name>[t]`` as ``(B, 1, 1, 1)`` on ``like``'s device and dtype."""
        key = (name, like.device, like.dtype)
        table = self._coef_cache.get(key)
        if table is None:
            table = getattr(self.schedule, name).to(device=like.device, dtype=like.dtype)
            self._coef_cache[key] = table
        return table[t].view(-1, *([1] * (like.ndim - 1)))

    def _check_images(self, name: str, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must be shaped (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        self._check_shape(tuple(x.shape))

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        check = getattr(self.net, "check_input_shape", None)
        if callable(check):
            check(shape)
        elif len(shape) != 4:
            raise ValueError(f"expected images shaped (B, C, H, W), got shape {shape}")

    def _check_t(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((batch,), t, dtype=torch.int64, device=device)
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be an int or an int64 tensor, got {type(t).__name__}")
        if t.dtype in (torch.bool,) or t.is_floating_point() or t.is_complex():
            raise TypeError(f"t must hold integer timesteps (int64), got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"t must be shaped ({batch},) to match the batch, got {tuple(t.shape)}"
            )
        lo, hi = torch.aminmax(t)
        if lo.item() < 0 or hi.item() >= self.timesteps:
            raise ValueError(
                f"t must lie in [0, {self.timesteps - 1}] (0-based: t = 0 is the first noising "
                f"step), got values in [{lo.item()}, {hi.item()}]"
            )
        return t.to(device=device, dtype=torch.int64)

    def _net(self, x: Tensor, t: Tensor, labels: Tensor | None, cond: Tensor | None) -> Tensor:
        kwargs: dict[str, Any] = {}
        if labels is not None:
            kwargs["labels"] = labels
        if cond is not None:
            kwargs["cond"] = cond
        out = self.net(x, t, **kwargs)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"net must return a tensor shaped like its input {tuple(x.shape)}; got {got}"
            )
        return out

    # ------------------------------------------------------- forward process
    def forward_sample(
        self,
        x0: Tensor,
        t: Tensor | int,
        noise: Tensor | None = None,
        *,
        generator: Generators = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)`` (Ho et al. 2020, eq. 4).

        Args:
            x0: clean images ``(B, C, H, W)`` in ``[-1, 1]``.
            t: 0-based timesteps ``(B,)`` int64, or one int for the whole batch.
            noise: ``eps`` ``(B, C, H, W)``; drawn from ``generator`` if ``None``.
            generator: source of ``noise`` when it is not given.

        Returns:
            ``(x_t, noise)``, both ``(B, C, H, W)``.
        """
        self._check_images("x0", x0)
        t = self._check_t(t, x0.shape[0], x0.device)
        if noise is None:
            noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        a = self._coef("sqrt_alphas_cumprod", t, x0)
        b = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
        return a * x0 + b * noise, noise

    # ----------------------------------------------------------------- loss
    def loss(
        self,
        x0: Tensor,
        t: Tensor | int | None = None,
        noise: Tensor | None = None,
        *,
        generator: Generators = None,
        labels: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The simplified DDPM objective (Ho et al. 2020, eq. 14) for any prediction type.

        ``E_{t, eps} || target - net(x_t, t) ||²`` with ``target`` = ``eps``, ``x0`` or ``v``.

        Args:
            x0: clean images ``(B, C, H, W)`` in ``[-1, 1]``.
            t: 0-based timesteps ``(B,)``; uniform over ``[0, T)`` when ``None``.
            noise: ``eps`` ``(B, C, H, W)``; standard normal when ``None``.
            generator: source of ``t`` and ``noise`` when they are not given (a single
                generator; a list of per-sample generators is accepted for ``noise`` only
                when ``t`` is given).
            labels: class labels ``(B,)`` passed to the network, if it takes them.
            cond: conditioning images passed to the network, if it takes them.

        Returns:
            Scalar mean squared error.
        """
        self._check_images("x0", x0)
        lo, hi = torch.aminmax(x0.detach())
        lo_v, hi_v = lo.item(), hi.item()
        if not (abs(lo_v) < float("inf") and abs(hi_v) < float("inf")):
            raise ValueError("x0 contains NaN or infinite values")
        if lo_v < -1.001 or hi_v > 1.001:
            raise ValueError(
                f"x0 must be scaled to [-1, 1] (diffusionkit's data convention); got values in "
                f"[{lo_v:.3g}, {hi_v:.3g}]. Map [0, 1] data with x * 2 - 1, or use "
                "diffusionkit.data, which scales for you."
            )
        batch = x0.shape[0]
        if t is None:
            if generator is not None and not isinstance(generator, torch.Generator):
                raise ValueError("pass t explicitly when generator is a list of generators")
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.timesteps, (batch,), generator=generator, device=device)
        t = self._check_t(t, batch, x0.device)
        x_t, noise = self.forward_sample(x0, t, noise, generator=generator)
        out = self._net(x_t, t, labels, cond)
        if self.prediction is Prediction.EPS:
            target = noise
        elif self.prediction is Prediction.X0:
            target = x0
        else:
            a = self._coef("sqrt_alphas_cumprod", t, x0)
            b = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
            target = a * noise - b * x0
        return F.mse_loss(out.float(), target.float())

    def forward(self, x0: Tensor, **kwargs: Any) -> Tensor:
        """Same as :meth:`loss`, so that wrappers such as DistributedDataParallel can call it."""
        return self.loss(x0, **kwargs)

    # ---------------------------------------------------------- predictions
    def _predict(
        self, x_t: Tensor, t: Tensor | int, labels: Tensor | None, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        self._check_images("x_t", x_t)
        t = self._check_t(t, x_t.shape[0], x_t.device)
        out = self._net(x_t, t, labels, cond)
        a = self._coef("sqrt_alphas_cumprod", t, x_t)
        b = self._coef("sqrt_one_minus_alphas_cumprod", t, x_t)
        return _split(out, x_t, a, b, self.prediction)

    def predict_x0(
        self,
        x_t: Tensor,
        t: Tensor | int,
        *,
        labels: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The network's estimate of ``x0`` from ``x_t`` ``(B, C, H, W)`` at timesteps ``t`` ``(B,)``."""
        return self._predict(x_t, t, labels, cond)[1]

    def predict_eps(
        self,
        x_t: Tensor,
        t: Tensor | int,
        *,
        labels: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The network's estimate of the noise ``eps`` in ``x_t`` ``(B, C, H, W)`` at ``t`` ``(B,)``."""
        return self._predict(x_t, t, labels, cond)[0]

    # -------------------------------------------------------------- sampling
    @overload
    def reverse_sample(
        self,
        shape: Sequence[int],
        *,
        generator: Generators = ...,
        sampler: Sampler | None = ...,
        steps: int | None = ...,
        spacing: Spacing | str = ...,
        progress: bool = ...,
        return_intermediates: Literal[False] = ...,
        clip: bool = ...,
        labels: Tensor | None = ...,
        cond: Tensor | None = ...,
        callback: StepCallback | None = ...,
    ) -> Tensor: ...

    @overload
    def reverse_sample(
        self,
        shape: Sequence[int],
        *,
        generator: Generators = ...,
        sampler: Sampler | None = ...,
        steps: int | None = ...,
        spacing: Spacing | str = ...,
        progress: bool = ...,
        return_intermediates: Literal[True],
        clip: bool = ...,
        labels: Tensor | None = ...,
        cond: Tensor | None = ...,
        callback: StepCallback | None = ...,
    ) -> SampleTrajectory: ...

    def reverse_sample(
        self,
        shape: Sequence[int],
        *,
        generator: Generators = None,
        sampler: Sampler | None = None,
        steps: int | None = None,
        spacing: Spacing | str = Spacing.TRAILING,
        progress: bool = True,
        return_intermediates: bool = False,
        clip: bool = False,
        labels: Tensor | None = None,
        cond: Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor | SampleTrajectory:
        """Sample images by running the reverse chain from ``x_{T-1} ~ N(0, I)``.

        Runs under ``torch.inference_mode`` with the network in eval mode (its previous mode is
        restored afterwards) and shows a tqdm progress bar.

        Args:
            shape: ``(B, C, H, W)`` of the samples.
            generator: source of all randomness: one ``torch.Generator``, or a list of ``B``,
                one per sample (then sample ``i`` depends only on ``generator[i]``). The same
                seed gives bit-identical samples.
            sampler: reverse step to use instead of :attr:`sampler` for this call.
            steps: number of reverse steps (``1 <= steps <= T``); ``None`` means all ``T``.
                Fewer steps respace the schedule (see :class:`RespacedSchedule`).
            spacing: which timesteps ``steps`` keeps (see :class:`Spacing`).
            progress: show a progress bar.
            return_intermediates: also return the whole chain as a :class:`SampleTrajectory`.
            clip: clamp the final samples to ``[-1, 1]``.
            labels: class labels ``(B,)`` for a class-conditional network.
            cond: conditioning images ``(B, C_cond, H, W)`` for an image-conditional network.
            callback: ``callback(step, t, x_t, x0_pred)`` after every reverse step.

        Returns:
            Samples ``(B, C, H, W)`` in the data convention ``[-1, 1]`` (not clamped unless
            ``clip``), or a :class:`SampleTrajectory` with ``return_intermediates=True``.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"shape must be (B, C, H, W) with positive entries, got {shape}")
        self._check_shape(shape)
        sampler = self.sampler if sampler is None else sampler
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a Sampler, got {type(sampler).__name__}")
        schedule, model_t = self._sampling_schedule(steps, Spacing(spacing))
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                x = randn(shape, generator, device=device, dtype=dtype)
                xs: list[Tensor] | None = [x.cpu()] if return_intermediates else None
                x0s: list[Tensor] = []
                t_dev = model_t.to(device)
                order = range(schedule.timesteps - 1, -1, -1)
                for step, i in enumerate(tqdm(order, desc="sampling", disable=not progress)):
                    coef = schedule.step_coefficients(i)
                    out = self._net(x, t_dev[i].expand(shape[0]), labels, cond)
                    a, b = coef.alpha_cumprod**0.5, (1.0 - coef.alpha_cumprod) ** 0.5
                    eps, x0 = _split(out, x, a, b, self.prediction)
                    x = sampler.step(x, eps, x0, coef, generator)
                    if xs is not None:
                        xs.append(x.cpu())
                        x0s.append(x0.cpu())
                    if callback is not None:
                        callback(step, int(model_t[i]), x, x0)
                if clip:
                    x = x.clamp(-1.0, 1.0)
        finally:
            self.net.train(was_training)
        if xs is None:
            return x
        return SampleTrajectory(
            samples=x, x_t=torch.stack(xs), x0_pred=torch.stack(x0s), timesteps=model_t.flip(0)
        )

    def _sampling_schedule(
        self, steps: int | None, spacing: Spacing
    ) -> tuple[NoiseSchedule, Tensor]:
        """The schedule to step through and the model timestep of each of its indices."""
        total = self.timesteps
        if steps is None or steps == total:
            return self.schedule, torch.arange(total)
        kept = spacing.timesteps(total, steps)
        return RespacedSchedule(self.schedule, kept), kept
