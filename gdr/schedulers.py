"""The diffusers schedulers gdr samples with, by name, and the ranges of the sampling settings.

Imports nothing heavy at module level, so configuration errors come before torch and diffusers load.
"""

from __future__ import annotations

from gdr import checks

SCHEDULERS = ("ddim", "ddpm")  # --sampler.scheduler
DOMAINS = ("mel", "waveform")  # --sampler.domain: where data consistency is measured
MAX_STEPS = 1000  # AudioLDM2's training timesteps


def make_scheduler(name: str, config=None):
    """A new diffusers scheduler `name` (``ddim`` -> `DDIMScheduler`, ``ddpm`` -> `DDPMScheduler`), built from
    `config` (a model's ``scheduler.config``) or with diffusers' defaults when None."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kind = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[checks.choice("sampler.scheduler", name, SCHEDULERS)]
    return kind() if config is None else kind.from_config(config)


def check_sampling(steps, eta, scheduler: str = "ddim", domain: str = "mel") -> None:
    """One line (`gdr.errors.ConfigError`) for any sampling setting out of range; from configs, sweep grids and
    the library alike."""
    checks.integer("sampler.steps", steps, low=1, high=MAX_STEPS)
    checks.number("sampler.eta", eta, low=0, high=1)
    checks.choice("sampler.scheduler", scheduler, SCHEDULERS)
    checks.choice("sampler.domain", domain, DOMAINS)
