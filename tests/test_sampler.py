"""The guided loop against diffusers' own AudioLDM2Pipeline, and method properties on the tiny model."""

import pytest
import torch

from gdr.degradations import build_degradation
from gdr.errors import ConfigError
from gdr.methods import GUIDANCE, build_guidance
from gdr.measurement import DecoderMeasurement, LatentMeasurement
from gdr.module import GuidedReconstructor, seed_for
from gdr.sampler import sample
from gdr.schedules import build_schedule


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    from diffusers import AudioLDM2Pipeline

    return AudioLDM2Pipeline.from_pretrained(tiny_dir)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_unguided_loop_reproduces_diffusers_latents(tiny_model, pipe, eta):
    cond = tiny_model.null_condition
    ref = pipe(prompt_embeds=cond.t5, attention_mask=cond.t5_mask, generated_prompt_embeds=cond.gpt2,
               num_inference_steps=6, audio_length_in_s=1.28, guidance_scale=1.0, eta=eta,
               generator=torch.Generator().manual_seed(3), output_type="latent").audios
    measurement = LatentMeasurement(torch.zeros_like(ref), torch.zeros_like(ref))
    with torch.no_grad():
        ours = sample(tiny_model.eps, tiny_model.scheduler, build_guidance("none"), build_schedule(0.0), measurement,
                      steps=6, eta=eta, generator=torch.Generator().manual_seed(3), return_denoised=False)
    assert ours.shape == ref.shape == (1, 8, 32, 16)
    assert (ours - ref).abs().max() <= 1e-5


def _clip(n=2 * 1280 * 8):
    t = torch.arange(n) / 16000
    x = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    return (0.5 * x / x.abs().max())[None]


def _run(model, method, params, op, y, scale=1.0, steps=6, seed=0):
    guidance = build_guidance(method, params)
    module = GuidedReconstructor(model, op, guidance, build_schedule(scale), steps=steps)
    measurement = DecoderMeasurement(model, op, y)
    z = sample(model.eps, module.scheduler, guidance, module.schedule, measurement, steps=steps,
               generator=torch.Generator().manual_seed(seed))
    return z, measurement


@pytest.mark.parametrize("start", ["target", "noise"])
def test_latent_pull_with_full_strength_returns_the_target_latent(tiny_model, start):
    op = build_degradation("identity")
    z, measurement = _run(tiny_model, "latent_pull", {"start": start}, op, _clip())
    torch.testing.assert_close(z, measurement.z_y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["latent_pull", "sdedit"])
@pytest.mark.parametrize("strength, first", [(0.5, 3), (0.25, 5), (0.45, 4), (1.0, 0)])
def test_noised_target_start_is_z_y_noised_to_the_chosen_strength(tiny_model, method, strength, first):
    """6 steps: floor(6 strength) steps run (diffusers' img2img rule, not round), from q(z_t | z_y) there."""
    from gdr.methods import Context

    y = _clip()
    measurement = DecoderMeasurement(tiny_model, build_degradation("identity"), y)
    scheduler = GuidedReconstructor(tiny_model, build_degradation("identity"), build_guidance("none"),
                                    build_schedule(1.0)).scheduler
    scheduler.set_timesteps(6)
    ctx = Context(measurement, scheduler, scheduler.timesteps, torch.Generator().manual_seed(5))
    params = {"start": "target", "strength": strength} if method == "latent_pull" else {"strength": strength}
    z, index = build_guidance(method, params).start(ctx)
    assert index == first
    a = float(scheduler.alphas_cumprod[int(scheduler.timesteps[first])])
    noise = torch.randn(measurement.z_y.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, a**0.5 * measurement.z_y + (1 - a) ** 0.5 * noise)


