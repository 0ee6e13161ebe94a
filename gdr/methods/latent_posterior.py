"""The latent posterior samplers of 2023-25 behind gdr's guidance interface: PSLD, ReSample and DAPS.

They are the methods that made posterior sampling work *with latent* diffusion models (``shared/docs/methods.md``
§2.10-2.12). Each one registers in `gdr.methods.GUIDANCE` and sees the step the way every method does
(`gdr.methods.base.Step`: ``z_t``, the model's ``eps``, ``z0_hat``, the plain ``z_prev``, ``a_bar`` at ``t`` and at the
step's target). What they add:

* the decoder's pixel side of the measurement (`gdr.measurement.Measurement`: ``decode`` = ``D``, ``encode`` =
  ``E``, ``glue`` = PSLD's ``A^T y + (I - A^T A) u``), in the mel domain for AudioLDM2 (``u`` = the log-mel the
  VAE decodes to; the waveform residual goes through the vocoder);
* more UNet passes than the step's one, through ``ctx.eps_model`` (the sampler's callable, conditioning and
  classifier-free guidance included): DAPS's probability-flow ODE, ReSample's look-ahead.

Latents are ``(B, C, L, F)`` (``(B, 8, T / 4, 16)`` for AudioLDM2); ``a`` below is ``a_bar`` (cumulative alpha)
and ``sigma_t = sqrt((1 - a_t) / a_t)`` the noise level of ``z_t / sqrt(a_t)`` (the variance-exploding view the
DAPS paper writes its algorithm in). Defaults come from the papers' and official code's *image* experiments (none
of them was run on audio); each docstring says which.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gdr import checks
from gdr.errors import ConfigError
from gdr.methods.base import GUIDANCE, EveryK, Guidance, item_loss

if TYPE_CHECKING:
    from gdr.measurement import Measurement


def _require_epsilon(scheduler, method: str) -> None:
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind != "epsilon":  # the extra UNet passes are turned into z0 estimates with the epsilon form of Tweedie
        raise ConfigError(f"{method} needs an epsilon-predicting model, the scheduler says {kind!r}")


def _tweedie(z: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    """``z0 = (z - sqrt(1 - a) eps) / sqrt(a)`` (``methods.md`` §0, epsilon prediction)."""
    return (z - math.sqrt(1 - a) * eps) / math.sqrt(a)


@GUIDANCE.register("psld")
class PSLD(EveryK):
    """PSLD (Rout et al., NeurIPS 2023, arXiv 2307.00619), Algorithm 2 ("PSLD"), on the sampler's step::

        z_prev <- z_prev - s grad_{z_t} [ omega L(A(G(z0_hat)) - y) + gamma L(z0_hat - E(A^T y + (I - A^T A) D(z0_hat))) ]

    DPS's measurement term plus the *gluing* term, which keeps ``z0_hat`` a fixed point of encode o decode
    after the measured part of ``D(z0_hat)`` is replaced by ``y`` (`Measurement.glue`: exact for mel-domain
    masks; in the waveform ``x + (y - A(x))``, which is ``A^T y + (I - A^T A) x`` for projections and the
    consistent clamp for clipping). ``s`` is the schedule's per-step strength (the learned schedule learns it).

    Defaults ``omega = 1``, ``gamma = 0.1``: the official code's (``LituRout/PSLD``, its DDIM sampler's arguments;
    per-task scripts use other pairs, e.g. 0.5 / 0.05 for Stable Diffusion box inpainting), image experiments.
    ``loss="norm"`` takes the norms (not squares) of both terms, as that code does (``torch.linalg.norm``), per
    item (gdr's convention, as `DPS`); ``"squared"`` is the algorithm box's ``|.|_2^2``. ``every`` applies the
    step every k-th sampling step (always the last), as DPS's.

    Cost per active step: 1 UNet forward + backward (the VJP through ``z0_hat``), 1 decoder forward + backward (one
    decode feeds both terms; + the vocoder in the waveform domain or for clipping), 1 encoder forward + backward
    (none for identity/noise in the mel domain, where the glued mel is ``M(y)`` and its latent ``z_y``).
    """

    decoder_gradients = True

    def __init__(self, omega: float = 1.0, gamma: float = 0.1, loss: str = "norm", every: int = 1):
        super().__init__(every)
        self.omega = checks.number("psld.omega", omega, low=0)
        self.gamma = checks.number("psld.gamma", gamma, low=0)
        if self.omega == 0 and self.gamma == 0:
            raise ConfigError("psld.omega and psld.gamma are both 0: nothing would guide the sampler")
        checks.choice("psld.loss", loss, ("norm", "squared"))
        self.loss = loss

    def wants_unet_grad(self, i, n):
        return self.active(i, n)

    def forward(self, step, ctx, scale):
        if not self.active(step.i, step.n) or scale == 0:
            return step.z_prev
        m = ctx.measurement
        u = m.decode(step.z0_hat)  # D(z0_hat), shared by both terms
        loss = self.omega * item_loss(m.residual_from(u), self.loss)
        if self.gamma:
            loss = loss + self.gamma * item_loss(step.z0_hat - m.consistent_latent(u), self.loss)
        # First order when learning the schedule, as DPS: the gradient is a constant of the outer backward pass.
        (grad,) = torch.autograd.grad(loss, step.z_t, retain_graph=ctx.keep_graph)
        return step.z_prev - scale * grad


@GUIDANCE.register("resample")
class ReSample(EveryK):
    """ReSample (Song, Kwon et al., ICLR 2024, arXiv 2307.08123), Algorithm 1: hard data consistency on a
    subset of steps, then stochastic resampling back to the step's noise level.

    On an active step (index ``k = n - 1 - i`` counted down to 0 at the last step, as the official code does):

    1. ``z0 = z0_hat`` (the algorithm box's ``z0_hat(z_t)``); with ``travel = T > 0`` the official code's
       look-ahead instead: ``T`` more unconditional DDIM (eta = 0) steps from ``z_prev`` with ``ctx.eps_model``,
       and ``z0`` = the Tweedie estimate at the last of them (``T`` extra UNet forwards);
    2. ``z0(y)``: in the middle third (``k >= max(n // 3, 1)``, ``pixel_stage``) the pixel-space solution
       ``E(glue(D(z0)))`` (`Measurement.glue`: the point that gradient descent on ``|A u - y|^2`` from
       ``u = D(z0)`` converges to for projections; the code runs AdamW for it); in the last third (and always on
       the last step) the latent optimisation ``argmin_z mean |A(G(z)) - y|^2`` by AdamW (lr ``lr``, the code's
       weight decay 0.01) from ``z0``, ``iters`` iterations, stopped early when the mean squared residual (the
       code's ``MSELoss``, per item: each item of a batch stops on its own) drops below ``tol^2`` (the code's
       noise-level stop; its second, 200-iteration plateau rule is not used);
    3. stochastic resampling (the paper's Proposition; the code's ``stochastic_resample``), ``a = a_prev``::

           z_prev ~ N( (sigma^2 sqrt(a) z0(y) + (1 - a) z_prev) / (sigma^2 + 1 - a), sigma^2 (1 - a) / (sigma^2 + 1 - a) I )
           sigma^2 = s gamma (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev)

       i.e. ``gamma`` times the step's DDPM posterior variance, as the official code writes it (``methods.md``
       recalls ``(1 - a_prev) / a_t``; the code's ``1 - a_t`` is used). ``s`` is the schedule's strength: 0
       leaves the step unguided, 1 is the paper's ``gamma``. On the last step (``a_prev = 1``, the sampler
       returns the estimate) this is its limit ``(s gamma z0(y) + z0_hat) / (s gamma + 1)``, noise-free.

    Active steps: every ``every``-th index (``k % every == 0``, the last step included) with the first third
    skipped (``k <= n - n // 3``), the official code's split. Defaults from the code's image runs: ``gamma = 40``,
    ``every = 10``, ``iters = 500``, ``lr = 5e-3``, ``tol = 1e-3``; ``travel = 0`` (the algorithm box; the code
    uses 5). The code also adds a DPS step on every step (its ``measurement_cond_fn``); gdr does not (that is
    ``dps``). With the learned schedule, ``z0(y)`` is first order: ``d z0(y) / d z0_hat ~ I``, as DiffPIR's.

    Cost per active step: ``travel`` UNet forwards; pixel stage: 1 decoder + 1 encoder forward (+ the vocoder in
    the waveform domain or for clipping); latent stage: up to ``iters`` decoder forward + backward passes. No
    UNet backward.
    """

    decoder_gradients = True

    def __init__(self, gamma: float = 40.0, every: int = 10, iters: int = 500, lr: float = 5e-3, tol: float = 1e-3,
                 pixel_stage: bool = True, travel: int = 0):
        super().__init__(every)
        self.gamma = checks.positive("resample.gamma", gamma)
        self.iters = checks.integer("resample.iters", iters, low=1)
        self.lr = checks.positive("resample.lr", lr)
        self.tol = checks.number("resample.tol", tol, low=0)
        checks.choice("resample.pixel_stage", pixel_stage, (True, False))
        self.pixel_stage = pixel_stage
        self.travel = checks.integer("resample.travel", travel, low=0)

    def validate(self, degradation, scheduler):
        if self.travel:
            _require_epsilon(scheduler, "resample with travel > 0")

    def active(self, i, n):
        k = n - 1 - i
        return k % self.every == 0 and k <= n - n // 3

    def in_pixel_stage(self, i: int, n: int) -> bool:
        return self.pixel_stage and n - 1 - i >= max(n // 3, 1)

    def look_ahead(self, step, ctx) -> torch.Tensor:
        """Tweedie's ``z0`` after ``travel`` unconditional DDIM steps from ``z_prev`` (or ``z0_hat`` if none fit)."""
        last = min(step.i + self.travel, step.n - 1)
        if last <= step.i:
            return step.z0_hat
        z = step.z_prev.detach()
        for j in range(step.i + 1, last + 1):
            a = ctx.alpha_bar(j)
            eps = ctx.eps_model(z, ctx.timesteps[j])
            z0 = _tweedie(z, eps, a)
            if j < last:
                a_next = ctx.alpha_bar(j + 1)
                z = math.sqrt(a_next) * z0 + math.sqrt(1 - a_next) * eps
        return z0

    def optimise(self, z0: torch.Tensor, measurement: Measurement) -> torch.Tensor:
        """Latent-space hard data consistency: AdamW on each item's mean squared residual from `z0`, ``(B, C, L, F)``.

        The loss is the sum of the items' own means (so each item gets exactly its own gradient, and AdamW's state is
        per element); an item that meets the tolerance keeps the value of that iteration while the others go on."""
        with torch.enable_grad():
            z = z0.detach().clone().requires_grad_(True)
            opt = torch.optim.AdamW([z], lr=self.lr)
            done = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
            kept = torch.zeros_like(z, requires_grad=False)
            for _ in range(self.iters):
                opt.zero_grad()
                per_item = measurement.residual(z).pow(2).flatten(1).mean(dim=1)  # (B,)
                per_item.sum().backward()
                opt.step()
                with torch.no_grad():
                    z[done] = kept[done]  # items that stopped stay where they stopped
                    if self.tol:
                        stop = (per_item.detach() < self.tol**2) & ~done
                        kept[stop] = z[stop]
                        done |= stop
                if bool(done.all()):
                    break
        return z.detach()

    @staticmethod
    def resample(z0_y: torch.Tensor, z_prev: torch.Tensor, alpha_t: float, alpha_prev: float, gamma,
                 noise: torch.Tensor) -> torch.Tensor:
        """Stochastic resampling of ``z_prev`` toward ``sqrt(a_prev) z0_y`` (see the class docstring).

        Written with ``r = sigma^2 / (1 - a_prev) = gamma (1 - a_t / a_prev) / (1 - a_t)`` so that the last step
        (``a_prev = 1``) is its limit: mean ``(r sqrt(a_prev) z0_y + z_prev) / (r + 1)``,
        variance ``(1 - a_prev) r / (r + 1)``. `gamma` may be a tensor (learned schedule).
        """
        r = gamma * (1 - alpha_t / alpha_prev) / (1 - alpha_t)
        mean = (r * math.sqrt(alpha_prev) * z0_y + z_prev) / (r + 1)
        if alpha_prev == 1.0:
            return mean
        return mean + ((1 - alpha_prev) * r / (r + 1)) ** 0.5 * noise

    def forward(self, step, ctx, scale):
        if not self.active(step.i, step.n) or scale == 0:
            return step.z_prev
        m = ctx.measurement
        with torch.no_grad():
            z0 = self.look_ahead(step, ctx).detach() if self.travel else step.z0_hat.detach()
            if self.in_pixel_stage(step.i, step.n):
                z0_y = m.consistent_latent(m.decode(z0)).to(z0.dtype)
            else:
                z0_y = None
        if z0_y is None:
            z0_y = self.optimise(z0, m)
        z0_y = z0_y + (step.z0_hat - step.z0_hat.detach())  # first order: d z0(y) / d z0_hat ~ I (0 in value)
        return self.resample(z0_y, step.z_prev, step.alpha_t, step.alpha_prev, scale * self.gamma,
                             ctx.noise_like(z0_y))


@GUIDANCE.register("daps")
class DAPS(Guidance):
    """Latent DAPS (Zhang et al., CVPR 2025, arXiv 2407.01521), Algorithm 1 ("decoupled annealing posterior
    sampling"), one annealing level per sampling step (the sampler's timesteps are the levels ``t_i``)::

        x0_hat = ODE(z_t)                                  # probability-flow ODE from t to 0, `ode_steps` steps
        x0 <- x0_hat; repeat `langevin_steps` times:       # Langevin on p(x0 | z_t, y)
            x0 <- x0 + lr_i ( -(x0 - x0_hat) / r_t^2 - s grad |A(G(x0)) - y|^2 / tau^2 ) + sqrt(2 lr_i) xi
        z_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) xi'    # re-noise to the next level (x0 itself on the last step)

    * ODE: DDIM with eta = 0 (the exact Euler step of the probability-flow ODE in the ``(z / sqrt(a), sigma)``
      variables) through the timesteps ``t_k`` whose ``sigma`` is nearest (in log) to the EDM "poly-rho" spacing
      ``(sigma_t^(1/rho) + k / N (sigma_0^(1/rho) - sigma_t^(1/rho)))^rho``, ``k = 0 .. N - 1``, ``sigma_0`` the
      schedule's smallest; its last Tweedie estimate is ``x0_hat``. ``N = 1`` is the step's own ``z0_hat``.
      The first pass is the sampler's; the other ``N - 1`` go through ``ctx.eps_model``.
    * ``r_t = sigma_t = sqrt((1 - a_t) / a_t)`` (the official code's ``prior_solver: gaussian``: the prior score
      ``(x0_hat - x0) / sigma_t^2``); the data term is the code's ``-grad |A(x0) - y|^2 / tau^2`` (the paper's
      ``1 / (2 beta_y^2)`` with ``beta_y = tau / sqrt 2``), here through the decoder (``G``) and the degradation,
      times the schedule's strength ``s`` (the learned schedule learns it; 1 = the paper's).
    * ``lr_i = lr (1 + (i / n) (lr_min_ratio - 1))``: linear decay over the annealing (the code's ``get_lr``).

    Defaults from the official code (``zhangbingliang2019/DAPS``), image experiments: ``ode_steps = 2`` (its LDM
    runs, 50 annealing levels: gdr's default 50 steps), ``rho = 7``, and its Langevin settings (pixel-space
    inpainting config: ``langevin_steps = 100``, ``lr = 5e-5``, ``tau = 0.01``, ``lr_min_ratio = 0.01``; its LDM
    configs use a damped-HMC variant that gdr does not implement). ``every`` does not apply: DAPS replaces the
    whole step. Costs are the knobs ``ode_steps`` and ``langevin_steps``: per step ``ode_steps`` UNet forwards
    (no backward) and ``langevin_steps`` decoder forward + backward passes (+ the vocoder where the residual
    needs it). With the learned schedule, the Langevin chain keeps its graph to ``x0_hat`` and ``s`` (data
    gradients first order).
    """

    decoder_gradients = True

    def __init__(self, ode_steps: int = 2, langevin_steps: int = 100, lr: float = 5e-5, tau: float = 0.01,
                 lr_min_ratio: float = 0.01, rho: float = 7.0):
        super().__init__()
        self.ode_steps = checks.integer("daps.ode_steps", ode_steps, low=1)
        self.langevin_steps = checks.integer("daps.langevin_steps", langevin_steps, low=1)
        self.lr = checks.positive("daps.lr", lr)
        self.tau = checks.positive("daps.tau", tau)
        self.lr_min_ratio = checks.number("daps.lr_min_ratio", lr_min_ratio, low=0, high=1, low_open=True)
        self.rho = checks.positive("daps.rho", rho)

    def validate(self, degradation, scheduler):
        if self.ode_steps > 1:
            _require_epsilon(scheduler, "daps with ode_steps > 1")

    def ode_timesteps(self, alphas_cumprod: torch.Tensor, t: int) -> list[int]:
        """The ``ode_steps`` timesteps ``t = t_0 >= t_1 >= ...`` of the ODE from `t` (see the class docstring)."""
        sigma = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()[: t + 1]
        hi, lo = float(sigma[t]) ** (1 / self.rho), float(sigma[0]) ** (1 / self.rho)
        n = self.ode_steps
        targets = torch.tensor([(hi + k / n * (lo - hi)) ** self.rho for k in range(n)], dtype=torch.float64)
        return [int(v) for v in (sigma.log()[None] - targets.log()[:, None]).abs().argmin(dim=1)]

    def ode(self, step, ctx) -> torch.Tensor:
        """``x0_hat`` ``(B, C, L, F)`` by the probability-flow ODE from ``z_t``."""
        if self.ode_steps == 1:
            return step.z0_hat
        ts = self.ode_timesteps(ctx.scheduler.alphas_cumprod, int(step.t))
        table = ctx.scheduler.alphas_cumprod
        z, eps, x0 = step.z_t, step.eps, step.z0_hat
        for k in range(1, len(ts)):
            a_k = float(table[ts[k]])
            z = math.sqrt(a_k) * x0 + math.sqrt(1 - a_k) * eps  # DDIM eta = 0 from t_{k-1} to t_k
            eps = ctx.eps_model(z, ctx.timesteps.new_tensor(ts[k]))
            x0 = _tweedie(z, eps, a_k)
        return x0

    def langevin(self, x0_hat: torch.Tensor, measurement: Measurement, r2: float, lr: float, scale,
                 noise_like) -> torch.Tensor:
        """``langevin_steps`` unadjusted Langevin steps targeting ``N(x0; x0_hat, r2 I) exp(-s |A(G(x0)) - y|^2 / tau^2)``.

        `x0_hat`: ``(B, C, L, F)``; `r2`: prior variance; `lr`: step size; `noise_like`: the run's generator.
        """
        x = x0_hat
        for _ in range(self.langevin_steps):
            score = (x0_hat - x) / r2
            if scale != 0:
                with torch.enable_grad():
                    xd = x.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(item_loss(measurement.residual(xd), "squared"), xd)
                score = score - scale * g / self.tau**2
            x = x + lr * score + math.sqrt(2 * lr) * noise_like(x)
        return x

    def forward(self, step, ctx, scale):
        a = step.alpha_t
        lr = self.lr * (1 + step.i / step.n * (self.lr_min_ratio - 1))
        x0 = self.langevin(self.ode(step, ctx), ctx.measurement, (1 - a) / a, lr, scale, ctx.noise_like)
        return math.sqrt(step.alpha_prev) * x0 + math.sqrt(1 - step.alpha_prev) * ctx.noise_like(x0)
