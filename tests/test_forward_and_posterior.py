"""The closed forms of the forward process and of the posterior, checked independently."""

import pytest
import torch
from oracles import seeded

from diffusionkit import CosineSchedule, DenoiseDiffusion, LinearSchedule


class Zero(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("schedule", [LinearSchedule(200), CosineSchedule(200)])
def test_closed_form_matches_iterating_the_markov_chain(schedule):
    """q(x_t | x0) from eq. 4 against x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, iterated."""
    model = DenoiseDiffusion(Zero(), schedule)
    gen = seeded(0)
    n = 50_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    betas = schedule.betas
    for t in range(schedule.timesteps):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(
            x.shape, generator=gen, dtype=x.dtype
        )
        if t in (0, 20, 99, 199):
            closed, _ = model.forward_sample(x0, t, generator=gen)
            # Monte Carlo standard errors: sd/sqrt(n) for the mean, sd²·sqrt(2/n) for the variance
            var = 1 - schedule.alphas_cumprod[t].item()
            tol_mean = 5 * (var / n) ** 0.5
            tol_var = 5 * var * (2 / n) ** 0.5
            expected_mean = 0.7 * schedule.sqrt_alphas_cumprod[t].item()
            for sample in (x, closed):
                assert abs(sample.mean().item() - expected_mean) < tol_mean
                assert abs(sample.var().item() - var) < tol_var
            assert abs(x.mean().item() - closed.mean().item()) < 2 * tol_mean


def test_forward_sample_is_exactly_the_formula():
    schedule = LinearSchedule(1000)
    model = DenoiseDiffusion(Zero(), schedule)
    x0 = torch.rand(3, 2, 4, 4, generator=seeded(1)) * 2 - 1
    noise = torch.randn(3, 2, 4, 4, generator=seeded(2))
    t = torch.tensor([0, 499, 999])
    x_t, returned = model.forward_sample(x0, t, noise)
    assert returned is noise
    for i in range(3):
        abar = schedule.alphas_cumprod[t[i]].item()
        expected = abar**0.5 * x0[i] + (1 - abar) ** 0.5 * noise[i]
        torch.testing.assert_close(x_t[i], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("schedule", [LinearSchedule(1000), CosineSchedule(100)])
def test_posterior_is_the_bayes_product_of_two_gaussians(schedule):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), multiplied out by hand.

    As a function of x_{t-1}: q(x_t | x_{t-1}) has precision alpha_t / beta_t and mean
    x_t / sqrt(alpha_t); q(x_{t-1} | x0) has precision 1 / (1 - abar_{t-1}) and mean
    sqrt(abar_{t-1}) x0. The product's precision is the sum and its mean the
    precision-weighted average.
    """
    for t in range(1, schedule.timesteps):
        beta = schedule.betas[t].item()
        alpha = 1 - beta
        abar_prev = schedule.alphas_cumprod[t - 1].item()
        precision = alpha / beta + 1 / (1 - abar_prev)
        coef_xt = (alpha**0.5 / beta) / precision
        coef_x0 = (abar_prev**0.5 / (1 - abar_prev)) / precision
        assert schedule.posterior_variance[t].item() == pytest.approx(1 / precision, rel=1e-9)
        assert schedule.posterior_mean_coef_xt[t].item() == pytest.approx(coef_xt, rel=1e-9)
        assert schedule.posterior_mean_coef_x0[t].item() == pytest.approx(coef_x0, rel=1e-9)
    # t = 0: x_{-1} is x0 itself, so the posterior is a point mass at x0
    assert schedule.posterior_mean_coef_x0[0].item() == pytest.approx(1.0)
    assert schedule.posterior_mean_coef_xt[0].item() == pytest.approx(0.0, abs=1e-12)
    assert schedule.posterior_variance[0].item() == 0.0
