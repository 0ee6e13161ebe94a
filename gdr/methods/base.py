"""The guidance-method interface: what a method is asked by the sampler, and what it tells the rest of gdr.

The sampler (`gdr.sampler.sample`) asks a method two things:

* ``start(ctx) -> (z, first)``: the latent to start from and the index of the first timestep to run
  (pure noise and 0 by default; SDEdit starts part-way; decoder inversion runs no diffusion at all);
* ``forward(step, ctx, scale) -> z_prev``: given one scheduler step (``z_t``, ``eps``, ``z0_hat``,
  ``z_prev``), return the corrected ``z_prev``. ``scale`` is this step's strength from the schedule.

Everything else gdr needs to know about a method is a class attribute (`Guidance`'s capabilities), so that no
module outside `gdr.methods` decides anything by a method's name.

DDIM facts used by the x0-correcting methods (latent_pull, mpgd): the DDIM update is
``z_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma xi``, so replacing ``z0_hat`` by
``z0'`` while keeping the model's ``eps`` and the drawn noise is ``z_prev + sqrt(a_prev) (z0' - z0_hat)``.
On the last step the sampler passes ``a_prev = 1`` and ``z_prev = z0_hat`` (it returns the denoised
estimate), so the same formulas give the final output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gdr import checks
from gdr.errors import ConfigError
from gdr.registry import Registry

if TYPE_CHECKING:  # the methods run on any measurement; importing the model stack here would slow every start-up
    from gdr.measurement import Measurement

GUIDANCE = Registry("guidance method")


@dataclass
class Step:
    """One scheduler step as seen by a guidance method. Latents are ``(B, C, L, F)``.

    ``alpha_t`` / ``alpha_prev`` are the cumulative alphas (``a_bar``) at ``t`` and at the step's target.
    ``z_t`` requires grad (and ``eps``, ``z0_hat`` carry the graph) only when the method asked for it.
    """

    i: int
    n: int
    t: torch.Tensor
    z_t: torch.Tensor
    eps: torch.Tensor
    z0_hat: torch.Tensor
    z_prev: torch.Tensor
    alpha_t: float
    alpha_prev: float


@dataclass
class Context:
    """What stays fixed during one sampling run."""

    measurement: Measurement
    scheduler: object
    timesteps: torch.Tensor
    generator: torch.Generator | list[torch.Generator] | None  # a list: one per batch row (`noise_like`)
    keep_graph: bool = False  # the sampler keeps the graph through this step (learning the schedule)
    # The sampler's own ``(z_t (B, C, L, F), t) -> eps`` callable, for methods that need more UNet passes than the
    # step's one (DAPS's probability-flow ODE, ReSample's look-ahead). Conditioning lives inside it.
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def noise_like(self, z: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `z` ``(B, ...)``; with a list of generators row ``b`` from ``generator[b]``."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(z.shape, generator=self.generator, device=z.device, dtype=z.dtype)

    def alpha_bar(self, index: int) -> float:
        """``a_bar`` at ``timesteps[index]``; past the end, the scheduler's final alpha."""
        if index >= len(self.timesteps):
            return float(getattr(self.scheduler, "final_alpha_cumprod", torch.tensor(1.0)))
        return float(self.scheduler.alphas_cumprod[int(self.timesteps[index])])


