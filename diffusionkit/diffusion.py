"""``DenoiseDiffusion``: a network, a noise schedule and a sampler composed into one model.

Conventions: timesteps ``t`` are 0-based (``t = 0`` is the first noising step, paper step 1;
``t = T - 1`` the last) and images live in ``[-1, 1]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from diffusionkit._random import Generators, check_generators, randn
from diffusionkit.chain import Chain, StepCallback
from diffusionkit.conditioning import check_cond, check_labels, drop_condition, drop_mask
from diffusionkit.editing import Inpainting, check_image, initial_state
from diffusionkit.forward_process import q_sample
from diffusionkit.guidance import guided
from diffusionkit.inputs import (
    check_data_range,
    check_image_batch,
    check_noise,
    check_shape,
    check_timesteps,
)
from diffusionkit.likelihood import BoundTerms, model_log_variance, variational_bound
from diffusionkit.objective import DenoisingLoss, variational_term
from diffusionkit.persistence import PretrainedMixin
from diffusionkit.prediction import Prediction, predicted_x0
from diffusionkit.samplers import DDPMSampler, Sampler, get_sampler
from diffusionkit.samplers.ddpm import Variance
from diffusionkit.sampling_plan import plan_sampling
from diffusionkit.schedules import LinearSchedule, NoiseSchedule
from diffusionkit.spacing import Spacing
from diffusionkit.thresholding import ClipX0, X0Processing
from diffusionkit.variance import split_learned_variance
from diffusionkit.view import DenoiserView, network_call
from diffusionkit.weighting import LossWeighting

__all__ = ["BoundTerms", "DenoiseDiffusion", "Prediction", "SampleTrajectory", "StepCallback"]


@dataclass
class SampleTrajectory:
    """The reverse chain of :meth:`DenoiseDiffusion.reverse_sample` (all tensors on the CPU).

    Attributes:
        samples: final samples ``(B, C, H, W)`` on the model's device.
        x_t: ``(S + 1, B, C, H, W)``: the initial ``x``, then ``x`` after each of the ``S`` steps.
        x0_pred: ``(S, B, C, H, W)``: the model's estimate of ``x0`` at each step (processed as
            the model's ``x0_processing`` says).
        timesteps: ``(S,)`` the model timestep of each step, in the order visited (descending).
    """

    samples: Tensor
    x_t: Tensor
    x0_pred: Tensor
    timesteps: Tensor


class DenoiseDiffusion(nn.Module, PretrainedMixin):
    """A DDPM: network + noise schedule + sampler (Ho et al. 2020), as one object.

    A thin facade over the layers that do the work: the training objective
    (:mod:`~diffusionkit.objective`), the forward process (:mod:`~diffusionkit.forward_process`),
    the model seen as a denoiser (:mod:`~diffusionkit.view`), and samplers that own their loop
    over a chain (:mod:`~diffusionkit.samplers`, :mod:`~diffusionkit.chain`).

    Args:
        net: the denoising network, a :class:`~diffusionkit.Denoiser` or any ``nn.Module``
            called as ``net(x, t)`` with ``x`` ``(B, C, H, W)`` and ``t`` ``(B,)`` int64.
        schedule: the forward-process schedule; a new :class:`LinearSchedule` (``T = 1000``)
            by default. An int ``T`` is ``LinearSchedule(T)``: the DDPM paper's betas, 1e-4 to
            0.02 at ``T = 1000``, scaled by ``1000 / T`` at other ``T`` (the call
            ``DenoiseDiffusion(net, 1000)`` of other DDPM code; see the "Coming from" guide for
            the schedules those projects actually use).
        sampler: the default sampler: a :class:`Sampler`, or a registered name such as
            ``"dpm++2m"`` (see :func:`~diffusionkit.get_sampler`); a new :class:`DDPMSampler`
            by default.
        prediction: what ``net`` predicts: ``"eps"``, ``"x0"`` or ``"v"`` (see :class:`Prediction`).
        weighting: per-timestep weight of the training loss, e.g.
            :class:`~diffusionkit.MinSNRWeighting` (Hang et al. 2023); ``None`` is the simple
            unweighted objective (Ho et al. 2020, eq. 14). It only affects :meth:`loss`.
        x0_processing: what the model does to its estimate of ``x0`` before any sampler reads
            it: :class:`~diffusionkit.ClipX0` (clamp to ``[-1, 1]``, recommended for image
            models, essential with the cosine schedule), :class:`~diffusionkit.DynamicThreshold`
            (Saharia et al. 2022), or ``None``. Every sampler respects it, also one chosen by
            name in :meth:`reverse_sample` (:meth:`predict_x0` and :meth:`predict_eps` return
            the network's own estimates, unprocessed). ``None`` with a default sampler that
            clips (``DDPMSampler(clip_x0=True)``, how models clipped before this argument
            existed, and checkpoints of format 1) means ``ClipX0()``: the model clips, so every
            sampler does.
        learned_variance: the network learns the reverse variance (Nichol & Dhariwal 2021,
            Sec. 3.1; :mod:`~diffusionkit.variance`): it has ``out_channels = 2 *
            in_channels``, the prediction then the variance value ``v`` in ``[-1, 1]``, which
            interpolates ``log sigma_t²`` between ``log beta_tilde_t`` and ``log beta_t``.
            :meth:`loss` becomes the hybrid loss ``L_simple + vlb_weight * L_vlb``; the DDPM
            and posterior-mean samplers draw their noise with the learned variance (also on
            respaced schedules); DDIM and the ODE/SDE solvers use the prediction alone.
        vlb_weight: ``lambda`` of the hybrid loss (Nichol & Dhariwal use 0.001): the loss adds
            ``vlb_weight * T * L_t``, ``L_t`` being the bound's term (bits/dim) at the sampled
            timestep, so that ``T * L_t`` estimates ``L_vlb``, the sum over all ``T`` terms
            (improved-diffusion's ``RESCALED_MSE``). Only with ``learned_variance``.

    Example:
        >>> from diffusionkit import ClipX0, DenoiseDiffusion, UNet
        >>> net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
        >>> model = DenoiseDiffusion(net, x0_processing=ClipX0())
        >>> loss = model.loss(torch.rand(4, 1, 8, 8) * 2 - 1)
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule | int | None = None,
        sampler: Sampler | str | None = None,
        prediction: Prediction | str = Prediction.EPS,
        weighting: LossWeighting | None = None,
        x0_processing: X0Processing | None = None,
        learned_variance: bool = False,
        vlb_weight: float = 0.001,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if schedule is None:
            schedule = LinearSchedule()
        elif isinstance(schedule, int) and not isinstance(schedule, bool):
            schedule = LinearSchedule(schedule)  # DenoiseDiffusion(net, T), as other code writes it
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        sampler = DDPMSampler() if sampler is None else get_sampler(sampler)
        if weighting is not None and not isinstance(weighting, LossWeighting):
            raise TypeError(
                f"weighting must be a LossWeighting or None, got {type(weighting).__name__}"
            )
        if x0_processing is not None and not isinstance(x0_processing, X0Processing):
            raise TypeError(
                "x0_processing must be an X0Processing (ClipX0(), DynamicThreshold()) or None, "
                f"got {type(x0_processing).__name__}"
            )
        try:
            prediction = Prediction(prediction)
        except ValueError:
            valid = ", ".join(repr(p.value) for p in Prediction)
            raise ValueError(f"prediction must be one of {valid}; got {prediction!r}") from None
        if not isinstance(learned_variance, bool):
            raise TypeError(f"learned_variance must be a bool, got {learned_variance!r}")
        if (
            isinstance(vlb_weight, bool)
            or not isinstance(vlb_weight, int | float)
            or not math.isfinite(vlb_weight)
            or vlb_weight < 0
        ):
            raise ValueError(f"vlb_weight must be a finite number >= 0, got {vlb_weight!r}")
        self.learned_variance = learned_variance
        self.vlb_weight = float(vlb_weight)
        self.net = net
        self.schedule = schedule
        self.sampler = sampler
        self.prediction = prediction
        self.weighting = weighting
        if x0_processing is None and getattr(sampler, "clip_x0", False) is True:
            x0_processing = ClipX0()  # the sampler's clipping was the model's, before 0.2
        self.x0_processing = x0_processing
        # schedule tensors cast once per (name, device, dtype): not buffers, so they never
        # enter the state dict and never move on every call
        self._coef_cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps ``T`` of the schedule."""
        return self.schedule.timesteps

    def with_net(self, net: nn.Module) -> DenoiseDiffusion:
        """The same model (class, schedule, sampler, prediction, weighting, x0 processing)
        around another network of the same architecture, e.g. an EMA copy of the weights."""
        arguments = {
            name: getattr(self, name)
            for name in inspect.signature(type(self)).parameters
            if name != "net"
        }
        return type(self)(net, **arguments)

    def _coef(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """``schedule.<name>[t]`` as ``(B, 1, 1, 1)`` on ``like``'s device and dtype."""
        key = (name, like.device, like.dtype)
        table = self._coef_cache.get(key)
        if table is None:
            table = getattr(self.schedule, name).to(device=like.device, dtype=like.dtype)
            self._coef_cache[key] = table
        return table[t].view(-1, *([1] * (like.ndim - 1)))

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless the network can take images shaped ``(B, C, H, W)``."""
        check_shape(self.net, shape)

    def _check_shape(self, shape: Sequence[int]) -> None:  # the name callers used before 0.2
        self.check_shape(shape)

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
        check_image_batch("x0", x0, self.net)
        t = check_timesteps(t, x0.shape[0], self.timesteps, x0.device)
        if noise is None:
            noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        else:
            noise = check_noise(noise, x0.shape)
        a = self._coef("sqrt_alphas_cumprod", t, x0)
        b = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
        return q_sample(x0, a, b, noise), noise

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
        ``v`` and ``w_t = 1`` unless the model has a :attr:`weighting`
        (:class:`~diffusionkit.objective.DenoisingLoss`). With ``learned_variance``, the
        hybrid loss of Nichol & Dhariwal (2021): that plus ``vlb_weight * T`` times the mean of
        the bound's terms at the sampled timesteps, the mean's gradient stopped
        (:func:`~diffusionkit.objective.variational_term`).

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
        check_image_batch("x0", x0, self.net)
        check_data_range("x0", x0)
        generator = check_generators(generator)
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
        t = check_timesteps(t, batch, self.timesteps, x0.device)
        x_t, noise = self.forward_sample(x0, t, noise, generator=generator)
        if cond_drop_prob > 0:
            drop = drop_mask(batch, cond_drop_prob, generator, x0.device)
            labels_t, cond_t = drop_condition(labels_t, cond_t, drop)
        out = network_call(self.net, self.learned_variance)(x_t, t, labels_t, cond_t)
        v = None
        if self.learned_variance:
            out, v = split_learned_variance(out, x0.shape[1])
        a = self._coef("sqrt_alphas_cumprod", t, x0)
        b = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
        snr = None
        if self.weighting is not None:  # (B,) float32, as the weights multiply
            snr = self._coef("snr", t, out.new_empty(batch, dtype=torch.float32))
        loss = DenoisingLoss(self.prediction, self.weighting)(out, x0, noise, a, b, snr)
        if v is None:
            return loss
        vlb = variational_term(out, v, x0, x_t, t, a, b, self.prediction, self.schedule)
        return loss + self.vlb_weight * self.timesteps * vlb.mean()

    def forward(self, x0: Tensor, **kwargs: Any) -> Tensor:
        """Same as :meth:`loss`, so that wrappers such as DistributedDataParallel can call it."""
        return self.loss(x0, **kwargs)

    # ---------------------------------------------------------- predictions
    def _predict(
        self, x_t: Tensor, t: Tensor | int, labels: Tensor | int | None, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        check_image_batch("x_t", x_t, self.net)
        t = check_timesteps(t, x_t.shape[0], self.timesteps, x_t.device)
        labels_t = check_labels(labels, x_t.shape[0], self.net, x_t.device)
        cond_t = check_cond(cond, x_t.shape, self.net, x_t.device, x_t.dtype)
        call = guided(network_call(self.net, self.learned_variance), labels_t, cond_t, None)
        view = DenoiserView(call, self.schedule, self.prediction, None, self.learned_variance)
        return view.predict(x_t, t)

    def predict_x0(
        self,
        x_t: Tensor,
        t: Tensor | int,
        *,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The network's estimate of ``x0`` from ``x_t`` ``(B, C, H, W)`` at timesteps ``t``
        ``(B,)``, as it predicts it: before the model's ``x0_processing``, which samplers apply."""
        return self._predict(x_t, t, labels, cond)[1]

    def predict_eps(
        self,
        x_t: Tensor,
        t: Tensor | int,
        *,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
    ) -> Tensor:
        """The network's estimate of the noise ``eps`` in ``x_t`` ``(B, C, H, W)`` at ``t``
        ``(B,)`` (consistent with :meth:`predict_x0`; before ``x0_processing``)."""
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
        strength: float | None = ...,
        x_known: Tensor | None = ...,
        mask: Tensor | None = ...,
        resample_jumps: int = ...,
        labels: Tensor | int | None = ...,
        cond: Tensor | None = ...,
        guidance_scale: float | None = ...,
        noise: Tensor | None = ...,
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
        strength: float | None = ...,
        x_known: Tensor | None = ...,
        mask: Tensor | None = ...,
        resample_jumps: int = ...,
        labels: Tensor | int | None = ...,
        cond: Tensor | None = ...,
        guidance_scale: float | None = ...,
        noise: Tensor | None = ...,
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
        strength: float | None = None,
        x_known: Tensor | None = None,
        mask: Tensor | None = None,
        resample_jumps: int = 0,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        guidance_scale: float | None = None,
        noise: Tensor | None = None,
        progress: bool = True,
        clip: bool = False,
        callback: StepCallback | None = None,
        return_intermediates: bool = False,
    ) -> Tensor | SampleTrajectory:
        """Sample images by running the reverse chain, by default from ``x_{T-1} ~ N(0, I)``.

        Runs under ``torch.inference_mode`` with the network in eval mode (its previous mode is
        restored afterwards) and shows a tqdm progress bar counting network calls. All
        timesteps are 0-based model timesteps; :mod:`diffusionkit.sampling_plan` states how
        ``steps``, ``spacing``, ``start_step`` and ``end_step`` choose the visited ones.

        Args:
            shape: ``(B, C, H, W)`` of the samples; may be left out when ``x_init``,
                ``x_known`` or ``noise`` gives it.
            generator: source of all randomness: one ``torch.Generator``, or a list of ``B``,
                one per sample (then sample ``i`` depends only on ``generator[i]``). The same
                seed gives bit-identical samples.
            sampler: sampler to use instead of :attr:`sampler` for this call: a
                :class:`Sampler` or a registered name (``"ddpm"``, ``"ddim"``,
                ``"posterior-mean"``, ``"dpm++2m"``, ``"dpm++3m"``, ``"dpm++2m-sde"``,
                ``"unipc"``, ``"euler"``, ``"euler-ancestral"``, ``"heun"``; see
                :func:`~diffusionkit.get_sampler`). Every sampler respects the model's
                ``x0_processing``.
            steps: number of network calls (``None``: one per timestep of the window). Most
                samplers make one call per step; Heun makes two per step but one for the last,
                so its ``N`` steps are ``2N - 1`` calls. Fewer calls than ``T`` respace the
                schedule (see :class:`RespacedSchedule`).
            spacing: which timesteps the steps visit (see :class:`Spacing`).
            start_step: image-to-image (SDEdit, Meng et al. 2022): the model timestep
                ``0 <= k <= T - 1`` that ``x_init`` is noised to in closed form, and where the
                chain starts. Needs ``x_init``. Small ``k`` stays close to ``x_init``.
            end_step: stop at ``x_e`` for ``0 <= e < start_step`` (a noisy result at model
                timestep ``e``) instead of the clean ``e = -1`` (the default).
            x_init: ``(B or 1, C, H, W)`` images in ``[-1, 1]`` to start from; needs
                ``start_step`` or ``strength``.
            strength: image-to-image by how much to change ``x_init``, in ``(0, 1]``: the chain
                starts at model timestep ``round(strength * T) - 1`` (at least 0), so ``1`` is
                pure noise and small values stay close to ``x_init`` (diffusers' img2img
                ``strength``, the ``t_start`` of hand-written samplers). The alternative to
                ``start_step``; ``steps`` still counts network calls within that window
                (diffusers instead runs ``int(steps * strength)`` of ``steps`` calls).
            x_known: ``(B or 1, C, H, W)`` images in ``[-1, 1]`` for inpainting (RePaint,
                Lugmayr et al. 2022): before every network call, the known region of ``x_t``
                is replaced by ``x_known`` noised to ``t``, and the result equals ``x_known``
                exactly there. Works with every sampler. Needs ``mask``.
            mask: ``(B or 1, C or 1, H, W)`` of 0 and 1 (or bool): 1 = known (kept from
                ``x_known``), 0 = generated.
            resample_jumps: RePaint resampling: after each step but the last, jump back
                (``x_t ~ q(x_t | x_{t-1})``) and redo the step, this many times; each repeat
                costs one more network call per step. Needs a memoryless one-step sampler
                (``ddpm``, ``ddim``, ``posterior-mean``, ``euler``, ``euler-ancestral``).
                ``0`` is plain replacement.
            labels: class labels ``(B,)`` (or one int) for a class-conditional network; ``-1``
                is the null label.
            cond: conditioning images ``(B, C_cond, H, W)`` for an image-conditional network.
            guidance_scale: classifier-free guidance scale ``w`` (Ho & Salimans 2022; see
                :mod:`diffusionkit.guidance`): ``out_u + w (out_c - out_u)``, computed with
                one batched pass of ``2B``. ``None`` or ``1``: plain conditional sampling.
            noise: ``(B, C, H, W)``, the Gaussian draw that starts the chain (or, with
                ``x_init``, that noises it), instead of drawing it from ``generator``: the same
                ``noise`` starts the same chain in every sampler (and in other libraries).
            progress: show a progress bar.
            clip: clamp the final samples to ``[-1, 1]``.
            callback: ``callback(step, t, x_t, x0_pred)`` after every step (the repeats of a
                resampled step count once; ``t`` is the step's first network call's timestep).
            return_intermediates: also return the whole chain as a :class:`SampleTrajectory`.

        Returns:
            Samples ``(B, C, H, W)`` in the data convention ``[-1, 1]`` (not clamped unless
            ``clip``), or a :class:`SampleTrajectory` with ``return_intermediates=True``.
        """
        shape = self._sample_shape(shape, x_init, x_known, noise)
        generator = check_generators(generator)
        sampler = self.sampler if sampler is None else get_sampler(sampler)
        if strength is not None:
            if start_step is not None:
                raise ValueError(
                    "pass start_step or strength, not both: they say the same thing (strength s "
                    "starts at round(s * T) - 1)"
                )
            start_step = self.start_step_of(strength)
        if (x_init is None) != (start_step is None):
            raise ValueError(
                "image-to-image needs both x_init (the image) and start_step (the timestep to "
                "noise it to) or strength (how much to change it, in (0, 1]); got only "
                + ("x_init" if x_init is not None else f"start_step={start_step}")
            )
        clean_end = end_step is None or end_step == -1
        plan_steps = steps
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps must be a positive int (network calls), got {steps!r}")
            plan_steps = sampler.steps_for_calls(steps, clean_end)
        plan = plan_sampling(self.schedule, plan_steps, spacing, start_step, end_step)
        calls = (
            steps if steps is not None else sampler.calls_for_steps(len(plan.indices), clean_end)
        )
        if self.prediction is Prediction.EPS and plan.start_alpha_cumprod == 0.0:
            raise ValueError(
                "the schedule has zero terminal SNR (abar = 0 at the first sampled timestep), "
                "where an eps-predicting network cannot give x0; train with prediction='v' (as "
                "Lin et al. 2024 recommend) or 'x0', or start below the last timestep"
            )
        device, dtype = self._device_dtype()
        labels_t = check_labels(labels, shape[0], self.net, device)
        cond_t = check_cond(cond, shape, self.net, device, dtype)
        learned = self.learned_variance
        call = guided(network_call(self.net, learned), labels_t, cond_t, guidance_scale, learned)
        view = DenoiserView(call, self.schedule, self.prediction, self.x0_processing, learned)
        inpaint = None
        if x_known is not None or mask is not None:
            if x_known is None or mask is None:
                raise ValueError("inpainting needs both x_known (the image) and mask (1 = known)")
            inpaint = Inpainting.build(x_known, mask, shape, device, dtype, resample_jumps)
            if inpaint.resample_jumps and not sampler.can_resample:
                raise ValueError(
                    f"resample_jumps needs a memoryless one-step sampler (ddpm, ddim, "
                    f"posterior-mean, euler, euler-ancestral): {sampler!r} keeps history across "
                    "steps or calls the network several times per step, so a step cannot be "
                    "redone on its own; use resample_jumps=0 (plain replacement) with it"
                )
        elif resample_jumps:
            raise ValueError("resample_jumps applies to inpainting: pass x_known and mask too")
        start = None if x_init is None else check_image("x_init", x_init, shape).to(device, dtype)
        if noise is not None:
            noise = check_noise(noise, shape).to(device, dtype)

        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                x = initial_state(
                    shape,
                    plan.start_alpha_cumprod,
                    generator,
                    x_init=start,
                    noise=noise,
                    device=device,
                    dtype=dtype,
                )
                chain = Chain(
                    view,
                    plan,
                    generator,
                    batch=shape[0],
                    device=device,
                    calls=calls,
                    inpaint=inpaint,
                    callback=callback,
                    record=return_intermediates,
                    progress=progress,
                )
                x = chain.run(sampler.sample, x)
                if clip:
                    x = x.clamp(-1.0, 1.0)
        finally:
            self.net.train(was_training)
        if chain.xs is None:
            return x
        return SampleTrajectory(
            samples=x,
            x_t=torch.stack(chain.xs),
            x0_pred=torch.stack(chain.x0s),
            timesteps=plan.visited,
        )

    # ------------------------------------------------------------ likelihood
    @property
    def fixed_variance(self) -> Variance:
        """The reverse variance the likelihood uses when the network does not learn it: the
        default sampler's (``DDPMSampler(variance="beta")`` is ``beta_t``), else
        ``beta_tilde_t``."""
        if isinstance(self.sampler, DDPMSampler):
            return self.sampler.variance
        return Variance.POSTERIOR

    def nll(
        self,
        x0: Tensor,
        *,
        steps: int | None = None,
        generator: Generators = None,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        progress: bool = True,
    ) -> Tensor:
        """The variational bound on ``-log p(x0)`` per image, in bits per dimension ``(B,)``.

        The bound of Ho et al. (2020, eq. 5) with their discretized decoder for 8-bit data
        (Sec. 3.3): the prior term, ``T - 1`` Gaussian KL terms and the decoder, each from one
        draw of ``x_t ~ q(x_t | x0)`` (:mod:`~diffusionkit.likelihood` states every term).
        The reverse process is the one the model samples with: mean from ``x0_hat`` after the
        model's ``x0_processing``, variance learned (``learned_variance``) or
        :attr:`fixed_variance`. Lower is better; ``log2(256) = 8`` bits/dim is the cost of
        uniform noise. Runs under ``torch.inference_mode`` with the network in eval mode.

        Args:
            x0: images ``(B, C, H, W)`` in ``[-1, 1]``, 8-bit data (each value is the centre
                of a bin of width ``2 / 255``).
            steps: ``None``: all ``T`` terms (one network call each), the bound itself.
                ``K >= 2``: the decoder and ``K - 1`` KL terms evenly spread over the
                timesteps, their sum scaled to ``T - 1`` terms: an estimate in ``K`` calls.
            generator: source of the noise draws (one generator, or one per sample).
            labels: class labels ``(B,)`` (or one int) of a class-conditional network.
            cond: conditioning images ``(B, C_cond, H, W)`` of an image-conditional network.
            progress: show a progress bar over the terms.

        Returns:
            ``(B,)`` float32 bits per dimension, on the CPU.
        """
        return self.nll_terms(
            x0, steps=steps, generator=generator, labels=labels, cond=cond, progress=progress
        ).total

    def nll_terms(
        self,
        x0: Tensor,
        *,
        steps: int | None = None,
        generator: Generators = None,
        labels: Tensor | int | None = None,
        cond: Tensor | None = None,
        progress: bool = True,
    ) -> BoundTerms:
        """:meth:`nll` with every term of the bound (:class:`~diffusionkit.BoundTerms`), e.g.
        to plot bits/dim against the timestep."""
        check_image_batch("x0", x0, self.net)
        check_data_range("x0", x0)
        generator = check_generators(generator)
        if self.prediction is Prediction.EPS and self.schedule.alphas_cumprod[-1] == 0:
            raise ValueError(
                "the schedule has zero terminal SNR, where an eps-predicting network cannot "
                "give x0 at the last timestep, so the bound is infinite there"
            )
        batch = x0.shape[0]
        labels_t = check_labels(labels, batch, self.net, x0.device)
        cond_t = check_cond(cond, x0.shape, self.net, x0.device, x0.dtype)
        net_fn = network_call(self.net, self.learned_variance)
        fixed = self.fixed_variance

        def reverse(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            out = net_fn(x_t, t, labels_t, cond_t)
            v = None
            if self.learned_variance:
                out, v = split_learned_variance(out, x_t.shape[1])
            a = self._coef("sqrt_alphas_cumprod", t, x_t)
            b = self._coef("sqrt_one_minus_alphas_cumprod", t, x_t)
            x0_hat = predicted_x0(out, x_t, a, b, self.prediction)
            if self.x0_processing is not None:
                x0_hat = self.x0_processing(x0_hat)
            return x0_hat, model_log_variance(v, t, self.schedule, fixed, x_t)

        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                return variational_bound(
                    reverse,
                    self.schedule,
                    x0,
                    steps=steps,
                    generator=generator,
                    progress=progress,
                )
        finally:
            self.net.train(was_training)

    def start_step_of(self, strength: float) -> int:
        """The model timestep ``round(strength * T) - 1`` (at least 0) that image-to-image with
        ``strength`` in ``(0, 1]`` starts from (see :meth:`reverse_sample`)."""
        if (
            isinstance(strength, bool)
            or not isinstance(strength, int | float)
            or not math.isfinite(strength)
            or not 0.0 < strength <= 1.0
        ):
            raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
        return max(round(strength * self.timesteps) - 1, 0)

    def _sample_shape(
        self,
        shape: Sequence[int] | None,
        x_init: Tensor | None,
        x_known: Tensor | None,
        noise: Tensor | None,
    ) -> tuple[int, ...]:
        if shape is None:
            given = next((v for v in (x_init, x_known, noise) if v is not None), None)
            if not isinstance(given, Tensor):
                raise ValueError(
                    "pass shape=(B, C, H, W), or x_init, x_known or noise to take it from"
                )
            shape = given.shape
        out = tuple(int(s) for s in shape)
        if len(out) != 4 or min(out) < 1:
            raise ValueError(f"shape must be (B, C, H, W) with positive entries, got {out}")
        self.check_shape(out)
        return out

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where and in which floating dtype the network runs (CPU float32 if it has no weights)."""
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return device, dtype
