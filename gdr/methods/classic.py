"""The classic guidance methods: the seed's loop, latent pull, SDEdit, RePaint-style inpainting, DPS, MPGD,
DiffPIR, and decoder inversion (the no-prior reference). Each cites its paper in its docstring."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gdr import checks
from gdr.methods.base import GUIDANCE, EveryK, Guidance, item_loss, noised_start, require_ddim

if TYPE_CHECKING:
    from gdr.measurement import Measurement


@GUIDANCE.register("none")
class Unguided(Guidance):
    """The plain sampler: pure noise, then the scheduler's steps, no pull toward the measurement."""

    per_step_strength = False


@GUIDANCE.register("seed")
class Seed(Guidance):
    """The seed experiment's loop, literally (``shared/docs/methods.md`` §2.3)::

        z = z_y                                   # the clean target latent, not noised
        for t in timesteps:
            z_prev = scheduler.step(eps(z, t), t, z).prev_sample
            z = z_prev + s (z_y - z_prev)         # pull the next (noisy) latent toward the clean target

    ``on="prev_sample"`` (default) pulls ``prev_sample`` as above; ``on="denoised"`` is the other reading of
    the seed's pseudo-code: pull ``pred_original_sample`` and feed that clean estimate to the next, lower
    ``t`` without re-noising. ``s = 1`` returns ``z_y`` exactly (the VAE round trip); ``s = 0`` is plain
    DDIM started from the clean latent at the top noise level. Not a posterior sampler: the UNet sees a
    clean latent labelled as noise level ``t``. Run it with ``sampler.return_denoised: false`` to
    decode the last ``prev_sample`` as the seed did (``configs/seed_experiment.yaml``).
    """

    def __init__(self, on: str = "prev_sample"):
        super().__init__()
        checks.choice("seed.on", on, ("prev_sample", "denoised"))
        self.on = on

    def validate(self, degradation, scheduler):
        require_ddim(scheduler, "seed")

    def start(self, ctx):
        return ctx.measurement.z_y.clone(), 0

    def forward(self, step, ctx, scale):
        base = step.z_prev if self.on == "prev_sample" else step.z0_hat
        # lerp = base + s (z_y - base), exact at both ends (s = 1 gives z_y bit for bit: the VAE round trip).
        return torch.lerp(base, ctx.measurement.z_y.to(base.dtype), scale)


@GUIDANCE.register("latent_pull")
class LatentPull(Guidance):
    """The principled reading of the seed's rule: ``z0_hat <- z0_hat + s (z_y - z0_hat)`` with
    ``z_y = E(M(y))``, then the DDIM step (the seed's literal loop is the ``seed`` method).

    Equals DiffPIR's proximal step with ``A = I`` in latent space (``s = 1 / (1 + rho)``), so it pulls
    toward the degraded latent, degradation included. ``start="noise"`` (default) starts from pure noise;
    ``"target"`` starts from ``z_y`` noised to ``strength`` of the schedule (SDEdit's start, `noised_start`;
    ``strength = 1`` is the top timestep, which keeps only ~2 % of ``z_y``). ``masked=True`` pulls only the
    latent cells the degradation leaves reliable (the principled variant). With ``s = 1`` it returns ``z_y``.
    """

    def __init__(self, start: str = "noise", strength: float = 0.5, masked: bool = False):
        super().__init__()
        checks.choice("latent_pull.start", start, ("target", "noise"))
        self.start_from, self.masked = start, masked
        self.needs_mask = bool(masked)  # only the masked variant reads the latent mask
        self.strength = checks.number("latent_pull.strength", strength, low=0, high=1)

    def validate(self, degradation, scheduler):
        super().validate(degradation, scheduler)
        require_ddim(scheduler, "latent_pull")

    def start(self, ctx):
        if self.start_from == "noise":
            return super().start(ctx)
        return noised_start(ctx, self.strength)

    def forward(self, step, ctx, scale):
        pull = ctx.measurement.z_y - step.z0_hat
        if self.masked:
            pull = ctx.measurement.latent_mask * pull
        return self.replace_x0(step, step.z0_hat + scale * pull)