def _seed_loop(model, z_y, s, steps, on="prev_sample"):
    """The seed document's loop written out with diffusers' scheduler (methods.md §2.3)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps)
    z = z_y.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = scheduler.step(model.eps(z, t), t, z)
            base = out.prev_sample if on == "prev_sample" else out.pred_original_sample
            z = base + s * (z_y - base)
    return z


@pytest.mark.parametrize("on", ["prev_sample", "denoised"])
@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_seed_method_is_the_seed_documents_loop(tiny_model, on, s):
    y = _clip()
    guidance = build_guidance("seed", {"on": on})
    measurement = DecoderMeasurement(tiny_model, build_degradation("identity"), y)
    with torch.no_grad():
        ours = sample(tiny_model.eps, tiny_model.scheduler, guidance, build_schedule(s), measurement, steps=5,
                      return_denoised=False)
    reference = _seed_loop(tiny_model, measurement.z_y, s, 5, on)
    # gdr pulls with torch.lerp (exact at s = 0 and 1); the seed's a + s (b - a) differs by float rounding.
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    if s == 1.0:  # the VAE round trip exactly
        assert torch.equal(ours, measurement.z_y)


def test_seed_at_full_strength_gives_the_vae_round_trip_waveform(tiny_model):
    from gdr.baselines import BASELINES

    y = _clip()
    module = GuidedReconstructor(tiny_model, build_degradation("identity"), build_guidance("seed"),
                                 build_schedule(1.0), steps=4, return_denoised=False)
    out = module.reconstruct(y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = BASELINES["vae_roundtrip"].fn(tiny_model, y, build_degradation("identity"))
    assert torch.equal(out, expected.float())


def test_seed_at_zero_strength_is_plain_ddim_from_the_clean_latent(tiny_model, pipe):
    """s = 0: nothing is pulled; the result is diffusers' own pipeline loop started at ``latents = z_y``."""
    y = _clip()
    measurement = DecoderMeasurement(tiny_model, build_degradation("identity"), y)
    cond = tiny_model.null_condition
    with torch.no_grad():
        ours = sample(tiny_model.eps, tiny_model.scheduler, build_guidance("seed"), build_schedule(0.0), measurement,
                      steps=5, return_denoised=False)
    ref = pipe(prompt_embeds=cond.t5, attention_mask=cond.t5_mask, generated_prompt_embeds=cond.gpt2,
               latents=measurement.z_y.clone(), num_inference_steps=5, audio_length_in_s=y.shape[-1] / 16000,
               guidance_scale=1.0, output_type="latent").audios
    assert (ours - ref).abs().max() <= 1e-5
    assert not torch.allclose(ours, measurement.z_y, atol=1e-3)


def test_sdedit_at_strength_zero_returns_the_target_latent(tiny_model):
    z, measurement = _run(tiny_model, "sdedit", {"strength": 0.0}, build_degradation("identity"), _clip())
    assert torch.equal(z, measurement.z_y)


def test_sdedit_strength_one_forgets_more_than_half(tiny_model):
    op = build_degradation("identity")
    z_half, m = _run(tiny_model, "sdedit", {"strength": 0.3}, op, _clip())
    z_full, _ = _run(tiny_model, "sdedit", {"strength": 1.0}, op, _clip())
    assert (z_half - m.z_y).norm() < (z_full - m.z_y).norm()


