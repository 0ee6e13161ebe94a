"""Mutation check: does the test suite catch realistic one-line bugs? (Not run by CI: minutes per mutation.)

    python tests/mutate.py                 # every mutation; prints a table, exit 1 if any is missed
    python tests/mutate.py --only dps_sign seed_base
    python tests/mutate.py --list

Each mutation replaces one exact piece of source in a scratch copy of the repository, runs the tests
that should catch it (``-x``, in that copy, with the copy first on ``PYTHONPATH`` so subprocess scripts
import the mutant too), and records one of:

* ``caught``: pytest reported a failing test (exit code 1 and a ``FAILED`` line);
* ``caught (hang)``: the tests ran past the timeout (a hang is a failure the suite would show);
* ``**MISSED**``: every test passed;
* ``**ERROR**``: pytest stopped for another reason (exit code 2-5: interrupted or a collection error,
  an internal error, a usage error such as a wrong test id, no tests collected). Nothing was tested, so
  the entry itself needs mending.

Before anything runs, every selected mutation's ``old`` text must occur exactly once in its file: a
refactor that moves the code makes the script stop, naming the stale entries, instead of silently
testing nothing. The working tree is never touched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("gdr", "tests", "scripts", "configs", "pyproject.toml")
HANG_S = 900


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


M = Mutation
ORACLE = "tests/test_gaussian_oracle.py"
SAMPLER = "tests/test_sampler.py"
LATENT = "gdr/methods/latent_posterior.py"
FAD_FORMULA = "tests/test_fad.py::test_frechet_distance_equals_the_textbook_formula_on_the_packages_statistics"
SCHEDULES = "tests/test_schedules.py"
LORA = "tests/test_training.py::test_a_fresh_lora_changes_nothing_trains_only_itself_and_reloads_with_its_alpha"
TRAINING = "tests/test_training.py::"
DATA = "tests/test_datamodule.py::"
LEARNED_VS_CONSTANT = ("tests/test_learned_vs_constant.py::"
                       "test_a_learned_schedule_is_compared_with_the_best_constant_strength_of_its_own_setting")
CONFIG = "tests/test_evaluate_script.py::test_config_sections_refuse_values_just_outside_their_ranges"
KINDS = ("tests/test_speech_metrics.py::test_clip_kind_from_manifest_then_folder_then_default",
         "tests/test_speech_metrics.py::test_folders_above_the_data_folder_do_not_mark_its_clips")
OWN_CONDITION = "tests/test_cfg.py::test_every_item_is_conditioned_on_the_clap_audio_of_its_own_measurement"
BATCHED = "tests/test_batching.py"
BATCHED_EVAL = "tests/test_batching.py::test_evaluation_batched_equals_one_at_a_time_in_wavs_and_metrics"
MUTATIONS = [
    # ---- methods (gdr/methods/)
    M("dps_sign", "gdr/methods/classic.py", "return step.z_prev - scale * grad", "return step.z_prev + scale * grad",
      (ORACLE,), "DPS steps up the data-loss gradient"),
    M("dps_loss_form", "gdr/methods/base.py", 'return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()',
      "return sq.sum()",
      (ORACLE,), "the default 'norm' data loss silently squared"),
    M("dps_batch_norm", "gdr/methods/base.py", "sq = r.flatten(1).pow(2).sum(dim=1)", "sq = r.pow(2).sum().expand(r.shape[0])",
      (ORACLE,), "per-item norm taken over the whole batch"),
    M("replace_x0_alpha", "gdr/methods/base.py", "return step.z_prev + math.sqrt(step.alpha_prev) * (z0_new - step.z0_hat)",
      "return step.z_prev + step.alpha_prev * (z0_new - step.z0_hat)", (ORACLE,), "a for sqrt(a) in the x0 swap"),
    M("latent_pull_on_z_prev", "gdr/methods/classic.py", "        pull = ctx.measurement.z_y - step.z0_hat\n",
      "        pull = ctx.measurement.z_y - step.z_prev\n", (ORACLE,), "latent_pull pulls z_prev instead of z0_hat"),
    M("latent_pull_mask_ignored", "gdr/methods/classic.py", "            pull = ctx.measurement.latent_mask * pull\n",
      "            pull = pull\n", (ORACLE,), "masked latent_pull pulls every cell"),
    M("inpaint_unnoised", "gdr/methods/classic.py",
      "known = math.sqrt(step.alpha_prev) * z_y + math.sqrt(1 - step.alpha_prev) * ctx.noise_like(z_y)",
      "known = z_y", (ORACLE,), "inpaint pastes the un-noised z_y"),
    M("inpaint_mask_inverted", "gdr/methods/classic.py", "scale * ctx.measurement.latent_mask * (known - step.z_prev)",
      "scale * (1 - ctx.measurement.latent_mask) * (known - step.z_prev)", (ORACLE,), "inpaint replaces the unreliable cells"),
    M("norm_loss_nan_at_zero", "gdr/methods/base.py", 'return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()',
      'return (sq.sqrt() if kind == "norm" else sq).sum()', (ORACLE,), "NaN gradient of the norm loss at a zero residual"),
    M("prox_mask_not_squared", "gdr/measurement.py", "m2 = self.mask.pow(2) * weight", "m2 = self.mask * weight",
      (ORACLE,), "DiffPIR's closed-form prox weighs a soft mask by m, not m^2"),
    M("mpgd_sign", "gdr/methods/classic.py", "return self.replace_x0(step, step.z0_hat - scale * grad)",
      "return self.replace_x0(step, step.z0_hat + scale * grad)", (ORACLE,), "MPGD ascends"),
    M("diffpir_rho_inverted", "gdr/methods/classic.py", "rho = self.lam * self.sigma**2 * step.alpha_t / (1 - step.alpha_t)",
      "rho = self.lam * self.sigma**2 * (1 - step.alpha_t) / step.alpha_t", (ORACLE,), "DiffPIR's sigma_bar inverted"),
    M("diffpir_noise_weight", "gdr/methods/classic.py",
      "noise = math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * ctx.noise_like(z0)",
      "noise = (1 - self.zeta) * eps_hat + self.zeta * ctx.noise_like(z0)", (ORACLE,), "DiffPIR mixes without square roots"),
    M("sdedit_round", "gdr/methods/base.py", "first = n - min(int(strength * n), n)", "first = n - int(round(strength * n))",
      (SAMPLER, ORACLE), "SDEdit's start index rounded instead of floored (diffusers' rule)"),
    M("seed_base", "gdr/methods/classic.py", 'base = step.z_prev if self.on == "prev_sample" else step.z0_hat',
      'base = step.z0_hat if self.on == "prev_sample" else step.z_prev', (SAMPLER, ORACLE),
      "seed pulls the other scheduler output"),
    M("seed_noised_start", "gdr/methods/classic.py", "        return ctx.measurement.z_y.clone(), 0\n",
      "        return noised_start(ctx, 1.0)\n", (SAMPLER, ORACLE), "seed starts from noised z_y"),
    M("seed_lerp_reversed", "gdr/methods/classic.py", "return torch.lerp(base, ctx.measurement.z_y.to(base.dtype), scale)",
      "return torch.lerp(ctx.measurement.z_y.to(base.dtype), base, scale)", (SAMPLER,), "seed's strength reversed"),
    M("off_by_one_alpha", "gdr/methods/base.py", "return float(self.scheduler.alphas_cumprod[int(self.timesteps[index])])",
      "return float(self.scheduler.alphas_cumprod[int(self.timesteps[index]) - 1])", (ORACLE,),
      "alpha_bar read one timestep off"),
    M("sampler_last_step", "gdr/sampler.py", "last = return_denoised and i == n - 1", "last = return_denoised and i == n - 2",
      (SAMPLER, ORACLE), "the sampler returns z0_hat one step early"),
    # ---- latent posterior samplers (gdr/methods/latent_posterior.py, the pixel side of gdr/measurement.py)
    M("psld_glue_sign", LATENT, "loss = loss + self.gamma * item_loss(step.z0_hat - m.consistent_latent(u), self.loss)",
      "loss = loss - self.gamma * item_loss(step.z0_hat - m.consistent_latent(u), self.loss)", (ORACLE,),
      "PSLD's gluing term pushes z0_hat away from E(glued D(z0_hat))"),
    M("psld_glue_not_glued", "gdr/measurement.py", "        return self.encode(self.glue(u))\n",
      "        return self.encode(u)\n", (ORACLE,), "gluing target E(D(z0_hat)) without A^T y + (I - A^T A)"),
    M("psld_glue_mask_not_squared", "gdr/measurement.py", "        m2 = self.mask.pow(2)\n        return m2 * self.y",
      "        m2 = self.mask\n        return m2 * self.y", (ORACLE,), "A^T A taken as A in the latent glue (soft masks)"),
    M("resample_sigma_alpha", LATENT, "r = gamma * (1 - alpha_t / alpha_prev) / (1 - alpha_t)",
      "r = gamma * (1 - alpha_t / alpha_prev) / alpha_t", (ORACLE,), "ReSample's sigma^2 with a_t for 1 - a_t"),
    M("resample_noise_std", LATENT, "return mean + ((1 - alpha_prev) * r / (r + 1)) ** 0.5 * noise",
      "return mean + ((1 - alpha_prev) / (r + 1)) ** 0.5 * noise", (ORACLE,), "ReSample's resampling variance"),
    M("resample_stages_swapped", LATENT, "return self.pixel_stage and n - 1 - i >= max(n // 3, 1)",
      "return self.pixel_stage and n - 1 - i < max(n // 3, 1)", (ORACLE,), "pixel and latent stages swapped"),
    M("resample_first_third", LATENT, "return k % self.every == 0 and k <= n - n // 3",
      "return k % self.every == 0", (ORACLE,), "ReSample does not skip the first third"),
    M("resample_travel_short", LATENT, "last = min(step.i + self.travel, step.n - 1)",
      "last = min(step.i + self.travel - 1, step.n - 1)", (ORACLE,), "look-ahead one step short"),
    M("resample_tol_unsquared", LATENT, "stop = (per_item.detach() < self.tol**2) & ~done",
      "stop = (per_item.detach() < self.tol) & ~done", (ORACLE,), "early stop on the MSE against tol, not tol^2"),
    M("daps_langevin_noise", LATENT, "x = x + lr * score + math.sqrt(2 * lr) * noise_like(x)",
      "x = x + lr * score + math.sqrt(lr) * noise_like(x)", (ORACLE,), "Langevin noise sqrt(lr) for sqrt(2 lr)"),
    M("daps_prior_variance", LATENT, "self.langevin(self.ode(step, ctx), ctx.measurement, (1 - a) / a,",
      "self.langevin(self.ode(step, ctx), ctx.measurement, 1 - a,", (ORACLE,), "r_t^2 = 1 - a_t for sigma_t^2"),
    M("daps_data_tau", LATENT, "score = score - scale * g / self.tau**2", "score = score - scale * g / self.tau",
      (ORACLE,), "likelihood weight 1 / tau for 1 / tau^2"),
    M("daps_renoise_level", LATENT,
      "return math.sqrt(step.alpha_prev) * x0 + math.sqrt(1 - step.alpha_prev) * ctx.noise_like(x0)",
      "return math.sqrt(step.alpha_t) * x0 + math.sqrt(1 - step.alpha_t) * ctx.noise_like(x0)", (ORACLE,),
      "DAPS re-noises to the current level, not the next"),
    M("daps_ode_time", LATENT, "eps = ctx.eps_model(z, ctx.timesteps.new_tensor(ts[k]))",
      "eps = ctx.eps_model(z, step.t)", (ORACLE,), "the ODE evaluates the UNet at the step's t"),
    M("daps_lr_decay", LATENT, "lr = self.lr * (1 + step.i / step.n * (self.lr_min_ratio - 1))",
      "lr = self.lr * (1 + (step.i + 1) / step.n * (self.lr_min_ratio - 1))", (ORACLE,),
      "Langevin step-size decay one level ahead"),
    # ---- degradations and masks (gdr/degradations.py)
    M("gap_placement", "gdr/degradations.py",
      "start = k * segment + int(torch.randint(0, segment - gap + 1, (1,), generator=g))",
      "start = k * segment", ("tests/test_degradations.py",), "gaps always at segment starts"),
    M("gap_length", "gdr/degradations.py", "mask[start:start + gap] = 0", "mask[start:start + gap - 1] = 0",
      ("tests/test_degradations.py",), "gaps one sample short"),
    M("gap_mel_mask_window", "gdr/degradations.py", "windows = padded.unfold(0, N_FFT, HOP_LENGTH)[:frames]",
      "windows = padded.unfold(0, N_FFT // 2, HOP_LENGTH)[:frames]", ("tests/test_degradations.py",),
      "gap mel mask with half the analysis window"),
    M("lowpass_mel_mask_edge", "gdr/degradations.py", "return (top <= self.cutoff_hz).float()",
      "return (top <= 2 * self.cutoff_hz).float()", ("tests/test_degradations.py",), "lowpass mask keeps cut bands"),
    M("latent_mask_no_erosion", "gdr/degradations.py",
      "return -torch.nn.functional.max_pool2d(-cells, 3, stride=1, padding=1)  # erode the reliable region",
      "return cells", ("tests/test_degradations.py",), "latent mask not dilated for the VAE's receptive field"),
    # ---- front end, model (gdr/audio.py, gdr/backbone.py, gdr/text_stack.py, gdr/hub.py)
    M("log_mel_no_clamp", "gdr/audio.py", "torch.clamp(waveform, -1.0, 1.0)", "waveform", ("tests/test_frontend.py",),
      "log_mel does not clip to [-1, 1]"),
    M("latent_padding_value", "gdr/backbone.py", "value=float(torch.log(torch.tensor(LOG_FLOOR)))", "value=0.0",
      ("tests/test_backbone.py",), "mel padded with 0 (loud) instead of the log floor (silence)"),
    M("gpt2_mask_not_grown", "gdr/text_stack.py",
      "        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)\n", "",
      ("tests/test_conditioning.py",), "GPT-2 loop stops extending the attention mask"),
    M("gpt2_first_position", "gdr/text_stack.py", "embeds = torch.cat([embeds, hidden[:, -1:]], dim=1)",
      "embeds = torch.cat([embeds, hidden[:, :1]], dim=1)", ("tests/test_conditioning.py",),
      "GPT-2 loop appends the first position's state"),
    M("text_stack_dtype", "gdr/text_stack.py", "part = cls.from_pretrained(self.folder / name, dtype=torch.float32)",
      "part = cls.from_pretrained(self.folder / name)", ("tests/test_conditioning.py",),
      "text stack loaded in the config's dtype (CLAP float64)"),
    M("original_null_mask", "gdr/text_stack.py",
      'null = Condition(gpt2, t5, torch.ones(t5.shape[:2], dtype=torch.long), "original")',
      'null = Condition(gpt2, t5, torch.zeros(t5.shape[:2], dtype=torch.long), "original")',
      ("tests/test_conditioning.py",), "original null with a zero T5 mask"),
    # ---- conditioning and classifier-free guidance (gdr/conditioning.py, gdr/backbone.py)
    M("cfg_branches_swapped", "gdr/conditioning.py", "        eps_uncond, eps_cond = out.chunk(2)\n",
      "        eps_cond, eps_uncond = out.chunk(2)\n", ("tests/test_cfg.py",), "CFG reads the two halves swapped"),
    M("cfg_formula", "gdr/conditioning.py", "return eps_uncond + self.cfg_scale * (eps_cond - eps_uncond)",
      "return eps_cond + self.cfg_scale * (eps_cond - eps_uncond)", ("tests/test_cfg.py",),
      "CFG extrapolates from the conditional branch"),
    M("negative_not_padded", "gdr/text_stack.py",
      'uncond = dataclasses.replace(self.encode(spec.negative_text, pad_to=length), kind="negative")',
      'uncond = dataclasses.replace(self.encode(spec.negative_text), kind="negative")', ("tests/test_cfg.py",),
      "the negative prompt is not tokenized to the prompt's length (diffusers does)"),
    M("diffusers_null_not_padded", "gdr/text_stack.py",
      'return dataclasses.replace(self.encode("", pad_to=pad_to), kind="diffusers")',
      'return dataclasses.replace(self.encode(""), kind="diffusers")', ("tests/test_cfg.py",),
      "CFG's diffusers null encoded unpadded"),
    M("cfg_batch_not_doubled", "gdr/backbone.py", "z_in = torch.cat([z_t, z_t]) if conditioning.cfg else z_t",
      "z_in = z_t", ("tests/test_cfg.py",), "CFG runs the UNet on half the batch it conditions"),
    M("clap_audio_no_resample", "gdr/text_stack.py",
      "x = torchaudio.functional.resample(waveform.detach().float().cpu().reshape(-1), sample_rate, rate)",
      "x = waveform.detach().float().cpu().reshape(-1)", ("tests/test_cfg.py",),
      "CLAP audio fed 16 kHz samples as if 48 kHz"),
    M("clap_audio_not_renormalised", "gdr/text_stack.py",
      "return (mean / mean.norm().clamp_min(1e-12))[None, None, :]",
      "return mean[None, None, :]", ("tests/test_cfg.py",), "long-clip CLAP embedding left off the unit sphere"),
    M("audio_condition_ignored", "gdr/text_stack.py",
      "        clap = self.clap_text(prompt) if clap is None else clap.to(self.device, torch.float32)\n",
      "        clap = self.clap_text(prompt)\n", ("tests/test_cfg.py",), "the CLAP audio embedding never used"),
    M("condition_key_ignores_clip", "gdr/evaluate.py",
      'return json.dumps([dataclasses.asdict(spec), item.clip_hash, item.clip, item.recipe["degradation"]],',
      'return json.dumps([dataclasses.asdict(spec), item.recipe["degradation"]],', (OWN_CONDITION,),
      "every clip conditioned on the first clip's CLAP audio embedding"),
    M("condition_key_ignores_degradation", "gdr/evaluate.py",
      'return json.dumps([dataclasses.asdict(spec), item.clip_hash, item.clip, item.recipe["degradation"]],',
      'return json.dumps([dataclasses.asdict(spec), item.clip_hash, item.clip],', (OWN_CONDITION,),
      "a sweep's degradations of one clip share the first one's CLAP audio embedding"),
    M("clap_audio_of_clean_clip", "gdr/evaluate.py",
      "audio = runner.measurement(item, _recipe_objects(item.recipe)[0])",
      "audio = runner.plan.clips[item.clip].waveform", (OWN_CONDITION,),
      "audio: measurement conditioned on the clean clip (an oracle leak)"),
    M("hub_selects_bin", "gdr/hub.py", 'for stem, ext in ((safe_stem, "safetensors"), (bin_stem, "bin")):\n            single',
      'for stem, ext in ((bin_stem, "bin"), (safe_stem, "safetensors")):\n            single', ("tests/test_hub.py",),
      "downloads pickled .bin before safetensors"),
    M("hub_no_deadline", "gdr/hub.py", "thread.join(seconds)", "thread.join()", ("tests/test_hub.py",),
      "an unanswered hub request is waited for without bound"),
    # ---- batching (gdr/batching.py, gdr/module.py): a batch must give each item what it gets alone
    M("batch_one_generator", "gdr/module.py",
      "return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]",
      "return [torch.Generator(device=device).manual_seed(int(seeds[0]))] * len(seeds)", (BATCHED,),
      "one generator shared by the batch (rows draw one after another from it)"),
    M("batch_loss_summed", "gdr/methods/base.py",
      'return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()',
      'return sq.sum().clamp_min(1e-30).sqrt() if kind == "norm" else sq.sum()', (BATCHED,),
      "the data loss's norm taken over the whole batch, not per item"),
    M("batch_resample_mean", LATENT, "per_item = measurement.residual(z).pow(2).flatten(1).mean(dim=1)",
      "per_item = measurement.residual(z).pow(2).mean().expand(z.shape[0])", (BATCHED,),
      "ReSample's loss and early stop on the batch mean"),
    M("batch_mask_from_item0", "gdr/degradations.py", "masks = [op.mel_mask(frames, num_samples) for op in self.ops]\n"
      "        if any(m is None for m in masks):\n            return None\n        return torch.cat(masks)",
      "masks = [self.ops[0].mel_mask(frames, num_samples)] * len(self.ops)\n"
      "        if any(m is None for m in masks):\n            return None\n        return torch.cat(masks)", (BATCHED,),
      "every row of a batch gets item 0's gap mask"),
    M("batch_operator_from_item0", "gdr/degradations.py",
      "return torch.cat([op(x[b:b + 1]) for b, op in enumerate(self.ops)])",
      "return torch.cat([self.ops[0](x[b:b + 1]) for b in range(len(self.ops))])", (BATCHED,),
      "every row's waveform goes through item 0's gap operator"),
    M("batch_condition_from_item0", "gdr/conditioning.py",
      "        if all(row is rows[0] for row in rows):\n            return rows[0]\n",
      "        return rows[0]\n", (BATCHED, OWN_CONDITION), "every row conditioned on item 0's condition"),
    M("batch_rows_joined_swapped", "gdr/module.py", "for (i, _), piece in zip(rows, out):",
      "for (i, _), piece in zip(rows, out.flip(0)):", (BATCHED,),
      "a batch's outputs joined into each other's clips"),
    M("batch_items_named_swapped", "gdr/evaluate.py",
      "for item, out, phase, n in zip(items, outs, phases, latents):",
      "for item, out, phase, n in zip(items, outs[::-1], phases, latents):", (BATCHED_EVAL,),
      "items of a pack written under each other's names"),
    # ---- chunking (gdr/chunking.py)
    M("crossfade_amplitude", "gdr/chunking.py", "gain = 1.0 / torch.sqrt(1.0 + rho * torch.sin(2 * theta))",
      "gain = 1.0 / (torch.cos(theta) + torch.sin(theta))", ("tests/test_chunking.py",),
      "amplitude crossfade for every pair (3 dB dip for incoherent chunks)"),
    M("crossfade_power_only", "gdr/chunking.py", "gain = 1.0 / torch.sqrt(1.0 + rho * torch.sin(2 * theta))",
      "gain = torch.ones_like(rho * theta)", ("tests/test_chunking.py",), "equal-power crossfade for coherent chunks"),
    M("crossfade_squared", "gdr/chunking.py", "return gain * (torch.cos(theta) * a + torch.sin(theta) * b)",
      "return gain * (torch.cos(theta) ** 2 * a + torch.sin(theta) ** 2 * b)", ("tests/test_chunking.py",),
      "cos^2/sin^2 weights under the power gain"),
    M("crossfade_negative_rho", "gdr/chunking.py", "rho = rho.clamp(0.0, 1.0)", "rho = rho.clamp(-1.0, 1.0)",
      ("tests/test_chunking.py",), "anti-correlated chunk outputs boosted instead of joined as independent ones"),
    M("chunks_off_grid", "gdr/chunking.py", "length = max(grid, int(round(chunk / grid)) * grid)", "length = chunk",
      ("tests/test_chunking.py",), "chunk length not moved onto the grid"),
    # ---- metrics (gdr/metrics.py)
    M("mrstft_resolution", "gdr/metrics.py", "((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))",
      "((1024, 120, 600), (2048, 240, 1200), (512, 60, 240))", ("tests/test_metrics.py",), "one MR-STFT hop changed"),
    M("lsd_eps_one_side", "gdr/metrics.py", "log_ratio = 2 * torch.log10((s[:, keep] + LSD_EPS) / (s_hat[:, keep] + LSD_EPS))",
      "log_ratio = 2 * torch.log10(s[:, keep] / (s_hat[:, keep] + LSD_EPS) + LSD_EPS)", ("tests/test_metrics.py",),
      "LSD epsilon on one side only"),
    M("align_signed", "gdr/metrics.py", "values = corr.abs() / max(",
      "values = corr / max(", ("tests/test_metrics.py",),
      "alignment not polarity-safe"),
    M("seed_snr_ratio", "gdr/metrics.py", "return 10 * torch.log10(target.pow(2).sum(-1) / (pred - target).pow(2).sum(-1).clamp_min(1e-20))",
      "return 10 * torch.log10(pred.pow(2).sum(-1) / (pred - target).pow(2).sum(-1).clamp_min(1e-20))",
      ("tests/test_metrics.py",), "the seed's SNR against the output's power"),
    # ---- statistics (gdr/stats.py)
    M("bootstrap_seeds_first", "gdr/stats.py", "means = np.array([np.mean(v) for v in per_clip.values()])",
      "means = np.array([x for v in per_clip.values() for x in v])", ("tests/test_stats.py",),
      "seeds treated as independent units in the bootstrap"),
    M("bootstrap_sign", "gdr/stats.py", "sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0", "sign = 1.0",
      ("tests/test_stats.py",), "improvement sign ignores the metric's direction"),
    # ---- evaluation (gdr/evaluate.py, gdr/sweep.py)
    M("oracle_fed_degraded", "gdr/evaluate.py", "source = x if item.method == ORACLE else y", "source = y",
      ("tests/test_evaluate_script.py::test_baseline_rows_hold_what_their_names_say",),
      "the oracle baseline fed the degraded input"),
    M("resume_key_context", "gdr/sweep.py", ', "context": self.recipe.get("context")})', "})",
      ("tests/test_sweep.py::test_resume_keys_change_with_everything_that_changes_a_result",), "resume keys ignore model/LoRA/dtype/chunk context"),
    M("resume_key_sampler", "gdr/sweep.py", '"method": self.method if self.kind == "baseline" else self.recipe,',
      '"method": self.method if self.kind == "baseline" else self.recipe["guidance"],',
      ("tests/test_sweep.py::test_resume_keys_change_with_everything_that_changes_a_result",),
      "resume keys ignore eta/scheduler/domain/steps"),
    M("phase_free_snr_shown", "gdr/evaluate.py", "            if name in PHASE_METRICS and not phase:\n",
      "            if False:\n", ("tests/test_metrics.py",), "SNR of phase-free outputs written as numbers"),
    M("seed_metrics_aligned", "gdr/evaluate.py", "raw = out.detach().cpu()\n",
      "raw = aligned\n", ("tests/test_metrics.py",), "the seed's metrics computed after alignment"),
    # ---- FAD (gdr/fad.py)
    M("fad_cov_biased", "gdr/fad.py", "b = (y - y.mean(0)).T / np.sqrt(len(y) - 1)", "b = (y - y.mean(0)).T / np.sqrt(len(y))",
      (FAD_FORMULA,), "the evaluated set's covariance biased (1/n), the reference's not"),
    M("fad_cross_once", "gdr/fad.py", "return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * cross)",
      "return float(diff @ diff + (a * a).sum() + (b * b).sum() - cross)", (FAD_FORMULA,),
      "the cross term Tr (S_x S_y)^(1/2) subtracted once"),
    M("fad_hub_dir_leak", "gdr/fad.py", "        finally:\n            torch.hub.set_dir(hub_dir)\n",
      "        finally:\n            pass\n", ("tests/test_fad.py::test_fad_per_method_uses_the_packages_pann_embeddings",),
      "the package's torch.hub.set_dir side effect left in place"),
    # ---- strength schedules (gdr/schedules.py)
    M("ramp_never_reaches_end", "gdr/schedules.py", "self.shape(i / max(n - 1, 1))", "self.shape(i / n)",
      (SCHEDULES,), "linear/cosine ramps stop one step short of `end`"),
    M("cosine_quarter_period", "gdr/schedules.py", "return 0.5 * (1 - math.cos(math.pi * frac))",
      "return 1 - math.cos(math.pi / 2 * frac)", (SCHEDULES,), "cosine ramp not slow at its end"),
    M("table_stretched", "gdr/schedules.py", "pos = i / (n - 1) * (self.table.numel() - 1)",
      "pos = i / n * self.table.numel()", (SCHEDULES,), "table interpolated on the wrong grid"),
    M("table_nearest", "gdr/schedules.py", "return float((1 - w) * self.table[lo] + w * self.table[lo + 1])",
      "return float(self.table[lo])", (SCHEDULES,), "table read at the lower entry, not interpolated"),
    # ---- LoRA (gdr/adapters.py)
    M("lora_random_init", "gdr/adapters.py", "init_lora_weights=True)", "init_lora_weights=False)", (LORA,),
      "a fresh LoRA is not the identity (B not zero)"),
    M("lora_alpha_saved_as_rank", "gdr/adapters.py", '"lora_alpha": config.lora_alpha,', '"lora_alpha": config.r,',
      (LORA,), "the exported adapter reloads with scale 1 instead of alpha / rank"),
    M("lora_first_targets_only", "gdr/adapters.py", "target_modules=list(target_modules), lora_dropout",
      "target_modules=list(target_modules)[:2], lora_dropout", (LORA,),
      "LoRA on to_q/to_k only: the configured to_v and to_out.0 left without an adapter"),
    # ---- training (gdr/training.py) and its data (gdr/datamodule.py)
    M("ema_weights_swapped", "gdr/training.py", ".mul_(d).add_(p.detach(), alpha=1 - d)",
      ".mul_(1 - d).add_(p.detach(), alpha=d)", (TRAINING + "test_ema_is_the_decayed_average_of_the_trained_parameters",), "EMA keeps 1 - decay of the average"),
    M("learned_schedule_init", "gdr/training.py", "raw = math.log(math.expm1(init)) if init < 20 else init",
      "raw = math.log(init)", (TRAINING + "test_learned_schedule_starts_at_its_initial_strength",), "softplus not inverted at init: the schedule starts at log(1 + init)"),
    M("checkpoint_drops_lora", "gdr/training.py", "if k in keep or not k.startswith(\"backbone.\")}",
      "if not k.startswith(\"backbone.\")}", (TRAINING + "test_checkpoints_keep_every_trained_parameter_and_nothing_else_of_the_backbone",), "checkpoints drop the trained LoRA weights"),
    M("checkpoint_holds_ema_as_weights", "gdr/training.py", "        if self._ema_swapped:\n            # Saved during",
      "        if False:\n            # Saved during",
      (TRAINING + "test_a_checkpoint_taken_during_validation_holds_the_raw_weights_and_the_average_apart",),
      "a checkpoint saved during validation stores the EMA as the weights: resume continues from the average"),
    M("noise_keyed_by_batch_position", "gdr/training.py",
      "seed_for(int(key), self.hparams.seed_offset))\n                for key in batch[\"key\"].tolist()]",
      "seed_for(k, self.hparams.seed_offset))\n                for k in range(len(batch[\"key\"]))]",
      (TRAINING + "test_two_processes_equal_one_process_with_the_global_batch",),
      "item noise keyed by the place in this process's batch: 2 GPUs no longer equal 1"),
    M("window_fixed_at_the_end", "gdr/training.py", "return int(torch.randint(0, n - k + 1, (1,), generator=g))",
      "return n - k", (TRAINING + "test_the_grad_steps_window_moves_so_every_strength_is_trained_over_a_run",),
      "the grad_steps window never moves: the early strengths are never trained"),
    M("knots_reversed", "gdr/schedules.py", "pos = min(max(float(level), 0.0), 1.0) * (k - 1)",
      "pos = (1 - min(max(float(level), 0.0), 1.0)) * (k - 1)", (SCHEDULES,),
      "knots read from the noisy end: a knots schedule runs backwards"),
    M("items_ignore_epoch", "gdr/datamodule.py", 'seed_for("item", self.seed, epoch, position)',
      'seed_for("item", self.seed, position)', (DATA + "test_short_epochs_draw_without_replacement_and_continue_where_the_last_stopped",),
      "every epoch's items get the same keys, crops and noise"),
    M("draws_ignore_pass", "gdr/datamodule.py", "k, offset = divmod(draw, n)", "k, offset = 0, draw % n",
      (DATA + "test_short_epochs_draw_without_replacement_and_continue_where_the_last_stopped",),
      "every pass over the files in the same order"),
    M("resample_block_too_short", "gdr/audio.py", "first = max(0, start // new - math.ceil(width / orig))",
      "first = max(0, start // new)", (DATA + "test_lazy_crops_equal_the_slice_of_the_whole_decoded_resampled_file",),
      "a lazy crop misses the resampling filter's left margin"),
    M("split_leaks_validation", "gdr/datamodule.py", "in_val = [(str(Path(name).parent) if split_by == \"folder\" else name)",
      "in_val = [(name)", (DATA + "test_split_by_folder_keeps_every_folder_on_one_side",),
      "split_by folder splits files, not folders"),
    # ---- config ranges (gdr/config.py)
    M("overlap_up_to_whole_chunk", "gdr/config.py", "if not 0 <= self.overlap_seconds <= self.seconds / 2:",
      "if not 0 <= self.overlap_seconds <= self.seconds:", (CONFIG,), "chunk overlap allowed up to a whole chunk"),
    M("eta_unbounded", "gdr/schedulers.py", 'checks.number("sampler.eta", eta, low=0, high=1)',
      'checks.number("sampler.eta", eta, low=0)', (CONFIG,),
      "sampler.eta above 1 accepted"),
    M("seeds_zero", "gdr/config.py", 'checks.integer("sampler.seeds", self.seeds, low=1)',
      'checks.integer("sampler.seeds", self.seeds, low=0)', (CONFIG,),
      "sampler.seeds 0 accepted (a run without method outputs)"),
    # ---- DSP baselines (gdr/baselines.py)
    M("lowband_half_cutoff", "gdr/baselines.py", "low = (freqs <= degradation.cutoff_hz)[:, None]",
      "low = (freqs <= degradation.cutoff_hz / 2)[:, None]", ("tests/test_baselines.py",),
      "low-band replacement keeps only half the measured band"),
    M("ar_fade_reversed", "gdr/baselines.py", "row[s:e] = (1 - fade) * fwd + fade * bwd",
      "row[s:e] = fade * fwd + (1 - fade) * bwd", ("tests/test_baselines.py",),
      "AR gap fill trusts each prediction where it is worst"),
    M("declip_unbounded", "gdr/baselines.py", "np.clip(np.abs(guess), level, 2 * level)",
      "np.maximum(np.abs(guess), level)", ("tests/test_baselines.py",), "declipping spline not capped at 2 x level"),
    # ---- clips (gdr/data.py)
    M("clip_name_stem", "gdr/data.py", 'name = relative.with_suffix("").as_posix().replace("/", "__")',
      "name = relative.stem", KINDS, "clip names drop their folders (same-named files collide)"),
    M("kind_above_data_folder", "gdr/data.py", "if folder == base or folder == folder.parent:",
      "if folder == folder.parent:", KINDS, "folders above the data folder mark its clips"),
    # ---- report, listening, plots (gdr/report.py, gdr/listening.py, gdr/plots.py, gdr/templates/)
    M("learned_vs_first_constant", "gdr/report.py",
      "constant = best_baseline(rows, task, metric, constant_peers(rows, task, method))",
      "constant = (constant_peers(rows, task, method) or [None])[0]", (LEARNED_VS_CONSTANT,),
      "a learned schedule compared with the first constant strength, not the best"),
    M("learned_vs_any_steps", "gdr/report.py", "and peer[0].startswith(\"s=\") and peer[1] == learned[1]]",
      "and peer[0].startswith(\"s=\")]", (LEARNED_VS_CONSTANT,),
      "the best constant may come from another step count or setting"),
    M("seeded_reference_last_seed", "gdr/stats.py", "by_clip.setdefault(r[\"clip\"], []).append(v)",
      "by_clip[r[\"clip\"]] = [v]", (LEARNED_VS_CONSTANT,),
      "a seeded reference is paired by its last seed only"),
    M("report_autoescape_off", "gdr/report.py",
      'autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",)),',
      "autoescape=False,", ("tests/test_report.py::test_clip_names_are_text_in_the_html_and_as_written_in_the_markdown",),
      "report.html not escaped: a clip named <script> becomes a script"),
    M("report_markdown_escaped", "gdr/report.py",
      'autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",)),',
      "autoescape=True,", ("tests/test_report.py::test_clip_names_are_text_in_the_html_and_as_written_in_the_markdown",),
      "report.md HTML-escaped too (a&b shows as a&amp;b)"),
    M("report_embed_limit_ignored", "gdr/report.py", "embed_audio=cfg.embed_audio and audio_bytes < EMBED_LIMIT",
      "embed_audio=cfg.embed_audio", ("tests/test_report.py::test_the_html_links_audio_by_default_and_embeds_it_only_when_asked_and_small",),
      "audio embedded however large the run (report.html unopenable)"),
    M("listening_header_safe", "gdr/templates/listening.html.j2", "<th>{{ clip }}</th>", "<th>{{ clip | safe }}</th>",
      ("tests/test_report.py::test_clip_names_are_text_in_the_html_and_as_written_in_the_markdown",),
      "the grid's clip headers marked safe (raw markup)"),
    M("listening_no_clean_row", "gdr/listening.py", 'out = [("clean", "")]', "out = []",
      ("tests/test_report.py::test_the_listening_grid_holds_each_tasks_outputs_with_the_clean_input_first",),
      "the grid loses the clean reference row"),
    M("listening_any_task", "gdr/listening.py", '        if r["task"] == task:\n            cells[',
      "        if True:\n            cells[",
      ("tests/test_report.py::test_the_listening_grid_holds_each_tasks_outputs_with_the_clean_input_first",),
      "a task's grid shows another task's wavs"),
    M("listening_seed_not_text", "gdr/listening.py", 'cells[(r["method"], str(r["seed"]), r["clip"])]',
      'cells[(r["method"], r["seed"], r["clip"])]',
      ("tests/test_report.py::test_the_listening_grid_holds_each_tasks_outputs_with_the_clean_input_first",),
      "seeded outputs never found (int seed vs the grid's text key): empty cells"),
    M("forest_colour_by_sign", "gdr/plots.py",
      "return (BETTER if c.mean > 0 else WORSE) if c.significant else NOT_SIGNIFICANT",
      "return BETTER if c.mean > 0 else WORSE", ("tests/test_report.py::test_the_forest_plot_colours_only_significant_verdicts",),
      "forest plot colours by sign, not by the corrected verdict"),
    M("spectrogram_own_scale", "gdr/plots.py", "vmin=VMIN, vmax=VMAX, ", "",
      ("tests/test_report.py::test_spectrograms_share_one_colour_scale",),
      "spectrograms not on the shared colour scale"),
    M("strength_curves_one_point", "gdr/plots.py", "if not any(len(v) > 1 for v in series.values()):",
      "if not series:", ("tests/test_report.py::test_strength_curves_need_two_strengths",),
      "strength curves drawn from a single strength"),
    # ---- restore (gdr/detect.py, gdr/restore.py, gdr/degradations.py Gaps spans)
    M("restore_splice_everywhere", "gdr/restore.py", "        out[mask] = estimate[mask]\n",
      "        out = estimate.copy()\n",
      ("tests/test_restore.py::test_every_reliable_sample_is_bit_exact_and_the_format_is_kept",),
      "the estimate replaces reliable samples too"),
    M("restore_mask_not_dilated", "gdr/detect.py", "RESAMPLE_REACH_16K = 8", "RESAMPLE_REACH_16K = 0",
      ("tests/test_detect.py::test_the_16k_mask_is_conservative_no_reliable_16k_sample_depends_on_an_unreliable_native_one",),
      "16 kHz mask ignores the resampler's reach"),
    M("declip_not_projected", "gdr/restore.py",
      "estimate = np.where(x >= 0, np.maximum(estimate, x), np.minimum(estimate, x))", "estimate = estimate",
      ("tests/test_restore.py::test_declipped_samples_are_projected_beyond_their_level_and_nothing_else_moves",),
      "restored clipped samples may lie inside the clip level"),
    M("gaps_spans_end_floored", "gdr/degradations.py", "math.ceil(end * SAMPLE_RATE - 1e-6)",
      "math.floor(end * SAMPLE_RATE - 1e-6)",
      ("tests/test_detect.py::test_gaps_at_given_spans_cover_exactly_the_16k_samples_they_touch",),
      "a span's last touched 16 kHz sample left reliable"),
    # ---- run folder, streaming scores, corrected intervals, stop signals, range checks
    M("folder_names_case_sensitive", "gdr/run_folder.py", "counts = Counter(r.casefold() for r in readable.values())",
      "counts = Counter(readable.values())", ("tests/test_run_folder.py",),
      "names differing only in case share a folder on macOS / Windows"),
    M("folder_names_no_hash", "gdr/run_folder.py", 'r = f"{r}-{_stable_hash(name)}" if r else _stable_hash(name)',
      "r = r", ("tests/test_run_folder.py",), "colliding clip names write into one folder"),
    M("stft_frames_symmetric_pad", "gdr/audio.py", "torch.where(index > n - 1, 2 * (n - 1) - index, index)",
      "torch.where(index > n - 1, 2 * n - 1 - index, index)", ("tests/test_metrics.py",),
      "block STFT pads the end symmetrically, not by reflection"),
    M("score_lsd_block_mean", "gdr/metrics.py", "sums[0] += float(log_ratio2.mean(dim=0).sqrt().sum())",
      "sums[0] += float(log_ratio2.mean(dim=0).sqrt().mean())", ("tests/test_metrics.py",),
      "streamed LSD averages block means instead of summing frames"),
    M("score_mrstft_no_floor", "gdr/metrics.py",
      "s_hat, s = s_hat.pow(2).clamp_min(1e-8).sqrt(), s.pow(2).clamp_min(1e-8).sqrt()", "s_hat, s = s_hat, s",
      ("tests/test_metrics.py",), "streamed MR-STFT without auraloss's magnitude floor"),
    M("align_block_overlap_lost", "gdr/metrics.py", "lo, hi = s - max_lag, s + p.shape[-1] + max_lag",
      "lo, hi = s, s + p.shape[-1]", ("tests/test_metrics.py",), "blocked alignment ignores lags across blocks"),
    M("holm_interval_unadjusted", "gdr/stats.py", "c.level = 1.0 - c.alpha * c.p / p", "c.level = 1.0 - c.alpha",
      ("tests/test_stats.py",), "Holm verdicts beside unadjusted intervals"),
    M("bh_interval_bonferroni", "gdr/stats.py", "c.level = 1.0 - max(discoveries, 1) * c.alpha / len(comps)",
      "c.level = 1.0 - c.alpha / len(comps)", ("tests/test_stats.py",), "BH verdicts beside Bonferroni intervals"),
    M("stop_signal_ignored", "gdr/interrupt.py", "            self.signum = signum\n", "            pass\n",
      ("tests/test_interrupt.py::test_a_signal_inside_the_block_stops_at_the_next_check",),
      "SIGTERM recorded nowhere: the run goes on"),
    M("checks_closed_low", "gdr/checks.py", "ok = value > low if low_open else value >= low",
      "ok = value >= low", ("tests/test_checks.py",),
      "an open lower bound accepts its end point"),
]


def stale(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """One line per mutation whose `old` text does not occur exactly once in its file under `root`."""
    lines = []
    for m in mutations:
        path = root / m.file
        count = path.read_text().count(m.old) if path.is_file() else 0
        if count != 1:
            where = f"found {count} times" if path.is_file() else "file missing"
            lines.append(f"{m.id}: the source text in {m.file} {where} (update the mutation)")
    return lines


def verdict(returncode: int, output: str) -> str:
    """``caught`` for a failing test (exit 1 and a FAILED line), ``missed`` for a pass, else ``error``."""
    if returncode == 1 and any(line.startswith("FAILED") for line in output.splitlines()):
        return "caught"
    return "missed" if returncode == 0 else "error"


def run_one(mutation: Mutation, scratch: Path) -> tuple[str, float, str]:
    """Apply `mutation` in `scratch`, run its tests there, restore. Returns (verdict, seconds, note)."""
    path = scratch / mutation.file
    original = path.read_text()
    path.write_text(original.replace(mutation.old, mutation.new))
    env = {**os.environ, "PYTHONPATH": str(scratch), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
                              cwd=scratch, env=env, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        # A mutant may hang (e.g. a removed deadline): the suite would show it, so it counts as caught, said apart.
        return "hang", time.perf_counter() - start, f"tests still running after {HANG_S} s (killed)"
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    result = verdict(proc.returncode, proc.stdout)
    lines = proc.stdout.splitlines()
    if result == "error":
        tail = [line for line in (lines + proc.stderr.splitlines()) if line.strip()][-1:] or [""]
        return result, seconds, f"pytest exit code {proc.returncode}: {tail[0]}"[:110]
    failed = [line for line in lines if line.startswith("FAILED")]
    summary = [line for line in lines if re.match(r"^=* ?\d+ (passed|failed)", line)]
    return result, seconds, (failed + summary[-1:] + [""])[0][:110]


SHOWN = {"caught": "caught", "hang": "caught (hang)", "missed": "**MISSED**", "error": "**ERROR**"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation ids to run")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.only or ()) - {m.id for m in MUTATIONS})
    ids = [m.id for m in MUTATIONS]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if unknown or duplicates:
        print(f"unknown mutation ids: {unknown}; duplicated ids: {duplicates}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:28s} {m.file:24s} {m.what}")
        print(f"{len(chosen)} mutations")
        return 0
    problems = stale(chosen)
    if problems:
        print("stale mutations (nothing was run):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="gdr-mutate-"))
    try:
        for name in COPIED:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, scratch / name)
        print("| mutation | file | what | result | s | first failing test |\n|---|---|---|---|---|---|", flush=True)
        counts = dict.fromkeys(SHOWN, 0)
        for m in chosen:
            result, seconds, note = run_one(m, scratch)
            counts[result] += 1
            print(f"| {m.id} | {m.file} | {m.what} | {SHOWN[result]} | {seconds:.0f} | {note} |", flush=True)
        caught = counts["caught"] + counts["hang"]
        print(f"\n{len(chosen)} mutations, {caught} caught, {counts['missed']} missed, {counts['error']} errors"
              + (f" ({counts['hang']} of the caught by a hang)" if counts["hang"] else ""))
        return 1 if counts["missed"] or counts["error"] else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