@GUIDANCE.register("sdedit")
class SDEdit(Guidance):
    """SDEdit (Meng et al., arXiv 2108.01073): noise ``z_y`` to ``strength`` of the schedule (`noised_start`),
    then the plain reverse process. ``strength = 0`` returns ``z_y``; ``1`` starts from (almost) pure noise."""

    per_step_strength = False  # the strength is where it starts, not a per-step weight

    def __init__(self, strength: float = 0.5):
        super().__init__()
        self.strength = checks.number("sdedit.strength", strength, low=0, high=1)

    def start(self, ctx):
        return noised_start(ctx, self.strength)


@GUIDANCE.register("inpaint")
class Inpaint(Guidance):
    """Masked latent replacement (RePaint; AudioLDM's zero-shot inpainting / super-resolution):
    ``z_prev <- z_prev + s m (q(z_y, t_prev) - z_prev)``, ``q`` the forward noising, ``m`` the
    degradation's latent mask (reliable cells). ``s = 1`` is plain replacement."""

    needs_mask = True


    def forward(self, step, ctx, scale):
        z_y = ctx.measurement.z_y
        known = math.sqrt(step.alpha_prev) * z_y + math.sqrt(1 - step.alpha_prev) * ctx.noise_like(z_y)
        return step.z_prev + scale * ctx.measurement.latent_mask * (known - step.z_prev)


class _DataGradient(EveryK):
    """Methods stepping along the gradient of a data loss ``|r|`` (``loss="norm"``) or ``|r|^2`` (``"squared"``)."""

    decoder_gradients = True

    def __init__(self, loss: str = "norm", every: int = 1):
        super().__init__(every)
        checks.choice(f"{type(self).__name__.lower()}.loss", loss, ("norm", "squared"))
        self.loss = loss


@GUIDANCE.register("dps")
class DPS(_DataGradient):
    """DPS (Chung et al., ICLR 2023, arXiv 2209.14687): ``z_prev <- z_prev - s grad_{z_t} L(z0_hat(z_t))``.

    ``loss="norm"``: ``L = |A(G(z0_hat)) - y|`` as in the official code (the paper's step
    ``zeta / |residual|`` on the squared norm, up to a factor 2); ``"squared"``: ``L = |.|^2`` (the
    Gaussian-likelihood step). Backpropagates through the UNet and the decoder.
    """

    def wants_unet_grad(self, i, n):
        return self.active(i, n)

    def forward(self, step, ctx, scale):
        if not self.active(step.i, step.n) or scale == 0:
            return step.z_prev
        loss = item_loss(ctx.measurement.residual(step.z0_hat), self.loss)
        # First order when learning the schedule: the gradient is a constant of the outer backward pass.
        (grad,) = torch.autograd.grad(loss, step.z_t, retain_graph=ctx.keep_graph)
        return step.z_prev - scale * grad


@GUIDANCE.register("mpgd")
class MPGD(_DataGradient):
    """MPGD-Z (He et al., ICLR 2024, arXiv 2311.16424): a gradient step on ``z0_hat`` through the
    decoder only, ``z0' = z0_hat - s grad_{z0} L``, then DDIM with ``z0'``. No UNet backprop."""

    def validate(self, degradation, scheduler):
        require_ddim(scheduler, "mpgd")

    def forward(self, step, ctx, scale):
        if not self.active(step.i, step.n) or scale == 0:
            return step.z_prev
        with torch.enable_grad():
            z0 = step.z0_hat.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(item_loss(ctx.measurement.residual(z0), self.loss), z0)
        return self.replace_x0(step, step.z0_hat - scale * grad)


