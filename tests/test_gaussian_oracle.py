"""The sampler and the guidance methods against closed forms, with a Gaussian data prior.

Data ``x0 ~ N(mu, diag sigma^2)`` in a small latent. Its denoiser is exact:
``E[x0 | z_t] = mu + k_t (z_t - sqrt(a_t) mu)``, ``k_t = sigma^2 sqrt(a_t) / (a_t sigma^2 + 1 - a_t)``.
With a masked measurement ``y = m * (x + sigma_y n)`` the posterior is closed form per coordinate:
observed ``N((sigma^2 y + sigma_y^2 mu) / (sigma^2 + sigma_y^2), sigma^2 sigma_y^2 / (sigma^2 + sigma_y^2))``,
unobserved = the prior.

How the tolerances are derived. With this denoiser every method here (unguided DDIM, inpaint, DPS
with the squared loss, DiffPIR with its closed-form prox) is an affine map per coordinate and per
step, ``z' = a z + b + c xi``. So the exact law of each method's output is Gaussian, and its mean
and variance follow from the scalar recursion ``m' = a m + b``, ``v' = a^2 v + c^2`` written below
from the papers' equations (independently of gdr's code). The tests check two things:

1. gdr's samples have that law: |empirical mean - m| <= 5 sqrt(v / B) and
   |empirical var - v| <= 5 v sqrt(2 / B) per coordinate (5 standard errors; B samples).
2. That law is the posterior up to the method's own, computed bias: the unguided sampler's
   discretisation loses variance (DDIM with eta = 0 is exact only as steps -> infinity; at 50 steps
   the recursion gives a 6-13 % variance deficit, under 3 % at 500 steps) and its N(0, 1) start
   misses the marginal mean sqrt(a_T) mu (mean error <= 2 sqrt(a_T) |mu|, a_T = 2e-4); inpaint is exact for noiseless masks (observed =
   y, unobserved = the unguided law); DPS and DiffPIR land within 0.15 |y - mu| + 0.05 of the
   posterior mean on observed coordinates (their approximations ignore the posterior covariance
   of x0 given z_t), and are exactly the unguided law on unobserved ones (diagonal prior, mask).
"""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from gdr.builders import REAL_CONFIG_DIR
from gdr.guidance import build_guidance
from gdr.measurement import LatentMeasurement
from gdr.sampler import sample
from gdr.schedules import build_schedule

SHAPE = (1, 2, 4, 4)  # (B, C, L, F) per sample: 32 coordinates
B = 4000
STEPS = 50


def _scheduler():
    import json

    return DDIMScheduler.from_config(json.loads((REAL_CONFIG_DIR / "scheduler.json").read_text()))


@pytest.fixture(scope="module")
def prior():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 0.5
    sigma = 0.5 + torch.rand(SHAPE, generator=g, dtype=torch.float64)
    mask = (torch.rand(SHAPE, generator=g) < 0.5).double()
    x_true = mu + sigma * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return mu, sigma, mask, x_true


def exact_eps_model(mu, sigma, scheduler):
    def eps(z_t, t):
        a = scheduler.alphas_cumprod[int(t)].double()
        k = sigma**2 * a.sqrt() / (a * sigma**2 + 1 - a)
        x0 = mu + k * (z_t - a.sqrt() * mu)
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()

    return eps


def derived_law(method, mu, sigma, mask, y, scheduler, *, scale=1.0, lam=1.0, sig=0.1, zeta=0.3, steps=STEPS):
    """Exact per-coordinate (mean, var) of the method's output, from the papers' equations (numpy)."""
    scheduler.set_timesteps(steps)
    ts = [int(t) for t in scheduler.timesteps]
    abar = [float(scheduler.alphas_cumprod[t]) for t in ts] + [1.0]  # last step lands on a_bar = 1
    mu, sigma, m, y = (v.numpy() for v in (mu, sigma, mask, y))
    mean, var = np.zeros_like(mu), np.ones_like(mu)
    for i in range(steps):
        A, Ap = abar[i], abar[i + 1]
        k = sigma**2 * math.sqrt(A) / (A * sigma**2 + 1 - A)
        a0, b0 = k, (1 - k * math.sqrt(A)) * mu  # x0_hat = a0 z + b0
        ae, be = (1 - math.sqrt(A) * a0) / math.sqrt(1 - A), -math.sqrt(A) * b0 / math.sqrt(1 - A)
        a = math.sqrt(Ap) * a0 + math.sqrt(1 - Ap) * ae  # DDIM, eta = 0
        b = math.sqrt(Ap) * b0 + math.sqrt(1 - Ap) * be
        c2 = np.zeros_like(mu)
        if method == "inpaint":  # observed cells replaced by q(y, t_prev)
            a, b, c2 = (1 - m) * a, (1 - m) * b + m * math.sqrt(Ap) * y, m * (1 - Ap)
        elif method == "dps":  # z' = DDIM(z) - scale * d/dz |m (x0_hat(z) - y)|^2
            a, b = a - scale * 2 * a0 * m * a0, b - scale * 2 * a0 * m * (b0 - y)
        elif method == "diffpir":
            rho = lam * sig**2 * A / (1 - A)
            w = scale * m / (scale * m + rho)  # x0* = w y + (1 - w) x0_hat
            a_s, b_s = (1 - w) * a0, (1 - w) * b0 + w * y
            ae_s, be_s = (1 - math.sqrt(A) * a_s) / math.sqrt(1 - A), -math.sqrt(A) * b_s / math.sqrt(1 - A)
            a = math.sqrt(Ap) * a_s + math.sqrt(1 - Ap) * math.sqrt(1 - zeta) * ae_s
            b = math.sqrt(Ap) * b_s + math.sqrt(1 - Ap) * math.sqrt(1 - zeta) * be_s
            c2 = (1 - Ap) * zeta * np.ones_like(mu)
        mean, var = a * mean + b, a**2 * var + c2
    return mean, var