def item_loss(r: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-item data loss of residual ``r`` ``(B, ...)``: ``|r|`` (DPS code) or ``|r|^2``. Summed over items."""
    sq = r.flatten(1).pow(2).sum(dim=1)
    # |r| is not differentiable at r = 0 (sqrt's gradient there is inf * 0 = NaN); the clamp gives the
    # subgradient 0, so an item that observes nothing (e.g. a chunk inside a gap) gets no guidance.
    return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()


def require_ddim(scheduler, method: str) -> None:
    from diffusers import DDIMScheduler

    if not isinstance(scheduler, DDIMScheduler):
        raise ConfigError(f"{method} edits z0_hat inside a DDIM update and needs the ddim scheduler, "
                          f"got {type(scheduler).__name__}")


class Guidance(nn.Module):
    """Base class of every method; on its own, the unguided sampler.

    Capabilities (class attributes; a subclass sets those that differ, an instance may override per config):
    """

    per_step_strength: bool = True  # reads a per-step strength from the schedule (so a schedule can be learned)
    uses_prior: bool = True  # runs the diffusion prior; False: never calls the UNet and draws no noise (one seed)
    decoder_gradients: bool = False  # backpropagates through the decoder (and the vocoder in the waveform domain)
    needs_mask: bool = False  # needs a degradation with a latent mask (identity, noise, lowpass, gaps)
    reference: bool = False  # evaluation runs it on every task, with its defaults, whether or not the sweep names it

    @classmethod
    def capabilities(cls) -> dict[str, bool]:
        """The capability attributes by name (``--help`` lists them)."""
        return {k: getattr(cls, k) for k in ("per_step_strength", "uses_prior", "decoder_gradients", "needs_mask",
                                             "reference")}

    def validate(self, degradation, scheduler) -> None:
        """Raise `ConfigError` before any work if this method cannot run with `degradation` / `scheduler`.

        Subclasses that add checks call ``super().validate(...)``."""
        if self.needs_mask and not degradation.has_mel_mask:
            raise ConfigError(f"{self.name()} needs a degradation with a latent mask (identity, noise, lowpass, "
                              f"gaps), not {degradation.describe()}")

    @classmethod
    def name(cls) -> str:
        """The registered name (``--guidance.name``)."""
        return next((k for k, v in GUIDANCE.items() if v is cls), cls.__name__.lower())

    def wants_unet_grad(self, i: int, n: int) -> bool:
        """Whether step `i` needs gradients through the UNet (only DPS does)."""
        return False

    def start(self, ctx: Context) -> tuple[torch.Tensor, int]:
        """Pure noise at the first timestep (``randn * init_noise_sigma``, as diffusers' pipelines do)."""
        z_y = ctx.measurement.z_y
        return ctx.noise_like(z_y) * ctx.scheduler.init_noise_sigma, 0

    def forward(self, step: Step, ctx: Context, scale: float) -> torch.Tensor:
        return step.z_prev

    @staticmethod
    def replace_x0(step: Step, z0_new: torch.Tensor) -> torch.Tensor:
        """The DDIM ``z_prev`` had ``z0_hat`` been `z0_new` (same eps, same noise)."""
        if step.alpha_prev == 1.0:  # the sampler's last step returns the estimate itself: z0_new, exactly
            return z0_new
        return step.z_prev + math.sqrt(step.alpha_prev) * (z0_new - step.z0_hat)


class EveryK(Guidance):
    """Methods with a decoder gradient may apply their data step only every `every`-th step (always the last)."""

    def __init__(self, every: int = 1):
        super().__init__()
        self.every = checks.integer("guidance.every", every, low=1)

    def active(self, i: int, n: int) -> bool:
        return (n - 1 - i) % self.every == 0


def noised_start(ctx: Context, strength: float) -> tuple[torch.Tensor, int]:
    """SDEdit's start: ``z_y`` noised to the timestep ``strength`` of the way up the schedule.

    As diffusers' image-to-image pipelines (``get_timesteps``): ``floor(strength n)`` steps are run, from
    ``first = n - floor(strength n)`` (``n`` = number of timesteps), and ``z_y`` is noised to
    ``timesteps[first]`` by the scheduler's forward process ``q(z_t | z_y)``. ``strength = 0`` returns
    ``(z_y, n)``: nothing to run.
    """
    n = len(ctx.timesteps)
    first = n - min(int(strength * n), n)
    z_y = ctx.measurement.z_y
    if first == n:
        return z_y.clone(), n
    return ctx.scheduler.add_noise(z_y, ctx.noise_like(z_y), ctx.timesteps[first:first + 1]), first


def build_guidance(name: str, params: dict | None = None) -> Guidance:
    params = params or {}
    odd = [k for k in params if not isinstance(k, str)]
    if odd:  # YAML 1.1 reads a bare on/off/yes/no as a boolean, e.g. {on: denoised} -> {True: "denoised"}
        raise ConfigError(f"guidance.params has a non-text key {odd[0]!r}: quote it in YAML, e.g. "
                          "'{\"on\": denoised}' (a bare on/off/yes/no is read as a boolean)")
    return GUIDANCE.build(name, **params)