LOWPASS = {"name": "lowpass", "cutoff_hz": 2000}
CLIP = {"name": "clip", "level": 0.1}
GAPS = {"name": "gaps", "length_ms": 60, "count": 2}
# (method, degradation, weak (params, scale), strong (params, scale)). The tiny model's random VAE can
# reach little of y, so the test asks for a strict, strength-monotone decrease, not a large one; the
# Gaussian oracle tests check the methods' maths. Latent-target methods (latent_pull, sdedit, inpaint)
# act on the distance to z_y = E(M(y)) (on the reliable part of the latent where there is a mask): that
# is what they must lower. Through a random VAE, z_y itself need not be closer to y than a free sample.
LATENT_TARGET = ("seed", "latent_pull", "sdedit", "inpaint")
CASES = [
    ("seed", LOWPASS, ({}, 0.3), ({}, 0.7)),
    ("latent_pull", LOWPASS, ({"start": "noise"}, 0.5), ({"start": "noise"}, 1.0)),
    ("sdedit", LOWPASS, ({"strength": 0.3}, 1.0), ({"strength": 0.1}, 1.0)),
    ("inpaint", LOWPASS, ({}, 0.2), ({}, 1.0)),
    ("dps", LOWPASS, ({}, 10.0), ({}, 100.0)),
    ("dps", CLIP, ({}, 10.0), ({}, 100.0)),
    ("mpgd", CLIP, ({}, 10.0), ({}, 100.0)),
    ("mpgd", GAPS, ({"every": 2}, 30.0), ({"every": 1}, 100.0)),
    ("diffpir", CLIP, ({}, 0.3), ({}, 3.0)),
    ("diffpir", "noise", ({}, 0.3), ({}, 3.0)),
    ("decoder_inversion", GAPS, ({"iters": 2}, 1.0), ({"iters": 6}, 1.0)),
    ("psld", LOWPASS, ({}, 10.0), ({}, 100.0)),
    ("resample", GAPS, ({"every": 1, "iters": 2, "lr": 0.05, "tol": 0.0}, 1.0),
     ({"every": 1, "iters": 10, "lr": 0.05, "tol": 0.0}, 1.0)),
    ("daps", LOWPASS, ({"ode_steps": 1, "langevin_steps": 2, "lr": 1e-4}, 0.1),
     ({"ode_steps": 1, "langevin_steps": 2, "lr": 1e-4}, 1.0)),
]


@pytest.mark.parametrize("method, degradation, weak, strong", CASES, ids=lambda c: str(c)[:24])
def test_every_method_lowers_the_measurement_error(tiny_model, method, degradation, weak, strong):
    op = build_degradation(degradation)
    y = op.measure(_clip(), torch.Generator().manual_seed(0))
    z_free, measurement = _run(tiny_model, "none", {}, op, y)

    def error(z):
        if method in LATENT_TARGET:
            mask = 1.0 if measurement.latent_mask is None else measurement.latent_mask
            return ((z - measurement.z_y) * mask).norm()
        return measurement.residual(z).norm()

    with torch.no_grad():
        residual = {"free": error(z_free)}
    for name, (params, scale) in (("weak", weak), ("strong", strong)):
        z, _ = _run(tiny_model, method, params, op, y, scale=scale)
        with torch.no_grad():
            residual[name] = error(z)
    assert residual["strong"] < residual["weak"] < residual["free"], {k: float(v) for k, v in residual.items()}


def test_all_registered_methods_are_covered():
    assert {c[0] for c in CASES} | {"none"} == set(GUIDANCE)


def test_waveform_domain_residual_runs_and_lowers_error(tiny_model):
    op = build_degradation({"name": "lowpass", "cutoff_hz": 3000})
    y = op(_clip())
    guidance = build_guidance("mpgd")
    measurement = DecoderMeasurement(tiny_model, op, y, domain="waveform")
    runs = {}
    # The random tiny vocoder depends only weakly on its mel input (gradients through it are ~1e-3), hence
    # the large scale.
    for name, g in (("free", build_guidance("none")), ("mpgd", guidance)):
        z = sample(tiny_model.eps, tiny_model.scheduler, g, build_schedule(3000.0), measurement, steps=5,
                   generator=torch.Generator().manual_seed(0))
        runs[name] = measurement.residual(z).norm()
    assert runs["mpgd"] < runs["free"]


@pytest.mark.parametrize("degradation", [LOWPASS, GAPS])
def test_glue_fits_the_measured_mel_cells_and_keeps_the_others(tiny_model, degradation):
    """PSLD's ``A^T y + (I - A^T A) D(z)`` with a mel mask ``A = m``: the glued mel has zero residual and equals
    ``D(z)`` where nothing is measured (`DecoderMeasurement.glue`, mel domain)."""
    op = build_degradation(degradation)
    measurement = DecoderMeasurement(tiny_model, op, op(_clip()))
    with torch.no_grad():
        mel = measurement.decode(torch.randn(measurement.z_y.shape, generator=torch.Generator().manual_seed(0)))
        glued = measurement.glue(mel)
        assert measurement.residual_from(glued).abs().max() == 0
        unmeasured = measurement.mel_mask == 0
        assert unmeasured.any() and torch.equal(glued.expand_as(mel)[unmeasured.expand_as(mel)],
                                                mel[unmeasured.expand_as(mel)])
        torch.testing.assert_close(measurement.consistent_latent(mel), tiny_model.mel_to_latent(glued))


