"""Which timesteps a reverse chain visits: ``steps``, ``spacing``, ``start_step``, ``end_step``.

All timesteps are 0-based model timesteps (``t = 0`` is the first noising step, ``T - 1``
the last). A chain runs over the window ``end_step < t <= start_step``:

* ``start_step = k`` (default ``T - 1``): the chain starts from ``x_k``, pure noise for
  ``k = T - 1``, or an image noised to ``k`` (image-to-image, SDEdit);
* ``end_step = e`` (default ``-1``): the chain stops at ``x_e``, i.e. after the network call
  at the lowest visited timestep above ``e`` it steps to the marginal of timestep ``e``
  (``e = -1``: the clean image, the usual last step that adds no noise; ``e >= 0``: a noisy
  ``x_e``, e.g. to hand over to another model or sampler);
* ``steps = S`` (default: all ``k - e`` timesteps of the window): the ``spacing`` rule picks
  ``S`` of the window's ``k - e`` timesteps exactly as it picks ``S`` of ``T`` for a full
  chain, shifted up by ``e + 1``; so with the default ``Spacing.TRAILING`` (and with
  ``LINSPACE``) the first visited timestep is ``start_step`` itself, while ``LEADING`` may
  start below it (then the chain starts at that lower timestep).

With the defaults the window is the whole chain, and ``steps = T`` steps through the model's
own schedule (bit-for-bit the full loop). Otherwise the chain steps through a
:class:`~diffusionkit.RespacedSchedule` of the kept timesteps (plus ``e`` when ``e >= 0``, so
the last step lands exactly on ``abar_e``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusionkit.schedules import NoiseSchedule, RespacedSchedule
from diffusionkit.spacing import Spacing

__all__ = ["SamplingPlan", "plan_sampling"]


@dataclass(frozen=True)
class SamplingPlan:
    """The schedule a reverse chain steps through, and where it starts and stops.

    Attributes:
        schedule: the schedule stepped through (the model's own, or respaced); its index ``i``
            is model timestep ``timesteps[i]``.
        timesteps: ``(len(schedule),)`` int64, ascending: the model timestep of each index.
        stop: the last index stepped: ``0`` (the chain ends clean) or ``1`` (it ends at the
            noisy ``x_{end_step}``, which is index 0 and is never stepped from).
    """

    schedule: NoiseSchedule
    timesteps: Tensor
    stop: int

    @property
    def indices(self) -> range:
        """The schedule indices of the steps, from the first timestep down to :attr:`stop`."""
        return range(self.schedule.timesteps - 1, self.stop - 1, -1)

    @property
    def clean_end(self) -> bool:
        """Whether the chain ends at the clean image (``end_step = -1``)."""
        return self.stop == 0

    @property
    def visited(self) -> Tensor:
        """``(S,)`` the model timesteps of the network calls, in the order visited (descending)."""
        return self.timesteps[self.stop :].flip(0)

    @property
    def start_alpha_cumprod(self) -> float:
        """``abar`` of the first visited timestep: what an initial image is noised to."""
        return self.schedule.step_coefficients(self.schedule.timesteps - 1).alpha_cumprod

    @property
    def end_alpha_cumprod(self) -> float:
        """``abar`` of the chain's result: ``1`` for a clean result, else ``abar_{end_step}``."""
        if self.stop == 0:
            return 1.0
        return self.schedule.step_coefficients(0).alpha_cumprod


def _check_step(name: str, value: int, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}] ({hint}); got {value!r}")
    return value


def plan_sampling(
    schedule: NoiseSchedule,
    steps: int | None = None,
    spacing: Spacing | str = Spacing.TRAILING,
    start_step: int | None = None,
    end_step: int | None = None,
) -> SamplingPlan:
    """Plan a reverse chain over ``schedule`` (see the module docstring for the rules).

    Args:
        schedule: the model's schedule (``T`` timesteps).
        steps: number of network calls, ``1 <= steps <= start_step - end_step``; ``None``
            visits every timestep of the window.
        spacing: which timesteps ``steps`` keeps (see :class:`~diffusionkit.Spacing`).
        start_step: first timestep, ``0 <= start_step <= T - 1``; ``None`` means ``T - 1``.
        end_step: the chain returns ``x_{end_step}``, ``-1 <= end_step < start_step``;
            ``None`` means ``-1`` (clean samples).
    """
    total = schedule.timesteps
    spacing = Spacing(spacing)
    first = total - 1 if start_step is None else start_step
    first = _check_step("start_step", first, 0, total - 1, "a 0-based model timestep")
    last = -1 if end_step is None else end_step
    last = _check_step(
        "end_step", last, -1, first - 1, "-1 for clean samples, below start_step otherwise"
    )
    window = first - last
    count = window if steps is None else steps
    count = _check_step(
        "steps", count, 1, window, f"the timesteps {last + 1}..{first} of the chain"
    )
    window_abar = schedule.alphas_cumprod[last + 1 : first + 1] if spacing.needs_schedule else None
    visited = spacing.timesteps(window, count, window_abar) + (last + 1)
    kept = visited if last < 0 else torch.cat([visited.new_tensor([last]), visited])
    if last < 0 and kept.numel() == total:  # every timestep to the clean image: the model's own
        return SamplingPlan(schedule, torch.arange(total), 0)  # schedule, exactly
    return SamplingPlan(RespacedSchedule(schedule, kept), kept, 0 if last < 0 else 1)