@GUIDANCE.register("diffpir")
class DiffPIR(EveryK):
    """DiffPIR (Zhu et al., CVPRW 2023, arXiv 2305.08995).

    Data step ``z0* = argmin_z s |A(G(z)) - y|^2 + rho_t |z - z0_hat|^2`` with
    ``rho_t = lam sigma^2 / sigma_bar_t^2``, ``sigma_bar_t^2 = (1 - a_t) / a_t`` (closed form when the
    measurement has one, else ``iters`` Adam steps through the decoder); then
    ``eps_hat = (z_t - sqrt(a_t) z0*) / sqrt(1 - a_t)`` and
    ``z_prev = sqrt(a_prev) z0* + sqrt(1 - a_prev) (sqrt(1 - zeta) eps_hat + sqrt(zeta) xi)``.
    """

    decoder_gradients = True  # the Adam data step; measurements with a closed-form prox skip it

    def __init__(self, lam: float = 1.0, sigma: float = 0.1, zeta: float = 0.3, iters: int = 5, lr: float = 0.05,
                 every: int = 1):
        super().__init__(every)
        for name, v in (("lam", lam), ("sigma", sigma), ("lr", lr)):
            checks.positive(f"diffpir.{name}", v)
        checks.number("diffpir.zeta", zeta, low=0, high=1)
        checks.integer("diffpir.iters", iters, low=1)
        self.lam, self.sigma, self.zeta, self.iters, self.lr = float(lam), float(sigma), float(zeta), iters, float(lr)

    def data_step(self, z0_hat: torch.Tensor, measurement: Measurement, weight, rho: float) -> torch.Tensor:
        closed = measurement.prox(z0_hat, weight, rho)
        if closed is not None:
            return closed
        w = float(weight)
        with torch.enable_grad():
            z = z0_hat.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.iters):
                opt.zero_grad()
                loss = w * item_loss(measurement.residual(z), "squared") + rho * (z - z0_hat.detach()).pow(2).sum()
                loss.backward()
                opt.step()
            z_star = z.detach()
            if not (torch.is_tensor(weight) and weight.requires_grad) and not z0_hat.requires_grad:
                return z_star
            # Implicit function theorem at the optimum w grad L(z*) + 2 rho (z* - z0_hat) = 0, dropping the
            # Hessian of L against 2 rho: dz*/dz0_hat ~ I and dz*/dw ~ -grad L(z*) / (2 rho).
            z_eval = z_star.clone().requires_grad_(True)
            (grad_l,) = torch.autograd.grad(item_loss(measurement.residual(z_eval), "squared"), z_eval)
        w_t = weight if torch.is_tensor(weight) else torch.tensor(w)
        return z_star + (z0_hat - z0_hat.detach()) - (w_t - w_t.detach()) * grad_l / (2 * rho)

    def forward(self, step, ctx, scale):
        z0 = step.z0_hat
        if self.active(step.i, step.n) and scale > 0:
            rho = self.lam * self.sigma**2 * step.alpha_t / (1 - step.alpha_t)
            z0 = self.data_step(step.z0_hat, ctx.measurement, scale, rho)
        eps_hat = (step.z_t.detach() - math.sqrt(step.alpha_t) * z0) / math.sqrt(1 - step.alpha_t)
        noise = math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * ctx.noise_like(z0)
        return math.sqrt(step.alpha_prev) * z0 + math.sqrt(1 - step.alpha_prev) * noise


@GUIDANCE.register("decoder_inversion")
class DecoderInversion(Guidance):
    """Not diffusion: optimise ``z`` directly, from ``z_y``, to minimise ``|A(G(z)) - y|^2`` with Adam.

    The baseline every "the prior restores detail" claim must beat, so evaluation runs it on every task
    (``reference``). ``iters=None`` uses one decoder evaluation per sampling step (as many as a ``dps`` run
    with ``every=1``).
    """

    per_step_strength = False
    uses_prior = False
    decoder_gradients = True
    reference = True

    def __init__(self, iters: int | None = None, lr: float = 0.05):
        super().__init__()
        if iters is not None:
            checks.integer("decoder_inversion.iters", iters, low=1)
        checks.positive("decoder_inversion.lr", lr)
        self.iters, self.lr = iters, float(lr)

    def start(self, ctx):
        n = len(ctx.timesteps)
        with torch.enable_grad():
            z = ctx.measurement.z_y.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.iters or n):
                opt.zero_grad()
                item_loss(ctx.measurement.residual(z), "squared").backward()
                opt.step()
        return z.detach(), n


