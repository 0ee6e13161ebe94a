"""The sampler and the guidance methods against closed forms, with a Gaussian data prior.

Two kinds of check, both with the real AudioLDM2 DDIM scheduler (the published
``scheduler/scheduler_config.json``: scaled-linear betas, ``leading`` spacing, ``steps_offset = 1``,
``set_alpha_to_one = False``).

Part A: sample-path replay with a full-covariance prior
-------------------------------------------------------
Data ``z0 ~ N(mu, S)`` per item, ``S`` a random 16 x 16 SPD matrix (eigenvalues 0.04 ... 4, random
eigenvectors), items of shape ``(C, L, F) = (2, 4, 2)`` flattened in C order, batch ``B = 3``. Marginal
``z_t ~ N(sqrt(a) mu, a S + (1 - a) I)`` (``a = a_bar_t``), so Gaussian conditioning gives the exact
denoiser ``E[z0 | z_t] = mu + K_t (z_t - sqrt(a) mu)``, ``K_t = sqrt(a) S (a S + (1 - a) I)^-1``, and the
exact noise prediction ``eps(z_t, t) = (z_t - sqrt(a) E[z0 | z_t]) / sqrt(1 - a)`` (the ``eps_model`` the
sampler calls). Its Jacobians are closed form: ``d eps / d z_t = (I - sqrt(a) K_t) / sqrt(1 - a)`` and
``d z0_hat / d z_t = (I - sqrt(1 - a) d eps / d z_t) / sqrt(a)`` (Tweedie, ``methods.md`` §0).

For every method, `replay` re-derives gdr's output in numpy (float64) from the papers' update rules
(``shared/docs/methods.md`` §0, §2) and the methods' docstrings, without calling gdr: the same initial
noise and the same per-step draws, taken from a ``torch.Generator`` seeded as gdr's, in gdr's order:

1. the start: ``randn(z_y.shape)`` (pure-noise start, times ``init_noise_sigma = 1``), or one
   ``randn`` for SDEdit's ``q(z_{t_first} | z_y)``, or nothing (``seed`` starts from ``z_y``);
2. per step: the DDIM ``eta`` noise ``xi`` (drawn by ``DDIMScheduler.step`` only when ``eta > 0``, on
   every step, the last included even though the sampler then returns ``z0_hat``), then the method's
   own draw (``inpaint``: the noise of ``q(z_y, t_prev)``; ``diffpir``: its ``zeta`` noise).

The sampled output must equal the replay to ``rtol = 1e-6`` plus an absolute ``1e-6 max|z|`` (the only
difference is rounding: diffusers' step takes ``sqrt(a_bar)`` of the float32 table in float32, ~6e-8
relative per coefficient; the observed mismatch is <= 1.2e-7 of ``max|z|``, every mutation tried moves
the output by far more), and the generator must end in the same state (no draw missing or extra, even
ones that do not reach the output). A ``Step``'s ``alpha_t`` / ``alpha_prev`` are not compared directly:
a method reading the wrong timestep's ``a_bar`` shows in the output. Cases cover ``eta = 0`` and ``1``,
constant / linear / cosine schedules, several strengths, 5-8 steps, ``return_denoised`` true and false, binary per-item
masks (and a soft mask where the method's formula is valid for one), ``B = 3`` so per-item norms differ
from whole-batch ones, and SDEdit strengths with ``strength n`` = 1.5, 2.8, 3.5 (floor != round).
`test_replayed_ddim_samples_the_full_prior` checks the yardstick itself: the replay's unguided paths
have the exact law of the DDIM recursion, and that law tends to the prior.

Part B: distribution level with a diagonal prior
------------------------------------------------
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
   misses the marginal mean sqrt(a_T) mu (mean error <= 2 sqrt(a_T) |mu|, a_T = 2e-4); inpaint is
   exact for noiseless masks (observed = y, unobserved = the unguided law); DPS and DiffPIR land
   within 0.15 |y - mu| + 0.05 of the posterior mean on observed coordinates (their approximations
   ignore the posterior covariance of x0 given z_t), and are exactly the unguided law on unobserved
   ones (diagonal prior, mask).
"""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from gdr.builders import PUBLISHED_DIR
from gdr.methods import build_guidance
from gdr.measurement import LatentMeasurement
from gdr.sampler import sample
from gdr.schedules import build_schedule

SCHEDULER_CONFIG = PUBLISHED_DIR / "audioldm2" / "scheduler" / "scheduler_config.json"


def _scheduler():
    return DDIMScheduler.from_config(json.loads(SCHEDULER_CONFIG.read_text()))


# ================================================================ Part A: full covariance, sample paths
FULL = (3, 2, 4, 2)  # (B, C, L, F): B = 3 items, each one 16-dim Gaussian vector
NB, D = FULL[0], int(np.prod(FULL[1:]))
SEED = 7
RTOL, ATOL = 1e-6, 1e-6  # observed: <= 1.2e-7 of max|z| (float32 sqrt(a_bar) in diffusers)