@pytest.mark.parametrize("method, params", [
    ("psld", {}), ("resample", {"every": 1, "iters": 2}), ("daps", {"ode_steps": 2, "langevin_steps": 2}),
])
def test_latent_posterior_samplers_run_in_the_waveform_domain_on_clipping(tiny_model, method, params):
    """The vocoder path: clipping has no mel mask, so the residual and PSLD's / ReSample's glue go through
    ``V`` and the operator in the waveform (`DecoderMeasurement.glue`); DAPS's ODE calls the UNet again."""
    op = build_degradation(CLIP)
    measurement = DecoderMeasurement(tiny_model, op, op(_clip()), domain="waveform")
    calls = []

    def eps_model(z, t):
        calls.append(int(t))
        return tiny_model.eps(z, t)

    z = sample(eps_model, tiny_model.scheduler, build_guidance(method, params), build_schedule(1.0), measurement,
               steps=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == measurement.z_y.shape and torch.isfinite(z).all()
    assert len(calls) == 3 * (2 if method == "daps" else 1)  # DAPS: one extra UNet pass per step for its ODE


def test_method_and_degradation_mismatches_fail_before_work(tiny_model):
    with pytest.raises(ConfigError, match="inpaint needs a degradation with a latent mask"):
        GuidedReconstructor(tiny_model, build_degradation({"name": "clip"}), build_guidance("inpaint"),
                            build_schedule(1.0))
    with pytest.raises(ConfigError, match="ddim"):
        GuidedReconstructor(tiny_model, build_degradation("identity"), build_guidance("mpgd"), build_schedule(1.0),
                            scheduler="ddpm")
    from diffusers import DDIMScheduler

    v_pred = DDIMScheduler.from_config({**tiny_model.scheduler.config, "prediction_type": "v_prediction"})
    for name, params in (("daps", {}), ("resample", {"travel": 2})):  # their extra UNet passes assume epsilon
        with pytest.raises(ConfigError, match="epsilon-predicting"):
            build_guidance(name, params).validate(build_degradation("identity"), v_pred)
    with pytest.raises(ConfigError, match="unknown guidance method 'nope'; known: .*dps"):
        build_guidance("nope")
    for name, params in [("dps", {"loss": "l7"}), ("sdedit", {"strength": 2}), ("diffpir", {"zeta": -1}),
                         ("mpgd", {"every": 0}), ("decoder_inversion", {"lr": float("nan")}), ("dps", {"bogus": 1}),
                         ("psld", {"omega": 0, "gamma": 0}), ("psld", {"gamma": -1}), ("resample", {"iters": 0}),
                         ("resample", {"travel": 1.5}), ("resample", {"pixel_stage": "yes"}),
                         ("daps", {"ode_steps": 0}), ("daps", {"lr_min_ratio": 2}), ("daps", {"tau": 0})]:
        with pytest.raises(ConfigError):
            build_guidance(name, params)


def test_ddpm_scheduler_runs_for_methods_that_allow_it(tiny_model):
    op = build_degradation({"name": "gaps", "length_ms": 60, "count": 2})
    module = GuidedReconstructor(tiny_model, op, build_guidance("dps"), build_schedule(1.0), steps=4, scheduler="ddpm",
                                 chunk_samples=8 * 1280, overlap_samples=1280)
    out = module.reconstruct_clip(_clip(3 * 1280 * 8 + 333)[0], seed=0)
    assert out.shape == (3 * 1280 * 8 + 333,) and torch.isfinite(out).all()
    # It is the DDPM sampler that ran: seeded, and not the DDIM result of the same seed.
    from diffusers import DDPMScheduler

    assert type(module.scheduler) is DDPMScheduler
    torch.testing.assert_close(module.reconstruct_clip(_clip(3 * 1280 * 8 + 333)[0], seed=0), out, rtol=0, atol=0)
    ddim = GuidedReconstructor(tiny_model, op, build_guidance("dps"), build_schedule(1.0), steps=4,
                               chunk_samples=8 * 1280, overlap_samples=1280)
    assert (ddim.reconstruct_clip(_clip(3 * 1280 * 8 + 333)[0], seed=0) - out).abs().max() > 1e-4


@pytest.mark.parametrize("steps", [4, 7])
def test_unguided_ddpm_loop_reproduces_diffusers_latents_with_its_ddpm_scheduler(tiny_model, pipe, steps):
    """The pipeline with diffusers' DDPMScheduler (built from the same config) is the reference for
    ``sampler.scheduler: ddpm``: same initial noise, same per-step variance noise from the one generator."""
    from diffusers import AudioLDM2Pipeline, DDPMScheduler

    scheduler = GuidedReconstructor(tiny_model, build_degradation("identity"), build_guidance("none"),
                                    build_schedule(0.0), scheduler="ddpm").scheduler
    ddpm = AudioLDM2Pipeline(**{**pipe.components, "scheduler": DDPMScheduler.from_config(pipe.scheduler.config)})
    cond = tiny_model.null_condition
    ref = ddpm(prompt_embeds=cond.t5, attention_mask=cond.t5_mask, generated_prompt_embeds=cond.gpt2,
               num_inference_steps=steps, audio_length_in_s=1.28, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(3), output_type="latent").audios
    measurement = LatentMeasurement(torch.zeros_like(ref), torch.zeros_like(ref))
    with torch.no_grad():
        ours = sample(tiny_model.eps, scheduler, build_guidance("none"), build_schedule(0.0), measurement,
                      steps=steps, generator=torch.Generator().manual_seed(3), return_denoised=False)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-5
    ddim = sample(tiny_model.eps, tiny_model.scheduler, build_guidance("none"), build_schedule(0.0), measurement,
                  steps=steps, generator=torch.Generator().manual_seed(3), return_denoised=False)
    assert (ddim - ref).abs().max() > 1e-3  # the check can fail: DDIM's latents are not DDPM's


def test_whole_clip_reconstruction_is_deterministic_in_the_seed(tiny_model):
    op = build_degradation({"name": "gaps", "length_ms": 60, "count": 3})
    module = GuidedReconstructor(tiny_model, op, build_guidance("inpaint"), build_schedule(1.0), steps=3,
                                 eta=1.0, chunk_samples=8 * 1280, overlap_samples=1280, chunk_batch=2)
    y = op(_clip(3 * 1280 * 8 + 555))[0]
    a, b, c = (module.reconstruct_clip(y, seed) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_predict_step_reconstructs_clips_times_seeds_with_trainer_predict(tiny_model):
    import lightning as L

    op = build_degradation({"name": "gaps", "length_ms": 40, "count": 2})
    module = GuidedReconstructor(tiny_model, op, build_guidance("inpaint"), build_schedule(1.0), steps=2,
                                 chunk_samples=8 * 1280, overlap_samples=1280)
    y = op(_clip(2 * 1280 * 8 + 100))
    batches = [{"name": [name], "y": y, "seed": [seed]} for name in ("a", "b") for seed in (0, 1)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False)
    outputs = trainer.predict(module, dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert [o["x_hat"].shape for o in outputs] == [y.shape] * 4
    assert not torch.equal(outputs[0]["x_hat"], outputs[1]["x_hat"])  # seeds differ
    torch.testing.assert_close(outputs[0]["x_hat"][0], module.reconstruct_clip(y[0], seed_for("a", 0)))


def test_a_non_leading_timestep_spacing_is_refused(tiny_model):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config({**tiny_model.scheduler.config, "timestep_spacing": "trailing"})
    measurement = DecoderMeasurement(tiny_model, build_degradation("identity"), _clip())
    with pytest.raises(ConfigError, match="timestep_spacing is 'trailing'"):
        sample(tiny_model.eps, scheduler, build_guidance("dps"), build_schedule(1.0), measurement, steps=3)
