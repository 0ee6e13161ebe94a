"""Mutation check: does the test suite catch realistic one-line bugs? (Not run by CI: minutes per mutation.)

    python tests/mutate.py                 # every mutation; prints a table, exit 1 if any is missed
    python tests/mutate.py --only dps_sign seed_base
    python tests/mutate.py --list

Each mutation replaces one exact piece of source (it must occur exactly once, so a refactor that
moves the code makes the mutation fail loudly instead of silently testing nothing) in a scratch copy
of the repository, runs the tests that should catch it (``-x``, in that copy, with the copy first on
``PYTHONPATH`` so subprocess scripts import the mutant too), and records *caught* (the tests fail) or
*MISSED*. The working tree is never touched.
"""

from __future__ import annotations

import argparse
import os
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
LATENT = "gdr/latent_posterior.py"
MUTATIONS = [
    # ---- methods (gdr/guidance.py)
    M("dps_sign", "gdr/guidance.py", "return step.z_prev - scale * grad", "return step.z_prev + scale * grad",
      (ORACLE,), "DPS steps up the data-loss gradient"),
    M("dps_loss_form", "gdr/guidance.py", 'return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()',
      "return sq.sum()",
      (ORACLE,), "the default 'norm' data loss silently squared"),
    M("dps_batch_norm", "gdr/guidance.py", "sq = r.flatten(1).pow(2).sum(dim=1)", "sq = r.pow(2).sum().expand(r.shape[0])",
      (ORACLE,), "per-item norm taken over the whole batch"),
    M("replace_x0_alpha", "gdr/guidance.py", "return step.z_prev + math.sqrt(step.alpha_prev) * (z0_new - step.z0_hat)",
      "return step.z_prev + step.alpha_prev * (z0_new - step.z0_hat)", (ORACLE,), "a for sqrt(a) in the x0 swap"),
    M("latent_pull_on_z_prev", "gdr/guidance.py", "        pull = ctx.measurement.z_y - step.z0_hat\n",
      "        pull = ctx.measurement.z_y - step.z_prev\n", (ORACLE,), "latent_pull pulls z_prev instead of z0_hat"),
    M("latent_pull_mask_ignored", "gdr/guidance.py", "            pull = ctx.measurement.latent_mask * pull\n",
      "            pull = pull\n", (ORACLE,), "masked latent_pull pulls every cell"),
    M("inpaint_unnoised", "gdr/guidance.py",
      "known = math.sqrt(step.alpha_prev) * z_y + math.sqrt(1 - step.alpha_prev) * ctx.noise_like(z_y)",
      "known = z_y", (ORACLE,), "inpaint pastes the un-noised z_y"),
    M("inpaint_mask_inverted", "gdr/guidance.py", "scale * ctx.measurement.latent_mask * (known - step.z_prev)",
      "scale * (1 - ctx.measurement.latent_mask) * (known - step.z_prev)", (ORACLE,), "inpaint replaces the unreliable cells"),
    M("norm_loss_nan_at_zero", "gdr/guidance.py", 'return (sq.clamp_min(1e-30).sqrt() if kind == "norm" else sq).sum()',
      'return (sq.sqrt() if kind == "norm" else sq).sum()', (ORACLE,), "NaN gradient of the norm loss at a zero residual"),
    M("prox_mask_not_squared", "gdr/measurement.py", "m2 = self.mask.pow(2) * weight", "m2 = self.mask * weight",
      (ORACLE,), "DiffPIR's closed-form prox weighs a soft mask by m, not m^2"),
    M("mpgd_sign", "gdr/guidance.py", "return self.replace_x0(step, step.z0_hat - scale * grad)",
      "return self.replace_x0(step, step.z0_hat + scale * grad)", (ORACLE,), "MPGD ascends"),
    M("diffpir_rho_inverted", "gdr/guidance.py", "rho = self.lam * self.sigma**2 * step.alpha_t / (1 - step.alpha_t)",
      "rho = self.lam * self.sigma**2 * (1 - step.alpha_t) / step.alpha_t", (ORACLE,), "DiffPIR's sigma_bar inverted"),
    M("diffpir_noise_weight", "gdr/guidance.py",
      "noise = math.sqrt(1 - self.zeta) * eps_hat + math.sqrt(self.zeta) * ctx.noise_like(z0)",
      "noise = (1 - self.zeta) * eps_hat + self.zeta * ctx.noise_like(z0)", (ORACLE,), "DiffPIR mixes without square roots"),
    M("sdedit_round", "gdr/guidance.py", "first = n - min(int(strength * n), n)", "first = n - int(round(strength * n))",
      (SAMPLER, ORACLE), "SDEdit's start index rounded instead of floored (diffusers' rule)"),
    M("seed_base", "gdr/guidance.py", 'base = step.z_prev if self.on == "prev_sample" else step.z0_hat',
      'base = step.z0_hat if self.on == "prev_sample" else step.z_prev', (SAMPLER, ORACLE),
      "seed pulls the other scheduler output"),
    M("seed_noised_start", "gdr/guidance.py", "        return ctx.measurement.z_y.clone(), 0\n",
      "        return noised_start(ctx, 1.0)\n", (SAMPLER, ORACLE), "seed starts from noised z_y"),
    M("seed_lerp_reversed", "gdr/guidance.py", "return torch.lerp(base, ctx.measurement.z_y.to(base.dtype), scale)",
      "return torch.lerp(ctx.measurement.z_y.to(base.dtype), base, scale)", (SAMPLER,), "seed's strength reversed"),
    M("off_by_one_alpha", "gdr/guidance.py", "return float(self.scheduler.alphas_cumprod[int(self.timesteps[index])])",
      "return float(self.scheduler.alphas_cumprod[int(self.timesteps[index]) - 1])", (ORACLE,),
      "alpha_bar read one timestep off"),
    M("sampler_last_step", "gdr/sampler.py", "last = return_denoised and i == n - 1", "last = return_denoised and i == n - 2",
      (SAMPLER, ORACLE), "the sampler returns z0_hat one step early"),
    # ---- latent posterior samplers (gdr/latent_posterior.py, the pixel side of gdr/measurement.py)
    M("psld_glue_sign", LATENT, "loss = loss + self.gamma * _item_loss(step.z0_hat - m.consistent_latent(u), self.loss)",
      "loss = loss - self.gamma * _item_loss(step.z0_hat - m.consistent_latent(u), self.loss)", (ORACLE,),
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
    M("resample_tol_unsquared", LATENT, "if self.tol and float(loss.detach()) < self.tol**2:",
      "if self.tol and float(loss.detach()) < self.tol:", (ORACLE,), "early stop on the MSE against tol, not tol^2"),
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
    # ---- front end, model (gdr/audio.py, gdr/backbone.py, gdr/conditioning.py, gdr/hub.py)
    M("log_mel_no_clamp", "gdr/audio.py", "torch.clamp(waveform, -1.0, 1.0)", "waveform", ("tests/test_frontend.py",),
      "log_mel does not clip to [-1, 1]"),
    M("latent_padding_value", "gdr/backbone.py", "value=float(torch.log(torch.tensor(LOG_FLOOR)))", "value=0.0",
      ("tests/test_backbone.py",), "mel padded with 0 (loud) instead of the log floor (silence)"),
    M("gpt2_mask_not_grown", "gdr/conditioning.py",
      "        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)\n", "",
      ("tests/test_conditioning.py",), "GPT-2 loop stops extending the attention mask"),
    M("gpt2_first_position", "gdr/conditioning.py", "embeds = torch.cat([embeds, hidden[:, -1:]], dim=1)",
      "embeds = torch.cat([embeds, hidden[:, :1]], dim=1)", ("tests/test_conditioning.py",),
      "GPT-2 loop appends the first position's state"),
    M("text_stack_dtype", "gdr/conditioning.py", "part = cls.from_pretrained(self.folder / name, dtype=torch.float32)",
      "part = cls.from_pretrained(self.folder / name)", ("tests/test_conditioning.py",),
      "text stack loaded in the config's dtype (CLAP float64)"),
    M("original_null_mask", "gdr/conditioning.py",
      'return Condition(gpt2, t5, torch.ones(t5.shape[:2], dtype=torch.long), "original")',
      'return Condition(gpt2, t5, torch.zeros(t5.shape[:2], dtype=torch.long), "original")',
      ("tests/test_conditioning.py",), "original null with a zero T5 mask"),
    # ---- conditioning and classifier-free guidance (gdr/conditioning.py, gdr/backbone.py)
    M("cfg_branches_swapped", "gdr/conditioning.py", "        eps_uncond, eps_cond = out.chunk(2)\n",
      "        eps_cond, eps_uncond = out.chunk(2)\n", ("tests/test_cfg.py",), "CFG reads the two halves swapped"),
    M("cfg_formula", "gdr/conditioning.py", "return eps_uncond + self.cfg_scale * (eps_cond - eps_uncond)",
      "return eps_cond + self.cfg_scale * (eps_cond - eps_uncond)", ("tests/test_cfg.py",),
      "CFG extrapolates from the conditional branch"),
    M("negative_not_padded", "gdr/conditioning.py",
      'uncond = dataclasses.replace(self.encode(spec.negative_text, pad_to=length), kind="negative")',
      'uncond = dataclasses.replace(self.encode(spec.negative_text), kind="negative")', ("tests/test_cfg.py",),
      "the negative prompt is not tokenized to the prompt's length (diffusers does)"),
    M("diffusers_null_not_padded", "gdr/conditioning.py",
      'return dataclasses.replace(self.encode("", pad_to=pad_to), kind="diffusers")',
      'return dataclasses.replace(self.encode(""), kind="diffusers")', ("tests/test_cfg.py",),
      "CFG's diffusers null encoded unpadded"),
    M("cfg_batch_not_doubled", "gdr/backbone.py", "z_in = torch.cat([z_t, z_t]) if conditioning.cfg else z_t",
      "z_in = z_t", ("tests/test_cfg.py",), "CFG runs the UNet on half the batch it conditions"),
    M("clap_audio_no_resample", "gdr/conditioning.py",
      "x = torchaudio.functional.resample(waveform.detach().float().cpu().reshape(-1), sample_rate, rate)",
      "x = waveform.detach().float().cpu().reshape(-1)", ("tests/test_cfg.py",),
      "CLAP audio fed 16 kHz samples as if 48 kHz"),
    M("clap_audio_not_renormalised", "gdr/conditioning.py",
      "return (mean / mean.norm().clamp_min(1e-12))[None, None, :]",
      "return mean[None, None, :]", ("tests/test_cfg.py",), "long-clip CLAP embedding left off the unit sphere"),
    M("audio_condition_ignored", "gdr/conditioning.py",
      "        clap = self.clap_text(prompt) if clap is None else clap.to(self.device, torch.float32)\n",
      "        clap = self.clap_text(prompt)\n", ("tests/test_cfg.py",), "the CLAP audio embedding never used"),
    M("hub_selects_bin", "gdr/hub.py", 'for stem, ext in ((safe_stem, "safetensors"), (bin_stem, "bin")):\n            single',
      'for stem, ext in ((bin_stem, "bin"), (safe_stem, "safetensors")):\n            single', ("tests/test_hub.py",),
      "downloads pickled .bin before safetensors"),
    M("hub_no_deadline", "gdr/hub.py", "thread.join(seconds)", "thread.join()", ("tests/test_hub.py",),
      "an unanswered hub request is waited for without bound"),
    # ---- chunking (gdr/chunking.py)
    M("crossfade_amplitude", "gdr/chunking.py", "gain = 1.0 / torch.sqrt(1.0 + rho * torch.sin(2 * theta))",
      "gain = 1.0 / (torch.cos(theta) + torch.sin(theta))", ("tests/test_chunking.py",),
      "amplitude crossfade for every pair (3 dB dip for incoherent chunks)"),
    M("crossfade_power_only", "gdr/chunking.py", "gain = 1.0 / torch.sqrt(1.0 + rho * torch.sin(2 * theta))",
      "gain = torch.ones_like(rho * theta)", ("tests/test_chunking.py",), "equal-power crossfade for coherent chunks"),
    M("crossfade_squared", "gdr/chunking.py", "return gain * (torch.cos(theta) * a + torch.sin(theta) * b)",
      "return gain * (torch.cos(theta) ** 2 * a + torch.sin(theta) ** 2 * b)", ("tests/test_chunking.py",),
      "cos^2/sin^2 weights under the power gain"),
    M("chunks_off_grid", "gdr/chunking.py", "length = max(grid, int(round(chunk / grid)) * grid)", "length = chunk",
      ("tests/test_chunking.py",), "chunk length not moved onto the grid"),
    # ---- metrics (gdr/metrics.py)
    M("mrstft_resolution", "gdr/metrics.py", "((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))",
      "((1024, 120, 600), (2048, 240, 1200), (512, 60, 240))", ("tests/test_metrics.py",), "one MR-STFT hop changed"),
    M("lsd_eps_one_side", "gdr/metrics.py", "log_ratio = 2 * torch.log10((s[:, keep] + LSD_EPS) / (s_hat[:, keep] + LSD_EPS))",
      "log_ratio = 2 * torch.log10(s[:, keep] / (s_hat[:, keep] + LSD_EPS) + LSD_EPS)", ("tests/test_metrics.py",),
      "LSD epsilon on one side only"),
    M("align_signed", "gdr/metrics.py", "values = corr[lags % size].abs() / (p.norm() * t.norm()).clamp_min(1e-12)",
      "values = corr[lags % size] / (p.norm() * t.norm()).clamp_min(1e-12)", ("tests/test_metrics.py",),
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
    M("seed_metrics_aligned", "gdr/evaluate.py", "raw = out.detach().cpu()[None].double()",
      "raw = aligned[None].double()", ("tests/test_metrics.py",), "the seed's metrics computed after alignment"),
]


def run_one(mutation: Mutation, scratch: Path) -> tuple[bool, float, str]:
    """Apply `mutation` in `scratch`, run its tests there, restore. Returns (caught, seconds, note)."""
    path = scratch / mutation.file
    original = path.read_text()
    count = original.count(mutation.old)
    if count != 1:
        return False, 0.0, f"source text found {count} times: update the mutation"
    path.write_text(original.replace(mutation.old, mutation.new))
    env = {**os.environ, "PYTHONPATH": str(scratch), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        # A mutant may hang (e.g. a removed deadline): a hang is a failure the suite would show, so it counts as
        # caught, but the check must go on.
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
                              cwd=scratch, env=env, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        return True, time.perf_counter() - start, f"hung for {HANG_S} s"
    finally:
        path.write_text(original)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FAILED") or " passed" in line]
    return proc.returncode != 0, time.perf_counter() - start, (lines[0] if lines else "")[:110]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutation ids to run")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:28s} {m.file:24s} {m.what}")
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="gdr-mutate-"))
    try:
        for name in COPIED:
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, scratch / name)
        print("| mutation | file | what | caught | s | first failing test |\n|---|---|---|---|---|---|", flush=True)
        missed = 0
        for m in chosen:
            caught, seconds, note = run_one(m, scratch)
            missed += not caught
            print(f"| {m.id} | {m.file} | {m.what} | {'caught' if caught else '**MISSED**'} | {seconds:.0f} | "
                  f"{note} |", flush=True)
        print(f"\n{len(chosen) - missed} of {len(chosen)} caught")
        return 1 if missed else 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