def full_prior(rng: np.random.Generator, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (d,), S (d, d))``: a random SPD covariance (eigenvalues 0.04 ... 4, random eigenvectors), a random mean."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (q * np.geomspace(0.04, 4.0, d)) @ q.T
    cov = (cov + cov.T) / 2
    return 0.5 * rng.standard_normal(d), cov


@pytest.fixture(scope="module")
def gauss():
    """Prior ``N(mu, S)`` with a full ``S``; a target ``y = x + 0.1 n`` per item; masks per item."""
    rng = np.random.default_rng(0)
    mu, cov = full_prior(rng)
    x = mu + rng.standard_normal((NB, D)) @ np.linalg.cholesky(cov).T
    y = x + 0.1 * rng.standard_normal((NB, D))
    binary = np.stack([rng.permutation(np.r_[np.ones(D // 2), np.zeros(D - D // 2)]) for _ in range(NB)])
    soft = rng.uniform(0.1, 1.0, (NB, D)) * (rng.random((NB, D)) < 0.75)
    soft[:, 0] = 0.6  # every item observes something
    blind = binary.copy()
    blind[1] = 0  # item 1 observes nothing: its residual is exactly 0
    return {"mu": mu, "cov": cov, "y": y, "binary": binary, "soft": soft, "blind": blind, "ones": np.ones((NB, D))}


def exact_full_eps_model(mu, cov, scheduler):
    """``eps(z_t, t)`` of the Gaussian prior (torch, differentiable, float64), by eigendecomposition of S."""
    mu_t = torch.tensor(mu)
    lam, u = torch.linalg.eigh(torch.tensor(cov))

    def eps(z_t, t):
        a = scheduler.alphas_cumprod[int(t)].double().cpu()
        z = z_t.reshape(z_t.shape[0], -1)
        gain = a.sqrt() * lam / (a * lam + 1 - a)  # K_t in S's eigenbasis
        x0 = mu_t + (((z - a.sqrt() * mu_t) @ u) * gain) @ u.T
        return ((z - a.sqrt() * x0) / (1 - a).sqrt()).reshape(z_t.shape)

    return eps


def strength(spec, i, n):
    """The schedule's strength at step ``i`` of ``n`` (``gdr/schedules.py`` docstrings: constant; linear
    ``start + (end - start) i / (n - 1)``; cosine ``start + (end - start) (1 - cos(pi i / (n - 1))) / 2``)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    frac = i / max(n - 1, 1)
    shape = frac if spec["name"] == "linear" else 0.5 * (1 - math.cos(math.pi * frac))
    return spec["start"] + (spec["end"] - spec["start"]) * shape


def replay(method, p, g, mask_kind, *, sched, steps, eta, return_denoised=True, seed=SEED):
    """gdr's output for ``method`` with params ``p``, re-derived in numpy. Returns ``(z (B, D), generator)``.

    Timesteps (diffusers' ``leading`` spacing): ``t_i = (n - 1 - i) floor(1000 / n) + 1``; the DDIM step
    from ``t`` targets ``t - floor(1000 / n)`` (``a_bar[0]`` when that is < 0: ``set_alpha_to_one = False``).
    ``a_bar`` is the scheduler's table (the model's noise schedule, a given). DDIM (``methods.md`` §0):
    ``z_prev = sqrt(a_p) z0 + sqrt(1 - a_p - s^2) eps + s xi``,
    ``s = eta sqrt((1 - a_p) / (1 - a)) sqrt(1 - a / a_p)``; on the last step with ``return_denoised``
    the sampler lands on ``a_p = 1`` (output ``z0``, the eta draw is still made).
    """
    cfg = json.loads(SCHEDULER_CONFIG.read_text())
    abar = _scheduler().alphas_cumprod.double().numpy()
    mu, cov, y = g["mu"], g["cov"], g["y"]
    m = g[mask_kind]
    gen = torch.Generator().manual_seed(seed)
    shape = (len(y), *FULL[1:])  # the draws are shaped like z_y, (B, C, L, F)

    def draw():
        return torch.randn(shape, generator=gen, dtype=torch.float64).numpy().reshape(len(y), D)

    n, ratio = steps, cfg["num_train_timesteps"] // steps
    ts = [(n - 1 - i) * ratio + cfg["steps_offset"] for i in range(n)]
    eye = np.eye(D)

    def denoise(z_, a_):  # (E[z0 | z_t], eps) at noise level a_ (the UNet passes DAPS and ReSample add)
        x0_ = mu + (z_ - math.sqrt(a_) * mu) @ (math.sqrt(a_) * cov @ np.linalg.inv(a_ * cov + (1 - a_) * eye)).T
        return x0_, (z_ - math.sqrt(a_) * x0_) / math.sqrt(1 - a_)

    # ---- start
    if method == "seed":  # methods.md §2.3: z = z_y, not noised
        z, first = y.copy(), 0
    elif method == "sdedit" or (method == "latent_pull" and p.get("start") == "target"):
        # SDEdit (§2.1) with diffusers' img2img rule: floor(strength n) steps are run, the last ones.
        k = math.floor(p.get("strength", 0.5) * n)
        first = n - k
        if k == 0:
            return y.copy(), gen
        a0 = abar[ts[first]]
        z = math.sqrt(a0) * y + math.sqrt(1 - a0) * draw()
    else:
        z, first = draw(), 0

    every = p.get("every", 1)
    for i in range(first, n):
        t = ts[i]
        a = abar[t]
        a_next = abar[t - ratio] if t - ratio >= 0 else abar[0]
        sig = eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
        xi = draw() if eta > 0 else np.zeros_like(z)
        last = return_denoised and i == n - 1
        ap, sg = (1.0, 0.0) if last else (a_next, sig)
        s = strength(sched, i, n)
        active = (n - 1 - i) % every == 0  # "every every-th step, always the last"

        k_t = math.sqrt(a) * cov @ np.linalg.inv(a * cov + (1 - a) * eye)  # Gaussian conditioning
        x0 = mu + (z - math.sqrt(a) * mu) @ k_t.T
        eps = (z - math.sqrt(a) * x0) / math.sqrt(1 - a)

        def adamw(z0_, lr, iters, tol):
            return _adamw(z0_, lr, iters, tol, m=m, y=y)

        def ddim(x0_used):
            return math.sqrt(ap) * x0_used + math.sqrt(1 - ap - sg**2) * eps + sg * xi

        def loss_grad(x0_, w):  # d/dx0 of sum_b L(r_b), r = w (x0 - y): |r_b| ("norm") or |r_b|^2
            r = w * (x0_ - y)
            if p.get("loss", "norm") == "norm":  # |r_b| has gradient r_b / |r_b|; 0 (a subgradient) at r_b = 0
                norm = np.linalg.norm(r, axis=1, keepdims=True)
                return np.divide(w * r, norm, out=np.zeros_like(r), where=norm > 0)
            return 2 * w * r

        def loss_grad_x0(x0_):
            return loss_grad(x0_, m)

        def dx0_dz():  # Jacobian of z0_hat(z_t) (module docstring), applied to row vectors as g @ J
            d_eps = (eye - math.sqrt(a) * k_t) / math.sqrt(1 - a)
            return (eye - math.sqrt(1 - a) * d_eps) / math.sqrt(a)

        if method in ("none", "sdedit"):
            z = ddim(x0)
        elif method == "seed":  # pull prev_sample (or the clean estimate) toward z_y
            base = ddim(x0) if p.get("on", "prev_sample") == "prev_sample" else x0
            z = base + s * (y - base)
        elif method == "latent_pull":  # §2.3 principled reading: z0 <- z0 + s (z_y - z0), then DDIM
            w = m if p.get("masked") else 1.0
            z = ddim(x0 + s * w * (y - x0))
        elif method == "inpaint":  # §2.13: z_prev <- z_prev + s m (q(z_y, t_prev) - z_prev)
            zp = ddim(x0)
            known = math.sqrt(ap) * y + math.sqrt(1 - ap) * draw()
            z = zp + s * m * (known - zp)
        elif method == "dps":  # §2.4: z_prev - s grad_{z_t} L(z0_hat(z_t)), chain rule through eps
            zp = ddim(x0)
            if active:
                zp = zp - s * loss_grad_x0(x0) @ dx0_dz()  # row vectors: (J^T g)^T = g^T J
            z = zp
        elif method == "mpgd":  # §2.9 MPGD-Z: z0' = z0 - s grad_{z0} L, then DDIM with z0'
            z = ddim(x0 - s * loss_grad_x0(x0)) if active else ddim(x0)
        elif method == "diffpir":  # §2.7
            lam, sy, zeta = p["lam"], p["sigma"], p["zeta"]
            x_star = x0
            if active:
                rho = lam * sy**2 / ((1 - a) / a)  # rho = lam sigma_n^2 / sigma_bar^2
                # argmin_x s |m (x - y)|^2 + rho |x - x0|^2, per element
                x_star = (s * m**2 * y + rho * x0) / (s * m**2 + rho)
            eps_hat = (z - math.sqrt(a) * x_star) / math.sqrt(1 - a)
            noise = math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * draw()
            z = math.sqrt(ap) * x_star + math.sqrt(1 - ap) * noise
        elif method == "psld":  # §2.10, PSLD Algorithm 2: DPS's term plus the gluing term, through z0_hat(z_t)
            zp = ddim(x0)
            if active:
                # D = E = I and A = diag(m) with measured values m y: the glued latent A^T (m y) + (I - A^T A) z0
                # is m^2 y + (1 - m^2) z0, so the gluing residual z0 - E(...) is m^2 (z0 - y).
                g_x0 = p.get("omega", 1.0) * loss_grad(x0, m) + p.get("gamma", 0.1) * loss_grad(x0, m**2)
                zp = zp - s * g_x0 @ dx0_dz()
            z = zp
        elif method == "resample":  # §2.11, ReSample Algorithm 1 with the official code's step selection
            zp = ddim(x0)
            k_idx = n - 1 - i  # counted down to 0 at the last step
            if k_idx % p.get("every", 10) == 0 and k_idx <= n - n // 3 and s != 0:
                init = x0
                last_j = min(i + p.get("travel", 0), n - 1)
                zz = zp
                for j in range(i + 1, last_j + 1):  # look-ahead: unconditional DDIM (eta = 0), Tweedie at the end
                    init, e_j = denoise(zz, abar[ts[j]])
                    if j < last_j:
                        zz = math.sqrt(abar[ts[j + 1]]) * init + math.sqrt(1 - abar[ts[j + 1]]) * e_j
                if p.get("pixel_stage", True) and k_idx >= max(n // 3, 1):
                    z0y = m**2 * y + (1 - m**2) * init  # E(A^T y + (I - A^T A) D(init)), D = E = I
                else:
                    z0y = adamw(init, p.get("lr", 5e-3), p.get("iters", 500), p.get("tol", 1e-3))
                sigma2_over = s * p.get("gamma", 40.0) * (1 - a / ap) / (1 - a)  # sigma^2 / (1 - a_prev)
                mean = (sigma2_over * math.sqrt(ap) * z0y + zp) / (sigma2_over + 1)
                xi_r = draw()
                zp = mean + math.sqrt((1 - ap) * sigma2_over / (sigma2_over + 1)) * xi_r
            z = zp
        elif method == "daps":  # §2.12, DAPS Algorithm 1: ODE to x0_hat, Langevin on x0, re-noise
            n_ode, rho = p.get("ode_steps", 2), p.get("rho", 7.0)
            sig = np.sqrt((1 - abar) / abar)
            hi, lo = sig[t] ** (1 / rho), sig[0] ** (1 / rho)
            t_ode = [int(np.argmin(np.abs(np.log(sig[: t + 1]) - math.log((hi + k / n_ode * (lo - hi)) ** rho))))
                     for k in range(n_ode)]
            xh, e_k = x0, eps
            for tk in t_ode[1:]:  # DDIM eta = 0 steps along the probability-flow ODE
                zz = math.sqrt(abar[tk]) * xh + math.sqrt(1 - abar[tk]) * e_k
                xh, e_k = denoise(zz, abar[tk])
            r2 = (1 - a) / a  # r_t = sigma_t
            lr_i = p.get("lr", 5e-5) * (1 + i / n * (p.get("lr_min_ratio", 0.01) - 1))
            tau = p.get("tau", 0.01)
            xx = xh
            for _ in range(p.get("langevin_steps", 100)):  # grad |m (x - y)|^2 = 2 m^2 (x - y)
                score = (xh - xx) / r2 - s * 2 * m**2 * (xx - y) / tau**2
                xx = xx + lr_i * score + math.sqrt(2 * lr_i) * draw()
            z = math.sqrt(ap) * xx + math.sqrt(1 - ap) * draw()
        else:
            raise ValueError(method)
    return z, gen


def _adamw(z0, lr, iters, tol, *, m, y):
    """``torch.optim.AdamW`` (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01, decoupled) on each row's (item's) mean
    of ``(m (z - y))^2`` from `z0` ``(B, D)``, a row stopping after a step whose loss was below ``tol^2`` (ReSample's
    code, per item: the other rows go on)."""
    z, m1, m2 = z0.copy(), np.zeros_like(z0), np.zeros_like(z0)
    done = np.zeros(len(z), dtype=bool)
    for k in range(1, iters + 1):
        r = m * (z - y)
        loss, g = np.mean(r**2, axis=1), 2 * m * r / r.shape[1]
        step = z * (1 - lr * 0.01)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g**2
        step = step - lr / (1 - 0.9**k) * m1 / (np.sqrt(m2) / math.sqrt(1 - 0.999**k) + 1e-8)
        z = np.where(done[:, None], z, step)
        if tol:
            done |= loss < tol**2
        if done.all():
            break
    return z


def run_gdr(method, p, g, mask_kind, *, sched, steps, eta, return_denoised=True, seed=SEED):
    scheduler = _scheduler()
    meas = LatentMeasurement(torch.tensor(g["y"]).reshape(FULL), torch.tensor(g[mask_kind]).reshape(FULL))
    gen = torch.Generator().manual_seed(seed)
    out = sample(exact_full_eps_model(g["mu"], g["cov"], scheduler), scheduler, build_guidance(method, dict(p)),
                 build_schedule(sched), meas, steps=steps, eta=eta, generator=gen, return_denoised=return_denoised)
    assert out.shape == FULL and out.dtype == torch.float64
    return out.detach().reshape(NB, D).numpy(), gen


LIN = {"name": "linear", "start": 0.1, "end": 0.8}
COS = {"name": "cosine", "start": 0.0, "end": 0.9}
DIFFPIR = {"lam": 1.0, "sigma": 0.1, "zeta": 0.3}


def _case(method, p, sched, steps, eta, rd=True, mask="binary"):
    name = "-".join([method] + [f"{k}={v}" for k, v in p.items()]
                    + [f"s={sched if isinstance(sched, float) else sched['name']}", f"n={steps}", f"eta={eta}"]
                    + ([] if rd else ["prevsample"]) + ([] if mask == "binary" else [mask]))
    return pytest.param(method, p, sched, steps, eta, rd, mask, id=name)


REPLAY_CASES = [
    _case("none", {}, 0.0, 5, 0.0),
    _case("none", {}, 0.0, 8, 1.0),
    _case("none", {}, 0.0, 6, 1.0, rd=False),
    _case("seed", {}, 0.3, 5, 1.0),  # default on = prev_sample
    _case("seed", {"on": "prev_sample"}, 0.3, 5, 0.0),
    _case("seed", {"on": "prev_sample"}, LIN, 6, 1.0),
    _case("seed", {"on": "prev_sample"}, 0.5, 5, 0.0, rd=False),
    _case("seed", {"on": "denoised"}, 0.3, 5, 0.0),
    _case("seed", {"on": "denoised"}, COS, 7, 1.0, rd=False),
    _case("latent_pull", {}, 0.4, 5, 1.0),  # defaults: start = noise, unmasked
    _case("latent_pull", {"start": "noise"}, 0.4, 5, 0.0),
    _case("latent_pull", {"start": "noise", "masked": True}, COS, 6, 1.0),
    _case("latent_pull", {"start": "target", "strength": 0.7}, 0.4, 5, 0.0),  # 3.5 steps: floor 3
    _case("latent_pull", {"start": "target", "strength": 0.5, "masked": True}, LIN, 7, 1.0),
    _case("latent_pull", {"start": "target", "strength": 1.0}, 0.3, 5, 1.0, rd=False),
    _case("sdedit", {"strength": 0.3}, 0.0, 5, 0.0),  # 1.5 steps: floor 1
    _case("sdedit", {"strength": 0.7}, 0.0, 5, 1.0),  # 3.5 steps: floor 3
    _case("sdedit", {"strength": 0.35}, 0.0, 8, 0.0),  # 2.8 steps: floor 2
    _case("sdedit", {"strength": 1.0}, 0.0, 6, 1.0),
    _case("sdedit", {"strength": 0.1}, 0.0, 5, 0.0),  # 0.5 steps: none, returns z_y
    _case("inpaint", {}, 1.0, 5, 0.0),
    _case("inpaint", {}, LIN, 6, 1.0),
    _case("inpaint", {}, 0.6, 5, 1.0, rd=False, mask="soft"),
    _case("dps", {}, 0.5, 5, 1.0),  # default loss = norm
    _case("dps", {"loss": "norm"}, 0.5, 5, 0.0),
    _case("dps", {"loss": "norm"}, COS, 6, 1.0),
    _case("dps", {"loss": "norm", "every": 2}, 0.8, 6, 0.0, mask="soft"),
    _case("dps", {"loss": "squared"}, 0.2, 5, 0.0),
    _case("dps", {"loss": "squared"}, LIN, 7, 1.0, rd=False),
    _case("mpgd", {"loss": "norm"}, 0.5, 5, 0.0),
    _case("mpgd", {"loss": "norm", "every": 2}, COS, 6, 1.0, mask="soft"),
    _case("mpgd", {"loss": "squared"}, 0.3, 5, 1.0),
    _case("mpgd", {"loss": "squared"}, LIN, 8, 0.0, rd=False),
    _case("diffpir", DIFFPIR, 1.0, 5, 0.0),
    _case("diffpir", {**DIFFPIR, "zeta": 0.0}, LIN, 6, 0.0),
    _case("diffpir", {"lam": 4.0, "sigma": 0.3, "zeta": 1.0}, COS, 7, 1.0),
    _case("diffpir", {**DIFFPIR, "every": 2}, 0.5, 6, 1.0, rd=False),
    # The latent posterior samplers (gdr/latent_posterior.py). Soft masks tell the gluing term's m^2 from m.
    _case("psld", {}, 0.5, 5, 1.0),  # defaults: omega 1, gamma 0.1, loss norm
    _case("psld", {"omega": 1.0, "gamma": 0.5, "loss": "squared"}, LIN, 6, 0.0, mask="soft"),
    _case("psld", {"omega": 0.5, "gamma": 2.0, "every": 2}, COS, 6, 1.0, rd=False, mask="soft"),
    _case("resample", {}, 0.8, 5, 1.0),  # defaults: only the last step is active at 5 steps; 500 AdamW iterations
    _case("resample", {"every": 1, "iters": 5, "lr": 0.05, "tol": 0.0}, 1.0, 6, 0.0, mask="soft"),
    _case("resample", {"every": 2, "iters": 4, "lr": 0.1, "tol": 0.0, "travel": 2}, LIN, 7, 1.0),
    _case("resample", {"every": 1, "iters": 40, "lr": 0.05, "tol": 0.05, "pixel_stage": False, "gamma": 3.0},
          0.5, 5, 1.0, rd=False),
    _case("daps", {"ode_steps": 1, "langevin_steps": 3, "lr": 1e-4, "tau": 0.1}, 1.0, 5, 0.0),
    _case("daps", {"ode_steps": 3, "langevin_steps": 2, "lr": 1e-3, "tau": 0.3, "lr_min_ratio": 0.5}, COS, 6, 1.0,
          mask="soft"),
    _case("daps", {"langevin_steps": 20}, 0.5, 5, 0.0, rd=False),  # defaults otherwise: 2 ODE steps, lr 5e-5
]


@pytest.mark.parametrize("method, p, sched, steps, eta, rd, mask", REPLAY_CASES)
def test_method_equals_its_replay(gauss, method, p, sched, steps, eta, rd, mask):
    """gdr's sample equals the independent replay of the method's update rule (see `replay`), item by
    item, and gdr consumed exactly the replay's random draws (same generator state at the end)."""
    got, gen_gdr = run_gdr(method, p, gauss, mask, sched=sched, steps=steps, eta=eta, return_denoised=rd)
    want, gen_rep = replay(method, p, gauss, mask, sched=sched, steps=steps, eta=eta, return_denoised=rd)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max())
    assert torch.equal(gen_gdr.get_state(), gen_rep.get_state()), "gdr drew a different number of random values"


@pytest.mark.parametrize("method, p", [
    ("seed", {"on": "prev_sample"}), ("seed", {"on": "denoised"}), ("latent_pull", {"start": "noise"}),
    ("latent_pull", {"start": "target", "strength": 0.6}),
])
def test_full_pull_returns_the_target(gauss, method, p):
    """``s = 1`` returns ``z_y`` (``methods.md`` §2.3: the VAE round trip, B1): bit for bit for ``seed``
    (a lerp, as its docstring promises), to rounding for ``latent_pull`` (``z_prev + (z0' - z0_hat)``)."""
    got, _ = run_gdr(method, p, gauss, "ones", sched=1.0, steps=5, eta=1.0)
    if method == "seed":
        assert np.array_equal(got, gauss["y"])
    np.testing.assert_allclose(got, gauss["y"], rtol=0, atol=1e-12)


def test_denoiser_is_tweedie_and_the_replay_schedule_is_the_schedulers(gauss):
    """The oracle itself. (1) The torch eps model's ``z0_hat`` (through diffusers' step) is Tweedie's
    ``E[z0 | z_t] = (z_t + (1 - a) grad log p_t(z_t)) / sqrt(a)`` with the marginal's score
    ``-(a S + (1 - a) I)^-1 (z_t - sqrt(a) mu)``, a derivation independent of Gaussian conditioning.
    (2) The replay's timestep rule ``(n - 1 - i) floor(1000 / n) + 1`` is the scheduler's, and its
    ``a_bar`` table is the scaled-linear one (``betas = linspace(sqrt(b0), sqrt(b1), 1000)^2``)."""
    scheduler = _scheduler()
    eps_model = exact_full_eps_model(gauss["mu"], gauss["cov"], scheduler)
    z = torch.randn(FULL, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zn = z.reshape(NB, D).numpy()
    for t in (1, 201, 601, 876):
        a = float(scheduler.alphas_cumprod[t])
        scheduler.set_timesteps(5)
        out = scheduler.step(eps_model(z, torch.tensor(t)), t, z)
        score = -np.linalg.solve(a * gauss["cov"] + (1 - a) * np.eye(D), (zn - math.sqrt(a) * gauss["mu"]).T).T
        np.testing.assert_allclose(out.pred_original_sample.reshape(NB, D).numpy(),
                                   (zn + (1 - a) * score) / math.sqrt(a), rtol=1e-6, atol=1e-6)
    cfg = json.loads(SCHEDULER_CONFIG.read_text())
    for n in (5, 6, 7, 8, 50):
        scheduler.set_timesteps(n)
        assert scheduler.timesteps.tolist() == [(n - 1 - i) * (1000 // n) + 1 for i in range(n)]
    betas = np.linspace(math.sqrt(cfg["beta_start"]), math.sqrt(cfg["beta_end"]), 1000) ** 2
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), np.cumprod(1 - betas), rtol=2e-5)


def ddim_law(g, steps, eta):
    """Exact law ``N(m, P)`` of the unguided replay's output (``eta`` DDIM, ``return_denoised``): with the
    linear denoiser each step is affine, ``z' = M z + v + s xi`` with ``z0_hat = K z + (I - sqrt(a) K) mu``,
    ``eps = (z - sqrt(a) z0_hat) / sqrt(1 - a)``, so ``m' = M m + v``, ``P' = M P M^T + s^2 I`` from
    ``N(0, I)``. Also returns the law it should tend to as steps grow: the last step returns
    ``E[z0 | z_1]`` (``t = 1``, ``a_1 = a_bar[1]``), whose law is ``N(mu, a_1 S (a_1 S + (1 - a_1) I)^-1 S)``."""
    abar = _scheduler().alphas_cumprod.double().numpy()
    mu, cov, eye = g["mu"], g["cov"], np.eye(D)
    n, ratio = steps, 1000 // steps
    ts = [(n - 1 - i) * ratio + 1 for i in range(n)]
    m, p = np.zeros(D), eye.copy()
    for i, t in enumerate(ts):
        a = abar[t]
        a_next = abar[t - ratio] if t - ratio >= 0 else abar[0]
        s = eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
        if i == n - 1:
            a_next, s = 1.0, 0.0
        k = math.sqrt(a) * cov @ np.linalg.inv(a * cov + (1 - a) * eye)
        ax, bx = k, mu - math.sqrt(a) * k @ mu
        ae, be = (eye - math.sqrt(a) * ax) / math.sqrt(1 - a), -math.sqrt(a) * bx / math.sqrt(1 - a)
        c = math.sqrt(1 - a_next - s**2)
        mat, v = math.sqrt(a_next) * ax + c * ae, math.sqrt(a_next) * bx + c * be
        m, p = mat @ m + v, mat @ p @ mat.T + s**2 * eye
    a1 = abar[ts[-1]]
    return m, p, a1 * cov @ np.linalg.inv(a1 * cov + (1 - a1) * eye) @ cov


def _whiten(cov):
    return np.linalg.inv(np.linalg.cholesky(cov))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_replayed_ddim_samples_the_full_prior(gauss, eta):
    """The yardstick of the sample-path tests is itself right, for ``eta = 0`` and ``1``:

    1. the replay's paths have the law `ddim_law` (4000 paths, 100 steps): whitened by the law's
       covariance, the sample covariance's eigenvalues lie within ``(1 +- 1.5 sqrt(d / B))^2`` (the
       Marchenko-Pastur edges are ``(1 +- sqrt(d / B))^2``) and the mean within 5 standard errors;
    2. that law tends to the prior's (``E[z0 | z_1]``, see `ddim_law`) as steps grow: the whitened
       covariance's eigenvalues are in ``(0.85, 1]`` at 500 steps (DDIM's discretisation loses
       variance: 30 % at 100 steps with ``eta = 1``, 9 % at 500), the deficit at 500 steps is under
       half that at 100, and the mean error is under 0.05 (the ``N(0, I)`` start ignores
       ``sqrt(a_T) mu``)."""
    big = 4000
    z, _ = replay("none", {}, {**gauss, "y": np.zeros((big, D)), "ones": np.ones((big, D))}, "ones",
                  sched=0.0, steps=100, eta=eta)
    m, p, target = ddim_law(gauss, 100, eta)
    w = _whiten(p)
    white = (z - m) @ w.T
    ev = np.linalg.eigvalsh(np.cov(white.T))
    edge = 1.5 * math.sqrt(D / big)
    assert ev.min() > (1 - edge) ** 2 and ev.max() < (1 + edge) ** 2, ev
    assert np.abs(white.mean(0)).max() < 5 / math.sqrt(big)

    wt = _whiten(target)
    deficit = {}
    for steps in (100, 500):
        m, p, _ = ddim_law(gauss, steps, eta)
        ev = np.linalg.eigvalsh(wt @ p @ wt.T)
        assert ev.max() < 1 + 1e-9 and np.abs(wt @ (m - gauss["mu"])).max() < 0.05, (steps, ev)
        deficit[steps] = 1 - ev.min()
    assert deficit[500] < 0.15 and deficit[500] < 0.5 * deficit[100], deficit


def test_diffpir_with_a_soft_mask(gauss):
    """DiffPIR's data step (§2.7) on a soft latent mask: the residual is ``m (z - y)``, so the prox
    weight is ``m^2``. Binary masks (all that gdr's degradations produce) are unaffected."""
    got, _ = run_gdr("diffpir", DIFFPIR, gauss, "soft", sched=1.0, steps=5, eta=0.0)
    want, _ = replay("diffpir", DIFFPIR, gauss, "soft", sched=1.0, steps=5, eta=0.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max())


@pytest.mark.parametrize("method", ["dps", "mpgd"])
def test_norm_loss_with_an_unobserved_item(gauss, method):
    """``|r_b|`` is not differentiable at ``r_b = 0``; its subgradient 0 means an item that observes nothing
    gets no guidance (the other items are unaffected, the loss being a sum over items)."""
    got, _ = run_gdr(method, {"loss": "norm"}, gauss, "blind", sched=0.5, steps=5, eta=0.0)
    want, _ = replay(method, {"loss": "norm"}, gauss, "blind", sched=0.5, steps=5, eta=0.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * np.abs(want).max())


# ================================================================ Part B: diagonal prior, distribution level
SHAPE = (1, 2, 4, 4)  # (B, C, L, F) per sample: 32 coordinates
B = 4000
STEPS = 50


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


# ================================================================ the latent posterior samplers' stochastic parts
def test_daps_langevin_converges_to_the_closed_form_gaussian_posterior(prior):
    """DAPS's inner chain (§2.12) targets ``p(x0 | x0_hat, y) ~ N(x0; x0_hat, r^2 I) exp(-s |m (x0 - y)|^2 / tau^2)``,
    with a linear measurement the Gaussian of precision ``lam = 1 / r^2 + 2 s m^2 / tau^2`` and mean
    ``(x0_hat / r^2 + 2 s m^2 y / tau^2) / lam`` per coordinate. Unadjusted Langevin from ``x0_hat`` with step
    ``h`` is the affine chain ``x' - mean = (1 - h lam) (x - mean) + sqrt(2 h) xi``, whose law after K steps is
    ``N(mean + (1 - h lam)^K (x0_hat - mean), 2 h (1 - (1 - h lam)^(2K)) / (1 - (1 - h lam)^2))``.

    gdr's chain has that law (5 standard errors over 4000 chains), and that law is the posterior up to ULA's own
    bias (stationary variance ``1 / (lam (1 - h lam / 2))``): mean to 1e-6, variance within 6 % at ``h lam <= 0.1``.
    """
    from gdr.methods.latent_posterior import DAPS

    mu, sigma, mask, _ = prior
    x0_hat = (mu + 0.3 * sigma).expand(B, *SHAPE[1:])  # the ODE's estimate, any fixed value
    y = mask * (mu - 0.8 * sigma)  # 1.1 prior standard deviations from x0_hat on every observed coordinate
    r2, tau, s, h, steps = 0.5, 0.5, 1.0, 0.01, 200
    gen = torch.Generator().manual_seed(11)
    daps = DAPS(langevin_steps=steps, tau=tau)
    out = daps.langevin(x0_hat, LatentMeasurement(y.expand(B, *SHAPE[1:]), mask), r2, h, s,
                        lambda z: torch.randn(z.shape, generator=gen, dtype=z.dtype))
    emp = (out.mean(dim=0, keepdim=True).numpy(), out.var(dim=0, keepdim=True).numpy())
    m, yy, xh = mask.numpy(), y.numpy(), x0_hat[:1].numpy()
    lam = 1 / r2 + 2 * s * m**2 / tau**2
    post_mean = (xh / r2 + 2 * s * m**2 * yy / tau**2) / lam
    q = 1 - h * lam
    law = (post_mean + q**steps * (xh - post_mean), 2 * h * (1 - q ** (2 * steps)) / (1 - q**2))
    assert_law(emp, law)
    assert np.abs(law[0] - post_mean).max() < 1e-6
    assert np.all(np.abs(law[1] * lam - 1) <= 0.06)
    # and the measurement moved the observed coordinates: the prior N(x0_hat, r^2) is far from the posterior there
    obs = m > 0
    assert np.all(np.abs(post_mean - xh)[obs] > 5 * np.sqrt(law[1][obs] / B))


def test_resample_draws_the_product_of_the_two_gaussians():
    """ReSample's stochastic resampling (§2.11) draws ``z ~ N(z; z_prev, sigma^2) N(z; sqrt(a) z0(y), 1 - a)``
    (normalised: precision ``1 / sigma^2 + 1 / (1 - a)``, precision-weighted mean), ``a = a_prev``,
    ``sigma^2 = gamma (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)``. 20000 draws per case, 5 standard errors."""
    from gdr.methods.latent_posterior import ReSample

    n = 20000
    gen = torch.Generator().manual_seed(2)
    z0_y = torch.tensor([[-0.7, 0.2, 1.5]], dtype=torch.float64).expand(n, 3)
    z_prev = torch.tensor([[0.4, -1.1, 0.3]], dtype=torch.float64).expand(n, 3)
    for a_t, a_prev, gamma in ((0.3, 0.5, 40.0), (0.9, 0.95, 2.0), (0.01, 0.05, 0.5)):
        out = ReSample.resample(z0_y, z_prev, a_t, a_prev, gamma,
                                torch.randn(z0_y.shape, generator=gen, dtype=torch.float64)).numpy()
        s2 = gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        prec = 1 / s2 + 1 / (1 - a_prev)
        mean = (z_prev[0].numpy() / s2 + math.sqrt(a_prev) * z0_y[0].numpy() / (1 - a_prev)) / prec
        var = 1 / prec
        assert np.all(np.abs(out.mean(0) - mean) <= 5 * math.sqrt(var / n)), (out.mean(0), mean)
        assert np.all(np.abs(out.var(0) - var) <= 5 * var * math.sqrt(2 / n)), (out.var(0), var)
