"""The guided sampling loop: AudioLDM2's denoising loop with one guidance call per step.

Mirrors `AudioLDM2Pipeline.__call__` step 7 (with the null condition and no classifier-free
guidance): the scheduler does the math and returns ``prev_sample`` and ``pred_original_sample``
(``z0_hat``); the guidance method corrects the step. With guidance ``none``, the same generator and
``return_denoised=False``, the latents equal the pipeline's ``output_type="latent"`` result.

``return_denoised=True`` (default) returns the last step's ``z0_hat``: AudioLDM2's DDIM config has
``set_alpha_to_one=False``, so its last ``prev_sample`` still carries noise of std
``sqrt(1 - a_bar_0) = 0.039``; the sampler instead treats the last step as landing on ``a_bar = 1``.
"""

from __future__ import annotations

import inspect

import torch
import torch.utils.checkpoint
from tqdm.auto import tqdm

from gdr.errors import ConfigError
from gdr.measurement import Measurement
from gdr.methods.base import Context, Guidance, Step
from gdr.schedules import Schedule


def sample(
    eps_model,
    scheduler,
    guidance: Guidance,
    schedule: Schedule,
    measurement: Measurement,
    *,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    return_denoised: bool = True,
    progress: bool = False,
    grad_from: int | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Run the guided reverse process; returns the final latent, shaped like ``measurement.z_y``.

    Args:
        eps_model: callable ``(z_t (B, C, L, F), t) -> eps`` (e.g. `AudioLDM2.eps`).
        scheduler: a diffusers scheduler with ``set_timesteps`` / ``step`` (DDIM by default).
        guidance, schedule: the method and its per-step strength.
        measurement: residual and target latent of this batch.
        steps: number of inference steps; eta: DDIM eta (ignored by schedulers without one).
        generator: the only source of randomness (initial noise, eta noise, method noise); a list gives batch
            row ``b`` its own stream ``generator[b]`` (diffusers' `randn_tensor`), the same in any batch as alone.
        grad_from: keep the autograd graph from step `grad_from` to the end (learning a schedule or an
            adapter end to end; 0 = the whole loop); earlier steps, and every step when None, run without one.
        checkpoint: recompute the UNet in the backward pass of those steps (activation checkpointing), so
            the graph holds O(steps x latent) plus one UNet's activations during the backward pass.

    The schedule is asked ``schedule(i, n, level)`` with ``level = t / num_train_timesteps`` in [0, 1], the
    step's diffusion time, so a schedule may be defined over the noise level instead of the step index.
    """
    spacing = getattr(scheduler.config, "timestep_spacing", "leading")
    if spacing != "leading":
        # Methods read a_bar at the step's target as a_bar(timesteps[i + 1]); diffusers' DDIM steps to
        # t - 1000 // steps, which is that timestep only with "leading" spacing (AudioLDM2's).
        raise ConfigError(f"the scheduler's timestep_spacing is {spacing!r}; gdr's methods need 'leading' "
                          "(AudioLDM2's published scheduler config)")
    scheduler.set_timesteps(steps, device=measurement.z_y.device)
    ctx = Context(measurement, scheduler, scheduler.timesteps, generator, eps_model=eps_model)
    step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator))
                   if k in inspect.signature(scheduler.step).parameters}
    z, first = guidance.start(ctx)
    n = len(ctx.timesteps)
    train_timesteps = scheduler.config.num_train_timesteps
    for i in tqdm(range(first, n), desc="denoising", disable=not progress, leave=False):
        t = ctx.timesteps[i]
        keep = grad_from is not None and i >= grad_from
        ctx.keep_graph = keep
        needs = guidance.wants_unet_grad(i, n)
        with torch.set_grad_enabled(keep or needs):
            z_t = z if keep and z.requires_grad else z.detach().requires_grad_(needs)
            if keep and checkpoint:
                eps = torch.utils.checkpoint.checkpoint(eps_model, z_t, t, use_reentrant=False)
            else:
                eps = eps_model(z_t, t)
            out = scheduler.step(eps, t, z_t, **step_kwargs)
            z0_hat = out.pred_original_sample
            last = return_denoised and i == n - 1
            step = Step(i, n, t, z_t, eps, z0_hat, z0_hat if last else out.prev_sample,
                        ctx.alpha_bar(i), 1.0 if last else ctx.alpha_bar(i + 1))
            z = guidance(step, ctx, schedule(i, n, float(t) / train_timesteps))
            if not keep:
                z = z.detach()
    return z
