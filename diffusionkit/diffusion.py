"""``DenoiseDiffusion``: a network, a noise schedule and a sampler composed into one model.

Conventions: timesteps ``t`` are 0-based (``t = 0`` is the first noising step, paper step 1;
``t = T - 1`` the last) and images live in ``[-1, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffusionkit._random import Generators, randn
from diffusionkit.conditioning import check_cond, check_labels, drop_condition, drop_mask
from diffusionkit.editing import Inpainting, check_image, noised
from diffusionkit.guidance import guided
from diffusionkit.hub.mixin import PretrainedMixin
from diffusionkit.prediction import Prediction, predicted_eps, split_prediction
from diffusionkit.samplers import DDPMSampler, Sampler, get_sampler
from diffusionkit.sampling_plan import SamplingPlan, plan_sampling
from diffusionkit.schedules import LinearSchedule, NoiseSchedule
from diffusionkit.spacing import Spacing
from diffusionkit.weighting import LossWeighting

__all__ = ["DenoiseDiffusion", "Prediction", "SampleTrajectory"]

#: ``callback(step, t, x_t, x0_pred)`` called after every reverse step; ``step`` counts from 0.
StepCallback = Callable[[int, int, Tensor, Tensor], None]


@dataclass
class SampleTrajectory:
    """The reverse chain of :meth:`DenoiseDiffusion.reverse_sample` (all tensors on the CPU).

    Attributes:
        samples: final samples ``(B, C, H, W)`` on the model's device.
        x_t: ``(S + 1, B, C, H, W)``: the initial ``x``, then ``x`` after each of the ``S`` steps.
        x0_pred: ``(S, B, C, H, W)``: the network's estimate of ``x0`` at each step.
        timesteps: ``(S,)`` the model timestep of each step, in the order visited (descending).
    """

    samples: Tensor
    x_t: Tensor
    x0_pred: Tensor
    timesteps: Tensor


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
        sampler: the default reverse step: a :class:`Sampler`, or a registered name such as
            ``"ddim"`` (see :func:`~diffusionkit.get_sampler`); a new :class:`DDPMSampler` by
            default.
        prediction: what ``net`` predicts: ``"eps"``, ``"x0"`` or ``"v"`` (see :class:`Prediction`).
        weighting: per-timestep weight of the training loss, e.g.
            :class:`~diffusionkit.MinSNRWeighting` (Hang et al. 2023); ``None`` is the simple
            unweighted objective (Ho et al. 2020, eq. 14). It only affects :meth:`loss`.

    Example:
        >>> from diffusionkit import DenoiseDiffusion, UNet
        >>> model = DenoiseDiffusion(UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8))
        >>> loss = model.loss(torch.rand(4, 1, 8, 8) * 2 - 1)
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | None = None,
        sampler: Sampler | str | None = None,
        prediction: Prediction | str = Prediction.EPS,
        weighting: LossWeighting | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if schedule is None:
            schedule = LinearSchedule()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        sampler = DDPMSampler() if sampler is None else get_sampler(sampler)
        if weighting is not None and not isinstance(weighting, LossWeighting):
            raise TypeError(
                f"weighting must be a LossWeighting or None, got {type(weighting).__name__}"
            )
        try:
            prediction = Prediction(prediction)
        except ValueError:
            valid = ", ".join(repr(p.value) for p in Prediction)
            raise ValueError(f"prediction must be one of {valid}; got {prediction!r}") from None
        self.net = net
        self.schedule = schedule
        self.sampler = sampler
        self.prediction = prediction
        self.weighting = weighting
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
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        cond_drop_prob: float = 0.0,
    ) -> Tensor:
        """The simplified DDPM objective (Ho et al. 2020, eq. 14) for any prediction type.

        ``E_{t, eps} w_t || target - net(x_t, t) ||²`` with ``target`` = ``eps``, ``x0`` or
        ``v`` and ``w_t = 1`` unless the model has a :attr:`weighting`.

        Args:
            x0: clean images ``(B, C, H, W)`` in ``[-1, 1]``.
            t: 0-based timesteps ``(B,)``; uniform over ``[0, T)`` when ``None``.
            noise: ``eps`` ``(B, C, H, W)``; standard normal when ``None``.
            generator: source of ``t``, ``noise`` and the condition dropout, in that order,
                when they are drawn (a single generator; a list of per-sample generators is
                accepted for ``noise`` and the dropout only when ``t`` is given).
            labels: class labels ``(B,)`` int64 (or one int for the batch), ``-1`` = no label;
                checked against the network's ``num_classes`` when it has one.
            cond: conditioning images ``(B, C_cond, H, W)``.
            cond_drop_prob: probability, per sample, of replacing its condition by the null
                condition (label ``-1`` and/or an all-zero ``cond``, jointly), which trains the
                unconditional model that classifier-free guidance needs (Ho & Salimans 2022,
                Algorithm 1; they use 0.1 to 0.2).

        Returns:
            Scalar loss: the mean squared error, or the mean of per-sample weighted squared
            errors with a :attr:`weighting`.
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
        labels_t = check_labels(labels, batch, self.net, x0.device)
        cond_t = check_cond(cond, x0.shape, self.net, x0.device, x0.dtype)
        if isinstance(cond_drop_prob, bool) or not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be a number in [0, 1], got {cond_drop_prob!r}")
        if cond_drop_prob > 0 and labels_t is None and cond_t is None:
            raise ValueError("cond_drop_prob needs a condition to drop: pass labels and/or cond")
        if t is None:
            if generator is not None and not isinstance(generator, torch.Generator):
                raise ValueError("pass t explicitly when generator is a list of generators")
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.timesteps, (batch,), generator=generator, device=device)
        t = self._check_t(t, batch, x0.device)
        x_t, noise = self.forward_sample(x0, t, noise, generator=generator)
        if cond_drop_prob > 0:
            drop = drop_mask(batch, cond_drop_prob, generator, x0.device)
            labels_t, cond_t = drop_condition(labels_t, cond_t, drop)
        out = self._net(x_t, t, labels_t, cond_t)
        if self.prediction is Prediction.EPS:
            target = noise
        elif self.prediction is Prediction.X0:
            target = x0
        else:
            a = self._coef("sqrt_alphas_cumprod", t, x0)
            b = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
            target = a * noise - b * x0
        if self.weighting is None:
            return F.mse_loss(out.float(), target.float())
        per_sample = (out.float() - target.float()).square().flatten(1).mean(dim=1)  # (B,)
        snr = self._coef("snr", t, per_sample)  # (B,) float32
        return (self.weighting.weights(snr, self.prediction) * per_sample).mean()

    def forward(self, x0: Tensor, **kwargs: Any) -> Tensor:
        """Same as :meth:`loss`, so that wrappers such as DistributedDataParallel can call it."""
        return self.loss(x0, **kwargs)

    # ---------------------------------------------------------- predictions
    def _predict(
        self, x_t: Tensor, t: Tensor | int, labels: Tensor | None, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        self._check_images("x_t", x_t)
        t = self._check_t(t, x_t.shape[0], x_t.device)
        labels = check_labels(labels, x_t.shape[0], self.net, x_t.device)
        cond = check_cond(cond, x_t.shape, self.net, x_t.device, x_t.dtype)
        out = self._net(x_t, t, labels, cond)
        a = self._coef("sqrt_alphas_cumprod", t, x_t)
        b = self._coef("sqrt_one_minus_alphas_cumprod", t, x_t)
        return split_prediction(out, x_t, a, b, self.prediction)

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
        shape: Sequence[int] | None = ...,
        *,
        generator: Generators = ...,
        sampler: Sampler | str | None = ...,
        steps: int | None = ...,
        spacing: Spacing | str = ...,
        start_step: int | None = ...,
        end_step: int | None = ...,
        x_init: Tensor | None = ...,
        x_known: Tensor | None = ...,
        mask: Tensor | None = ...,
        resample_jumps: int = ...,
        labels: Tensor | int | None = ...,
        cond: Tensor | None = ...,
        guidance_scale: float | None = ...,
        progress: bool = ...,
        clip: bool = ...,
        callback: StepCallback | None = ...,
        return_intermediates: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def reverse_sample(
        self,
        shape: Sequence[int] | None = ...,
        *,
        generator: Generators = ...,
        sampler: Sampler | str | None = ...,
        steps: int | None = ...,
        spacing: Spacing | str = ...,
        start_step: int | None = ...,
        end_step: int | None = ...,
        x_init: Tensor | None = ...,
        x_known: Tensor | None = ...,
        mask: Tensor | None = ...,
        resample_jumps: int = ...,
        labels: Tensor | int | None = ...,
        cond: Tensor | None = ...,
        guidance_scale: float | None = ...,
        progress: bool = ...,
        clip: bool = ...,
        callback: StepCallback | None = ...,
        return_intermediates: Literal[True],
    ) -> SampleTrajectory: ...

    def reverse_sample(
        self,
        shape: Sequence[int] | None = None,
        *,
        generator: Generators = None,
        sampler: Sampler | str | None = None,
        steps: int | None = None,
        spacing: Spacing | str = Spacing.TRAILING,
        start_step: int | None = None,
        end_step: int | None = None,
        x_init: Tensor | None = None,
        x_known: Tensor | None = None,
        mask: Tensor | None = None,
        resample_jumps: int = 0,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        guidance_scale: float | None = None,
        progress: bool = True,
        clip: bool = False,
        callback: StepCallback | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | SampleTrajectory:
        """Sample images by running the reverse chain, by default from ``x_{T-1} ~ N(0, I)``.

        Runs under ``torch.inference_mode`` with the network in eval mode (its previous mode is
        restored afterwards) and shows a tqdm progress bar. All timesteps are 0-based model
        timesteps; :mod:`diffusionkit.sampling_plan` states how ``steps``, ``spacing``,
        ``start_step`` and ``end_step`` choose the visited ones.

        Args:
            shape: ``(B, C, H, W)`` of the samples; may be left out when ``x_init`` or
                ``x_known`` gives it.
            generator: source of all randomness: one ``torch.Generator``, or a list of ``B``,
                one per sample (then sample ``i`` depends only on ``generator[i]``). The same
                seed gives bit-identical samples.
            sampler: reverse step to use instead of :attr:`sampler` for this call: a
                :class:`Sampler` or a registered name (``"ddpm"``, ``"posterior-mean"``,
                ``"ddim"``; see :func:`~diffusionkit.get_sampler`).
            steps: number of network calls (``1 <= steps <= T``, or the window's size with
                ``start_step``/``end_step``); ``None`` means every timestep. Fewer steps
                respace the schedule (see :class:`RespacedSchedule`).
            spacing: which timesteps ``steps`` keeps (see :class:`Spacing`).
            start_step: image-to-image (SDEdit, Meng et al. 2022): the model timestep
                ``0 <= k <= T - 1`` that ``x_init`` is noised to in closed form, and where the
                chain starts. Needs ``x_init``. Small ``k`` stays close to ``x_init``.
            end_step: stop at ``x_e`` for ``0 <= e < start_step`` (a noisy result at model
                timestep ``e``) instead of the clean ``e = -1`` (the default).
            x_init: ``(B or 1, C, H, W)`` images in ``[-1, 1]`` to start from; needs
                ``start_step``.
            x_known: ``(B or 1, C, H, W)`` images in ``[-1, 1]`` for inpainting (RePaint,
                Lugmayr et al. 2022): before every network call, the known region of ``x_t``
                is replaced by ``x_known`` noised to ``t``, and the result equals ``x_known``
                exactly there. Needs ``mask``.
            mask: ``(B or 1, C or 1, H, W)`` of 0 and 1 (or bool): 1 = known (kept from
                ``x_known``), 0 = generated.
            resample_jumps: RePaint resampling: after each step but the last, jump back
                (``x_t ~ q(x_t | x_{t-1})``) and redo the step, this many times; each repeat
                costs one more network call per step. ``0`` is plain replacement.
            labels: class labels ``(B,)`` (or one int) for a class-conditional network; ``-1``
                is the null label.
            cond: conditioning images ``(B, C_cond, H, W)`` for an image-conditional network.
            guidance_scale: classifier-free guidance scale ``w`` (Ho & Salimans 2022; see
                :mod:`diffusionkit.guidance`): ``out_u + w (out_c - out_u)``, computed with
                one batched pass of ``2B``. ``None`` or ``1``: plain conditional sampling.
            progress: show a progress bar.
            clip: clamp the final samples to ``[-1, 1]``.
            callback: ``callback(step, t, x_t, x0_pred)`` after every reverse step (the
                repeats of a resampled step count once).
            return_intermediates: also return the whole chain as a :class:`SampleTrajectory`.

        Returns:
            Samples ``(B, C, H, W)`` in the data convention ``[-1, 1]`` (not clamped unless
            ``clip``), or a :class:`SampleTrajectory` with ``return_intermediates=True``.
        """
        shape = self._sample_shape(shape, x_init, x_known)
        sampler = self.sampler if sampler is None else get_sampler(sampler)
        if (x_init is None) != (start_step is None):
            raise ValueError(
                "image-to-image needs both x_init (the image) and start_step (the timestep to "
                "noise it to); got only "
                + ("x_init" if x_init is not None else f"start_step={start_step}")
            )
        plan = plan_sampling(self.schedule, steps, spacing, start_step, end_step)
        if self.prediction is Prediction.EPS and plan.start_alpha_cumprod == 0.0:
            raise ValueError(
                "the schedule has zero terminal SNR (abar = 0 at the first sampled timestep), "
                "where an eps-predicting network cannot give x0; train with prediction='v' (as "
                "Lin et al. 2024 recommend) or 'x0', or start below the last timestep"
            )
        device, dtype = self._device_dtype()
        labels_t = check_labels(labels, shape[0], self.net, device)
        cond_t = check_cond(cond, shape, self.net, device, dtype)
        denoise = guided(self._net, labels_t, cond_t, guidance_scale)
        inpaint = None
        if x_known is not None or mask is not None:
            if x_known is None or mask is None:
                raise ValueError("inpainting needs both x_known (the image) and mask (1 = known)")
            inpaint = Inpainting.build(x_known, mask, shape, device, dtype, resample_jumps)
        elif resample_jumps:
            raise ValueError("resample_jumps applies to inpainting: pass x_known and mask too")
        start = None if x_init is None else check_image("x_init", x_init, shape).to(device, dtype)

        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                if start is None:
                    x = randn(shape, generator, device=device, dtype=dtype)
                else:
                    x = noised(start, plan.start_alpha_cumprod, generator)
                x, record = self._run_chain(
                    x, plan, denoise, sampler, generator, inpaint, callback, progress,
                    return_intermediates,
                )  # fmt: skip
                if clip:
                    x = x.clamp(-1.0, 1.0)
        finally:
            self.net.train(was_training)
        if record is None:
            return x
        xs, x0s = record
        return SampleTrajectory(
            samples=x, x_t=torch.stack(xs), x0_pred=torch.stack(x0s), timesteps=plan.visited
        )

    def _run_chain(
        self,
        x: Tensor,
        plan: SamplingPlan,
        denoise: Callable[[Tensor, Tensor], Tensor],
        sampler: Sampler,
        generator: Generators,
        inpaint: Inpainting | None,
        callback: StepCallback | None,
        progress: bool,
        record: bool,
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor]] | None]:
        """Step ``x`` from the plan's first timestep to its last; return it and the record.

        Every scalar comes from the schedule's precomputed Python floats: no host-device sync
        per step, and no work for a feature that is not in use.
        """
        schedule, batch = plan.schedule, x.shape[0]
        model_t = plan.timesteps.tolist()
        order = range(schedule.timesteps - 1, plan.stop - 1, -1)
        # the per-step timestep batches, built before the loop rather than between network calls
        t_dev = plan.timesteps.to(x.device)
        t_batches = {i: t_dev[i].expand(batch) for i in order}
        xs: list[Tensor] | None = [x.cpu()] if record else None
        x0s: list[Tensor] = []
        for step, i in enumerate(tqdm(order, desc="sampling", disable=not progress)):
            coef = schedule.step_coefficients(i)
            a, b = coef.alpha_cumprod**0.5, (1.0 - coef.alpha_cumprod) ** 0.5
            t = t_batches[i]
            # x0_hat costs two passes over the batch: only where the step or the caller reads it
            need_x0 = record or callback is not None or sampler.uses_x0(coef)
            repeats = inpaint.resample_jumps if inpaint is not None and i > plan.stop else 0
            for repeat in range(repeats + 1):
                if repeat:  # RePaint's jump back from t-1 to t (Lugmayr et al. 2022, Alg. 1)
                    x = Inpainting.jump_back(x, coef.alpha, coef.beta, generator)
                if inpaint is not None:
                    x = inpaint.replace(x, coef.alpha_cumprod, generator)
                out = denoise(x, t)
                if need_x0:
                    eps, x0 = split_prediction(out, x, a, b, self.prediction)
                else:
                    eps, x0 = predicted_eps(out, x, a, b, self.prediction), None
                x = sampler.step(x, eps, x0, coef, generator)
            if inpaint is not None and i == plan.stop:
                x = inpaint.finish(x, plan.end_alpha_cumprod, generator)
            if xs is not None or callback is not None:
                assert x0 is not None  # need_x0 held at this step
                if xs is not None:
                    xs.append(x.cpu())
                    x0s.append(x0.cpu())
                if callback is not None:
                    callback(step, model_t[i], x, x0)
        return x, (None if xs is None else (xs, x0s))

    def _sample_shape(
        self, shape: Sequence[int] | None, x_init: Tensor | None, x_known: Tensor | None
    ) -> tuple[int, ...]:
        if shape is None:
            given = x_init if x_init is not None else x_known
            if not isinstance(given, Tensor):
                raise ValueError("pass shape=(B, C, H, W), or x_init or x_known to take it from")
            shape = given.shape
        out = tuple(int(s) for s in shape)
        if len(out) != 4 or min(out) < 1:
            raise ValueError(f"shape must be (B, C, H, W) with positive entries, got {out}")
        self._check_shape(out)
        return out

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where and in which floating dtype the network runs (CPU float32 if it has no weights)."""
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return device, dtype