def run(method, params, mu, sigma, mask, y, scale=1.0):
    scheduler = _scheduler()
    measurement = LatentMeasurement(y.expand(B, *SHAPE[1:]), mask)
    out = sample(exact_eps_model(mu, sigma, scheduler), scheduler, build_guidance(method, params),
                 build_schedule(scale), measurement, steps=STEPS, generator=torch.Generator().manual_seed(1))
    return out.mean(dim=0, keepdim=True).numpy(), out.var(dim=0, keepdim=True).numpy()


def assert_law(emp, law):
    (emp_mean, emp_var), (mean, var) = emp, law
    se = np.sqrt(np.maximum(var, 1e-30) / B)
    assert np.all(np.abs(emp_mean - mean) <= 5 * se + 1e-9), np.abs(emp_mean - mean).max()
    assert np.all(np.abs(emp_var - var) <= 5 * var * math.sqrt(2 / B) + 1e-9), np.abs(emp_var - var).max()


def posterior(mu, sigma, mask, y, sigma_y):
    m = mask.numpy()
    s2, mu_, y_ = sigma.numpy() ** 2, mu.numpy(), y.numpy()
    mean = np.where(m > 0, (s2 * y_ + sigma_y**2 * mu_) / (s2 + sigma_y**2), mu_)
    var = np.where(m > 0, s2 * sigma_y**2 / (s2 + sigma_y**2), s2)
    return mean, var


def test_unguided_sampler_reproduces_the_prior(prior):
    mu, sigma, mask, _ = prior
    y = torch.zeros(SHAPE, dtype=torch.float64)
    law = derived_law("none", mu, sigma, mask, y, _scheduler())
    assert_law(run("none", {}, mu, sigma, mask, y), law)
    # The start N(0, 1) misses the true marginal mean sqrt(a_T) mu (AudioLDM2's schedule ends at
    # a_T = 7e-5, not 0): the mean error is a small multiple of sqrt(a_T) |mu|.
    scheduler = _scheduler()
    scheduler.set_timesteps(STEPS)
    a_first = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    assert np.all(np.abs(law[0] - mu.numpy()) <= 2 * math.sqrt(a_first) * np.abs(mu.numpy()))
    # DDIM (eta = 0) loses variance per step (Cauchy-Schwarz on its two terms); the loss vanishes as
    # steps grow: 6-13 % at 50 steps for sigma in [0.5, 1.5], under 3 % at 500.
    ratio = law[1] / sigma.numpy() ** 2
    assert np.all((ratio > 0.85) & (ratio < 1.0))
    fine = derived_law("none", mu, sigma, mask, y, _scheduler(), steps=500)[1] / sigma.numpy() ** 2
    assert np.all((fine > 0.97) & (fine > ratio))


def test_inpaint_is_the_exact_posterior_for_a_noiseless_mask(prior):
    mu, sigma, mask, x_true = prior
    y = mask * x_true
    law = derived_law("inpaint", mu, sigma, mask, y, _scheduler())
    emp = run("inpaint", {}, mu, sigma, mask, y)
    m = mask.numpy() > 0
    np.testing.assert_allclose(emp[0][m], y.numpy()[m], atol=1e-9)  # observed cells = y exactly
    assert_law((emp[0][~m], emp[1][~m]), (law[0][~m], law[1][~m]))
    post_mean, post_var = posterior(mu, sigma, mask, y, 0.0)
    assert np.abs(law[0] - post_mean).max() < 0.02
    assert np.all(np.abs(law[1][~m] / post_var[~m] - 1) < 0.15)


@pytest.mark.parametrize("method, params, scale", [
    ("dps", {"loss": "squared"}, 0.5),
    ("diffpir", {"lam": 1.0, "sigma": 0.1, "zeta": 0.3}, 1.0),
])
def test_dps_and_diffpir_approach_the_posterior_mean(prior, method, params, scale):
    mu, sigma, mask, x_true = prior
    sigma_y = 0.1
    y = mask * (x_true + sigma_y * torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    law = derived_law(method, mu, sigma, mask, y, _scheduler(), scale=scale,
                      **({"lam": params["lam"], "sig": params["sigma"], "zeta": params["zeta"]}
                         if method == "diffpir" else {}))
    emp = run(method, params, mu, sigma, mask, y, scale)
    assert_law(emp, law)
    post_mean, _ = posterior(mu, sigma, mask, y, sigma_y)
    m = mask.numpy() > 0
    bound = 0.15 * np.abs(y.numpy() - mu.numpy()) + 0.05
    assert np.all(np.abs(law[0] - post_mean)[m] <= bound[m])
    free = derived_law("none", mu, sigma, mask, y, _scheduler())
    if method == "dps":  # unobserved cells get no gradient: exactly the unguided law (diagonal prior)
        np.testing.assert_allclose(law[0][~m], free[0][~m])
        np.testing.assert_allclose(law[1][~m], free[1][~m])
    # And guidance pulls toward y much more than the unguided sampler does.
    assert np.abs(law[0] - post_mean)[m].mean() < 0.25 * np.abs(free[0] - post_mean)[m].mean()
