"""diffusers ``DDPMScheduler`` config <-> diffusionkit schedule, sampler and prediction type.

A ``DDPMScheduler`` config says three things diffusionkit keeps in separate objects:

* the betas (``beta_schedule``, ``beta_start``, ``beta_end``, ``num_train_timesteps``): "linear"
  is :class:`~diffusionkit.LinearSchedule` with ``scale_with_timesteps=False`` (diffusers uses the
  ends as given at any ``T``), "squaredcos_cap_v2" is :class:`~diffusionkit.CosineSchedule`
  (``s = 0.008``, ``max_beta = 0.999``), and ``rescale_betas_zero_snr`` wraps either in a
  :class:`~diffusionkit.schedules.ZeroTerminalSNRSchedule` (both implement Lin et al. 2024,
  Algorithm 1);
* the reverse step (``variance_type``): :class:`~diffusionkit.DDPMSampler` with
  ``variance="posterior"`` (``fixed_small``, ``beta_tilde``) or ``"beta"`` (``fixed_large``);
  ``learned_range`` is a network that learns its variance (Nichol & Dhariwal 2021, eq. 15;
  :mod:`~diffusionkit.variance`), ``DenoiseDiffusion(learned_variance=True)`` with a
  ``DDPMSampler``: the UNet's second half of output channels is ``v`` in ``[-1, 1]``, and
  ``log sigma_t² = frac log beta_t + (1 - frac) log beta_tilde_t``, ``frac = (v + 1) / 2``, in
  both libraries (on respaced timesteps, both take ``beta_t`` and ``beta_tilde_t`` of the
  respaced schedule, as improved-diffusion does);
* what the model does to ``x0_hat`` (``clip_sample``, ``thresholding``): the model's
  ``x0_processing``, :class:`~diffusionkit.ClipX0` or
  :class:`~diffusionkit.DynamicThreshold` (``dynamic_thresholding_ratio``,
  ``sample_max_value``; diffusers thresholds instead of clipping when both are set). With
  ``clip_sample`` the sampler also keeps ``clip_x0=True``, so it forms the posterior mean from the
  clipped ``x0`` (Ho et al. 2020, eq. 7) exactly as diffusers does; otherwise the DDPMSampler
  forms it from the ``eps`` consistent with the processed ``x0`` (Algorithm 2): the same mean,
  algebraically;
* what the network predicts (``prediction_type``): epsilon, sample (x0) or v_prediction.

Everything else (other beta schedules, including diffusers' "sigmoid", which is not
diffusionkit's; explicit betas; ``variance_type="learned"`` and ``"fixed_large_log"``; a clip
range other than 1) raises :class:`~diffusionkit.hub.errors.CheckpointError`: no silent
approximation. ``"learned"`` is refused because the name does not say what the network
outputs: diffusers' step reads it as the variance ``sigma_t²`` itself (and takes its square
root, so an output below 0 samples NaN), improved-diffusion's ``LEARNED`` as ``log sigma_t²``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffusionkit.hub.errors import CheckpointError
from diffusionkit.limits import LimitError, check_timesteps
from diffusionkit.prediction import Prediction
from diffusionkit.samplers import DDPMSampler, PosteriorMeanSampler, Sampler, Variance
from diffusionkit.schedules import (
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    ZeroTerminalSNRSchedule,
)
from diffusionkit.thresholding import ClipX0, DynamicThreshold, X0Processing

__all__ = [
    "LEARNED_RANGE",
    "SCHEDULER_DEFAULTS",
    "SchedulerParts",
    "components_from_scheduler",
    "diffusers_scheduler_config",
]

#: ``DDPMScheduler.__init__`` defaults (diffusers 0.42), for fields an older config omits
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
#: fields that change nothing about the model: inference-time respacing defaults, settings
#: read only with thresholding, and fields of diffusers 0.1-0.3 configs
_INERT = {"timestep_spacing", "steps_offset", "tensor_format", "timestep_values"}
_PREDICTIONS = {"epsilon": Prediction.EPS, "sample": Prediction.X0, "v_prediction": Prediction.V}
#: fixed_small_log draws with exp(log(beta_tilde) / 2), the same standard deviation
_VARIANCES = {
    "fixed_small": Variance.POSTERIOR,
    "fixed_small_log": Variance.POSTERIOR,
    "fixed_large": Variance.BETA,
}
#: the model learns its variance (DenoiseDiffusion(learned_variance=True)); the DDPMSampler's
#: own variance then does not apply, and a loaded model gets the default, "posterior"
LEARNED_RANGE = "learned_range"
#: why each other variance_type of DDPMScheduler is refused
_REFUSED_VARIANCES = {
    "learned": (
        "diffusers' DDPMScheduler reads the network's second half of output channels as the "
        "variance sigma_t^2 itself and takes its square root (an output below 0 samples NaN), "
        "while improved-diffusion's 'learned' reads it as log sigma_t^2: the name does not say "
        "what the network was trained to output. diffusionkit learns variances as improved "
        "DDPM's interpolation, variance_type='learned_range'"
    ),
    "fixed_large_log": (
        "diffusers' step takes the square root of log(beta_t), which is negative: it samples NaN"
    ),
}
_COSINE_S, _COSINE_MAX_BETA = 0.008, 0.999  # diffusers' squaredcos_cap_v2 constants


def _number(value: Any, name: str, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckpointError(f"{label}: {name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SchedulerParts:
    """What a ``DDPMScheduler`` config says, as diffusionkit's separate objects.

    ``learned_variance`` (``variance_type="learned_range"``): the UNet must have
    ``out_channels = 2 * in_channels``; otherwise ``out_channels = in_channels``.
    """

    schedule: NoiseSchedule
    sampler: Sampler
    prediction: Prediction
    x0_processing: X0Processing | None
    learned_variance: bool = False


def components_from_scheduler(config: Mapping[str, Any], label: str) -> SchedulerParts:
    """The schedule, sampler, prediction type and x0 processing of a ``DDPMScheduler`` config.

    Args:
        config: parsed ``scheduler/scheduler_config.json``; missing fields take diffusers'
            defaults (``clip_sample`` defaults to true and ``variance_type`` to fixed_small).
        label: the file, for error messages.

    Raises:
        CheckpointError: another scheduler class, or a setting without an exact counterpart.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{label}: expected a JSON object")
    class_name = config.get("_class_name", "DDPMScheduler")
    if class_name != "DDPMScheduler":
        raise CheckpointError(
            f"{label}: scheduler {class_name} is not supported; diffusionkit maps DDPMScheduler"
        )
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(fields) - set(SCHEDULER_DEFAULTS) - _INERT)
    if unknown:
        raise CheckpointError(
            f"{label}: unknown DDPMScheduler field(s) {', '.join(unknown)}: cannot tell whether "
            "they change sampling"
        )
    cfg = {**SCHEDULER_DEFAULTS, **fields}

    def unsupported(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{label}: {key}={cfg[key]!r} is not supported ({why})")

    steps = cfg["num_train_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CheckpointError(f"{label}: num_train_timesteps must be a positive int, got {steps!r}")
    try:  # before a schedule allocates its tables
        check_timesteps(steps, f"{label} (num_train_timesteps)")
    except LimitError as err:
        raise CheckpointError(str(err)) from None
    if cfg["trained_betas"] is not None:
        raise unsupported("trained_betas", "explicit beta lists have no diffusionkit schedule")
    if not isinstance(cfg["rescale_betas_zero_snr"], bool):
        raise unsupported("rescale_betas_zero_snr", "expected true or false")
    schedule: NoiseSchedule
    if cfg["beta_schedule"] == "linear":
        start = _number(cfg["beta_start"], "beta_start", label)
        end = _number(cfg["beta_end"], "beta_end", label)
        try:
            schedule = LinearSchedule(steps, start, end, scale_with_timesteps=False)
        except ValueError as err:
            raise CheckpointError(f"{label}: {err}") from None
    elif cfg["beta_schedule"] == "squaredcos_cap_v2":
        schedule = CosineSchedule(steps, s=_COSINE_S, max_beta=_COSINE_MAX_BETA)
    else:
        raise unsupported("beta_schedule", "supported: 'linear', 'squaredcos_cap_v2'")
    if cfg["rescale_betas_zero_snr"]:
        schedule = ZeroTerminalSNRSchedule(schedule)

    variance_type = cfg["variance_type"]
    learned = variance_type == LEARNED_RANGE
    if not learned and (not isinstance(variance_type, str) or variance_type not in _VARIANCES):
        why = _REFUSED_VARIANCES.get(variance_type) if isinstance(variance_type, str) else None
        supported = "supported: 'fixed_small', 'fixed_small_log', 'fixed_large', 'learned_range'"
        raise unsupported("variance_type", f"{why}; {supported}" if why else supported)
    threshold, clip = cfg["thresholding"], cfg["clip_sample"]
    for key, value in (("thresholding", threshold), ("clip_sample", clip)):
        if not isinstance(value, bool):
            raise CheckpointError(f"{label}: {key} must be true or false, got {value!r}")
    x0_processing: X0Processing | None = None
    if threshold:  # diffusers' step: thresholding, elif clip_sample, clamp
        ratio = _number(cfg["dynamic_thresholding_ratio"], "dynamic_thresholding_ratio", label)
        top = _number(cfg["sample_max_value"], "sample_max_value", label)
        try:
            x0_processing = DynamicThreshold(ratio, top)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{label}: thresholding: {err}") from None
    elif clip:
        if _number(cfg["clip_sample_range"], "clip_sample_range", label) != 1.0:
            raise unsupported("clip_sample_range", "x0 is clipped to [-1, 1] only")
        x0_processing = ClipX0()
    variance = Variance.POSTERIOR if learned else _VARIANCES[variance_type]
    sampler = DDPMSampler(variance, clip_x0=clip and not threshold)

    if not isinstance(cfg["prediction_type"], str) or cfg["prediction_type"] not in _PREDICTIONS:
        raise unsupported("prediction_type", "supported: 'epsilon', 'sample', 'v_prediction'")
    prediction = _PREDICTIONS[cfg["prediction_type"]]
    return SchedulerParts(schedule, sampler, prediction, x0_processing, learned)


def diffusers_scheduler_config(
    schedule: NoiseSchedule,
    sampler: Sampler,
    prediction: Prediction,
    x0_processing: X0Processing | None = None,
    learned_variance: bool = False,
) -> dict[str, Any]:
    """The ``DDPMScheduler`` config (every field explicit) of a schedule, sampler, prediction
    type and x0 processing.

    With ``learned_variance`` (a model whose network learns its variance), ``variance_type``
    is ``"learned_range"`` whatever the sampler's own ``variance``, which such a model does not
    use; the network must then have ``out_channels = 2 * in_channels``.

    Raises:
        ValueError: a component has no ``DDPMScheduler`` counterpart.
    """
    steps = schedule.timesteps
    rescaled = type(schedule) is ZeroTerminalSNRSchedule
    if rescaled:
        assert isinstance(schedule, ZeroTerminalSNRSchedule)
        schedule = schedule.base
    if type(schedule) is LinearSchedule:
        # diffusers uses the ends as given: bake diffusionkit's 1000 / T scaling into them
        scale = 1000.0 / steps if schedule.scale_with_timesteps else 1.0
        betas = {
            "beta_schedule": "linear",
            "beta_start": schedule.beta_start * scale,
            "beta_end": schedule.beta_end * scale,
        }
    elif (
        type(schedule) is CosineSchedule
        and schedule.s == _COSINE_S
        and schedule.max_beta == _COSINE_MAX_BETA
    ):
        betas = {"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02}
    else:
        raise ValueError(
            f"cannot export {schedule!r} to diffusers: DDPMScheduler has linear betas and the "
            f"cosine schedule with s={_COSINE_S}, max_beta={_COSINE_MAX_BETA}, either one "
            "optionally rescaled to zero terminal SNR"
        )
    if type(sampler) is DDPMSampler:
        variance = "fixed_small" if sampler.variance is Variance.POSTERIOR else "fixed_large"
        clip = sampler.clip_x0
    elif type(sampler) is PosteriorMeanSampler and sampler.stochastic:
        variance, clip = "fixed_small", sampler.clip_x0  # the same step as DDPMScheduler's
    else:
        raise ValueError(
            f"cannot export the sampler {sampler!r} to diffusers: DDPMScheduler takes ancestral "
            "DDPM steps (DDPMSampler, or a stochastic PosteriorMeanSampler)"
        )
    if learned_variance:  # both samplers draw with the learned variance: DDPMScheduler's step
        variance = LEARNED_RANGE
    threshold = {
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
    }
    if isinstance(x0_processing, DynamicThreshold):
        if x0_processing.max_value is None:
            raise ValueError(
                f"cannot export {x0_processing!r} to diffusers: DDPMScheduler's thresholding "
                "caps the threshold at sample_max_value; give DynamicThreshold a max_value"
            )
        threshold = {
            "thresholding": True,
            "dynamic_thresholding_ratio": x0_processing.percentile,
            "sample_max_value": x0_processing.max_value,
        }
    elif type(x0_processing) is ClipX0:
        clip = True
    elif x0_processing is not None:
        raise ValueError(f"cannot export the x0 processing {x0_processing!r} to diffusers")
    prediction_type = {v: k for k, v in _PREDICTIONS.items()}[Prediction(prediction)]
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.30.0",
        "num_train_timesteps": steps,
        **betas,
        "trained_betas": None,
        "variance_type": variance,
        "clip_sample": clip,
        "prediction_type": prediction_type,
        **threshold,
        "clip_sample_range": 1.0,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": rescaled,
    }
