"""A reverse chain as a solver sees it: where it goes, what the model says, and what to report.

A :class:`~diffusionkit.Sampler` owns its loop. It receives the starting state ``x`` and a
:class:`Chain`, and:

* loops over :attr:`Chain.indices`, the plan's schedule indices from the first timestep down
  (step ``k`` goes from ``abar = coefficients(i).alpha_cumprod`` to
  ``coefficients(i).alpha_cumprod_prev``, which is ``1`` after the last step of a chain
  that ends clean);
* calls the model through :meth:`Chain.denoise` (as often as it needs, at any index of the
  plan) and continues from the returned ``Denoised.x``: inpainting replaces the known region
  of the state before each network call;
* draws any noise with :meth:`Chain.noise`, which uses the caller's generator(s);
* ends every step with ``x = chain.step_done(k, i, x, denoised)``, which finishes inpainting
  after the last step, records the trajectory and calls the user's callback.

Everything else (respacing, image-to-image's starting point, guidance, conditioning, x0
processing) is already folded into the plan and the model view, so a solver works with all of
it without knowing it exists.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusionkit._random import Generators, randn
from diffusionkit.editing import Inpainting
from diffusionkit.sampling_plan import SamplingPlan
from diffusionkit.schedules import StepCoefficients
from diffusionkit.view import Denoised, DenoiserView

__all__ = ["Chain", "StepCallback"]

#: ``callback(step, t, x_t, x0_pred)`` called after every reverse step; ``step`` counts from 0
#: and ``t`` is the model timestep of the step's (first) network call
StepCallback = Callable[[int, int, Tensor, Tensor], None]


class Chain:
    """One reverse run: the plan, the model view, the randomness and the reporting.

    Args:
        view: the model as a denoiser.
        plan: the timesteps the chain steps through.
        generator: source of every random draw (one generator, or one per sample).
        batch: the batch size ``B``.
        device: where the chain runs.
        calls: the network calls the solver may make (without RePaint's repeats); shown by the
            progress bar, and read by solvers whose calls per step vary (Heun).
        inpaint: the known image and region, when inpainting.
        callback: ``callback(step, t, x_t, x0_pred)`` after every step.
        record: keep every state and ``x0_hat`` for a :class:`~diffusionkit.SampleTrajectory`.
        progress: show a progress bar counting network calls.
    """

    def __init__(
        self,
        view: DenoiserView,
        plan: SamplingPlan,
        generator: Generators,
        *,
        batch: int,
        device: torch.device,
        calls: int,
        inpaint: Inpainting | None = None,
        callback: StepCallback | None = None,
        record: bool = False,
        progress: bool = True,
    ) -> None:
        self.view = view
        self.plan = plan
        self.generator = generator
        self.calls = calls
        self.inpaint = inpaint
        self.callback = callback
        self.indices = plan.indices
        self._model_t = plan.timesteps.tolist()
        # the per-index timestep batches, built before the loop rather than between calls
        t_dev = plan.timesteps.to(device)
        self._t = {i: t_dev[i].expand(batch) for i in self.indices}
        # Heun's second call lands on the next index, which a chain ending noisy has too
        if plan.stop > 0:
            self._t[plan.stop - 1] = t_dev[plan.stop - 1].expand(batch)
        self.xs: list[Tensor] | None = [] if record else None
        self.x0s: list[Tensor] = []
        repeats = inpaint.resample_jumps * (len(self.indices) - 1) if inpaint is not None else 0
        self._bar = tqdm(total=calls + repeats, desc="sampling", disable=not progress)

    def run(self, sample: Callable[[Tensor, Chain], Tensor], x: Tensor) -> Tensor:
        """Run a solver's ``sample(x, chain)`` from ``x`` ``(B, C, H, W)``, the state at the
        plan's first timestep; return the chain's result."""
        if self.xs is not None:
            self.xs.append(x.cpu())
        try:
            return sample(x, self)
        finally:
            self._bar.close()

    # -------------------------------------------------------------- the plan
    def coefficients(self, i: int) -> StepCoefficients:
        """The schedule's scalars at plan index ``i`` (Python floats, no device sync)."""
        return self.plan.schedule.step_coefficients(i)

    # --------------------------------------------------------------- the model
    def denoise(self, x: Tensor, i: int) -> Denoised:
        """Call the model on ``x`` ``(B, C, H, W)`` at plan index ``i``.

        When inpainting, the known region of ``x`` is first replaced by the known image noised
        to ``i``'s timestep (RePaint, Lugmayr et al. 2022, eq. 8): continue from the returned
        ``Denoised.x``.
        """
        abar = self.coefficients(i).alpha_cumprod
        if self.inpaint is not None:
            x = self.inpaint.replace(x, abar, self.generator)
        self._bar.update()
        return self.view.at(x, self._t[i], abar)

    # ------------------------------------------------------------- randomness
    def noise(self, like: Tensor) -> Tensor:
        """``N(0, I)`` shaped like ``like``, from the caller's generator(s)."""
        return randn(like.shape, self.generator, device=like.device, dtype=like.dtype)

    def resample_jumps(self, i: int) -> int:
        """How often the step at index ``i`` is redone after a jump back (RePaint, Sec. 4.2):
        the inpainting's ``resample_jumps`` at every step but the last, else 0."""
        if self.inpaint is None or i <= self.plan.stop:
            return 0
        return self.inpaint.resample_jumps

    def jump_back(self, x: Tensor, i: int) -> Tensor:
        """``x_t ~ q(x_t | x_{t-1})`` from the state after the step at index ``i``."""
        coef = self.coefficients(i)
        return Inpainting.jump_back(x, coef.alpha, coef.beta, self.generator)

    # --------------------------------------------------------------- reporting
    def step_done(self, step: int, i: int, x: Tensor, denoised: Denoised) -> Tensor:
        """End step ``step`` (at plan index ``i``) with state ``x``; continue from the result.

        After the last step of an inpainting chain the known pixels are set exactly; then the
        state and ``denoised.x0`` are recorded and passed to the callback.
        """
        if self.inpaint is not None and i == self.plan.stop:
            x = self.inpaint.finish(x, self.plan.end_alpha_cumprod, self.generator)
        if self.xs is not None:
            self.xs.append(x.cpu())
            self.x0s.append(denoised.x0.cpu())
        if self.callback is not None:
            self.callback(step, self._model_t[i], x, denoised.x0)
        return x
