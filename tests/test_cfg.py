"""Conditioning the prior: text prompts and classifier-free guidance against diffusers' own AudioLDM2Pipeline,
the CLAP audio embedding against transformers' ClapModel, the condition cache, and bad condition values."""

import warnings

import pytest
import torch

from gdr.condition_cache import ConditionCache
from gdr.conditioning import Conditioning, ConditionSpec, pad_condition
from gdr.text_stack import TextStack, check_audio_branch
from gdr.errors import ConfigError, GdrWarning, UnsupportedModelError
from gdr.methods import build_guidance
from gdr.measurement import LatentMeasurement
from gdr.sampler import sample
from gdr.schedules import build_schedule

PROMPT = "a man speaking in a large hall with some rain outside"
NEGATIVE = "low quality"


@pytest.fixture(scope="module")
def stack(tiny_dir):
    return TextStack(tiny_dir)


def _pipeline_latents(pipe, w, eta, negative, steps=6, seconds=1.28):
    return pipe(prompt=PROMPT, negative_prompt=negative, guidance_scale=w, num_inference_steps=steps,
                audio_length_in_s=seconds, eta=eta, generator=torch.Generator().manual_seed(7),
                output_type="latent").audios


def _our_latents(model, conditioning, reference, eta, steps=6, guidance="none"):
    measurement = LatentMeasurement(torch.zeros_like(reference), torch.zeros_like(reference))
    with torch.no_grad():
        return sample(model.denoiser(conditioning), model.scheduler, build_guidance(guidance), build_schedule(0.0),
                      measurement, steps=steps, eta=eta, generator=torch.Generator().manual_seed(7),
                      return_denoised=False)


@pytest.mark.parametrize("negative", [None, NEGATIVE])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("w", [1.0, 3.5])
def test_prompt_and_cfg_equal_diffusers_pipeline(tiny_model, diffusers_pipe, stack, w, eta, negative):
    """The peer check: guidance none + prompt + CFG w gives the pipeline's latents (negative None = "" there)."""
    spec = ConditionSpec(text=PROMPT, negative_text=negative or "", cfg_scale=w, unconditional="diffusers")
    conditioning = stack.conditioning(spec)
    assert conditioning.cfg == (w != 1.0)
    reference = _pipeline_latents(diffusers_pipe, w, eta, negative)
    ours = _our_latents(tiny_model, conditioning, reference, eta)
    assert ours.shape == reference.shape == (1, 8, 32, 16)
    assert (ours - reference).abs().max() <= 1e-5


def test_cfg_changes_the_result_and_the_original_null_differs_from_the_diffusers_null(tiny_model, stack):
    """The check above can fail: w, the prompt and the unconditional branch each change the latents."""
    reference = torch.zeros(1, 8, 32, 16)
    base = ConditionSpec(text=PROMPT, cfg_scale=3.5, unconditional="diffusers")
    runs = {name: _our_latents(tiny_model, stack.conditioning(spec), reference, 0.0) for name, spec in {
        "base": base, "w1": ConditionSpec(text=PROMPT), "original": ConditionSpec(text=PROMPT, cfg_scale=3.5),
        "other_prompt": ConditionSpec(text="birds singing", cfg_scale=3.5, unconditional="diffusers"),
        "null": ConditionSpec()}.items()}
    for name, z in runs.items():
        if name != "base":
            assert (z - runs["base"]).abs().max() > 1e-3, name


def test_cfg_is_one_batched_unet_call_per_step(tiny_model, stack):
    calls = []
    hook = tiny_model.unet.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    try:
        _our_latents(tiny_model, stack.conditioning(ConditionSpec(text=PROMPT, cfg_scale=3.5)),
                     torch.zeros(2, 8, 32, 16), 0.0, steps=4)
    finally:
        hook.remove()
    assert calls == [4, 4, 4, 4]  # batch 2, doubled, one call per step


def test_cfg_combination_is_uncond_plus_w_times_the_difference(tiny_model, stack):
    conditioning = stack.conditioning(ConditionSpec(text=PROMPT, cfg_scale=2.5))
    z = torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    t = tiny_model.scheduler.timesteps[0] if len(tiny_model.scheduler.timesteps) else 500
    with torch.no_grad():
        guided = tiny_model.eps(z, t, conditioning)
        cond = tiny_model.eps(z, t, Conditioning(conditioning.cond))
        uncond = tiny_model.eps(z, t, Conditioning(conditioning.uncond))
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_zero_padding_under_mask_zero_changes_nothing(tiny_model, stack):
    """Why the original null can be padded to the prompt's T5 length for the batched CFG call."""
    null = stack.null("original")
    z = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        short = tiny_model.eps(z, 400, Conditioning(null))
        padded = tiny_model.eps(z, 400, Conditioning(pad_condition(null, 9)))
    assert pad_condition(null, 9).t5.shape[1] == 9 and int(pad_condition(null, 9).t5_mask.sum()) == null.t5.shape[1]
    torch.testing.assert_close(padded, short, rtol=1e-5, atol=1e-6)


def test_guidance_methods_see_the_guided_prediction(tiny_model, stack):
    """A data-consistency method runs on top of CFG: its steps call the same conditioned denoiser."""
    from gdr.degradations import build_degradation
    from gdr.module import guided_reconstruction

    y = 0.3 * torch.sin(torch.arange(5120 * 2) / 16000 * 2 * torch.pi * 300)[None]
    op = build_degradation({"name": "lowpass", "cutoff_hz": 3000})
    outs = {}
    for name, spec in {"null": ConditionSpec(), "cfg": ConditionSpec(text=PROMPT, cfg_scale=3.5)}.items():
        outs[name] = guided_reconstruction(tiny_model, op, build_guidance("dps"), build_schedule(1.0), y, steps=3,
                                           generator=torch.Generator().manual_seed(0),
                                           conditioning=stack.conditioning(spec))
    assert outs["cfg"].shape == y.shape and torch.isfinite(outs["cfg"]).all()
    assert (outs["cfg"] - outs["null"]).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------ CLAP audio
def test_clap_audio_embedding_equals_transformers(stack, tiny_dir):
    """Short clip: the 48 kHz ClapFeatureExtractor and ClapModel.get_audio_features, as transformers documents."""
    import torchaudio
    from transformers import ClapFeatureExtractor, ClapModel

    x = 0.3 * torch.randn(16000 * 3, generator=torch.Generator().manual_seed(2))
    ours = stack.clap_audio(x)
    extractor = ClapFeatureExtractor.from_pretrained(tiny_dir / "feature_extractor")
    model = ClapModel.from_pretrained(tiny_dir / "text_encoder", dtype=torch.float32).eval()
    audio = torchaudio.functional.resample(x, 16000, 48000).numpy()
    inputs = extractor(audio, sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        theirs = model.get_audio_features(**inputs)
    theirs = getattr(theirs, "pooler_output", theirs)
    assert ours.shape == (1, 1, model.config.projection_dim)
    torch.testing.assert_close(ours[0], theirs, rtol=1e-5, atol=1e-6)
    assert abs(float(ours.norm()) - 1) < 1e-5


def test_long_clip_embedding_is_the_unit_mean_of_deterministic_windows(stack, tiny_dir):
    """25 s: resampled to 48 kHz, cut into 3 equal windows of <= 10 s (no random crop), unit mean of CLAP's."""
    import torchaudio
    from transformers import ClapFeatureExtractor, ClapModel

    x = 0.3 * torch.randn(16000 * 25, generator=torch.Generator().manual_seed(3))
    first, again = stack.clap_audio(x), stack.clap_audio(x)
    assert torch.equal(first, again)
    extractor = ClapFeatureExtractor.from_pretrained(tiny_dir / "feature_extractor")
    model = ClapModel.from_pretrained(tiny_dir / "text_encoder", dtype=torch.float32).eval()
    windows = torch.tensor_split(torchaudio.functional.resample(x, 16000, 48000), 3)
    assert all(w.numel() <= 480000 for w in windows)
    with torch.no_grad():
        each = [model.get_audio_features(**extractor(w.numpy(), sampling_rate=48000, return_tensors="pt"))
                for w in windows]
    mean = torch.cat([getattr(e, "pooler_output", e) for e in each]).mean(dim=0)
    torch.testing.assert_close(first[0, 0], mean / mean.norm(), rtol=1e-5, atol=1e-6)


def test_audio_condition_is_the_projection_and_gpt2_of_the_clap_audio_embedding(stack, diffusers_pipe):
    """CLAP audio stands where the text's CLAP embedding stands; T5 comes from the text ("" here)."""
    x = 0.3 * torch.randn(16000 * 2, generator=torch.Generator().manual_seed(4))
    ours = stack.conditioning(ConditionSpec(audio="measurement"), audio=x).cond
    clap = stack.clap_audio(x)
    with torch.no_grad():
        t5, mask, _ = diffusers_pipe.encode_prompt("", "cpu", 1, False)
        projected = diffusers_pipe.projection_model(hidden_states=clap, hidden_states_1=t5,
                                                    attention_mask=torch.ones(1, 1, dtype=torch.long),
                                                    attention_mask_1=mask)
        gpt2 = diffusers_pipe.generate_language_model(projected.hidden_states, attention_mask=projected.attention_mask,
                                                      max_new_tokens=8)
    torch.testing.assert_close(ours.gpt2, gpt2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.t5, t5)
    text = stack.conditioning(ConditionSpec(text=PROMPT)).cond
    assert (text.gpt2 - ours.gpt2).abs().max() > 1e-4


def _one_clip(root):
    """A folder with one clip whose spectrum spans the band (so two low-pass cut-offs measure different audio)."""
    import numpy as np
    import soundfile as sf

    root.mkdir()
    t = np.arange(16000) / 16000
    x = 0.3 * np.sin(2 * np.pi * (100 * t + 3500 * t**2)) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    sf.write(str(root / "sweep.wav"), x.astype(np.float32), 16000)
    return root


@pytest.mark.parametrize("case", ["clips", "degradations"])
def test_every_item_is_conditioned_on_the_clap_audio_of_its_own_measurement(tiny_model, stack, tmp_path, monkeypatch,
                                                                           case):
    """``audio: measurement`` in an evaluation with four clips (one low-pass), and in a sweep with two low-pass
    cut-offs of one clip: what the runner hands the sampler for each item is the conditioning of the CLAP audio
    embedding of that item's own measurement, recomputed here from the clip and the degradation."""
    from conftest import ROOT
    from gdr import evaluate
    from gdr.config import parse
    from gdr.degradations import build_degradation

    args = {"clips": ["--data.demo_seconds", "1.0", "--degradation.params", '{"cutoff_hz": 2000}'],
            "degradations": ["--data.root", str(_one_clip(tmp_path / "data")),
                             "--sweep.grid", '{"degradation.params": [{"cutoff_hz": 1000}, {"cutoff_hz": 4000}]}']}
    _, _, objects = parse(["--config", str(ROOT / "configs" / "smoke.yaml"), "--output_dir", str(tmp_path / "out"),
                           "--degradation.name", "lowpass", "--guidance.name", "none", "--sampler.steps", "1",
                           "--condition.audio", "measurement", *args[case]])
    plan = evaluate.plan_evaluation(objects)
    runner = evaluate.EvaluationRunner(tiny_model, plan, None, objects.chunk)
    items = [item for item in plan.items if evaluate.uses_prior(item)]
    assert len(items) == (4 if case == "clips" else 2)
    evaluate.prepare_conditionings(runner, items, tmp_path / "cache")

    passed = []  # (item, the conditioning of its row) for every row the sampler saw
    real = evaluate.GuidedReconstructor.reconstruct

    def spy(self, y, generator=None, support=None, conditioning=None):
        passed.extend(conditioning.cond.gpt2[b if conditioning.cond.gpt2.shape[0] > 1 else 0] for b in range(len(y)))
        return real(self, y, generator, support, conditioning)

    monkeypatch.setattr(evaluate.GuidedReconstructor, "reconstruct", spy)
    spec = ConditionSpec(audio="measurement")
    seen = []
    indices = [plan.items.index(item) for item in items]
    packs = runner.packs(indices)
    if case == "clips":  # items of one recipe share a batch, each row with its own condition
        assert [len(p) for p in packs] == [4]
    for indices_of_pack in packs:
        pack_items = [plan.items[i] for i in indices_of_pack]
        outs = runner.run_methods(pack_items)
        assert all(torch.isfinite(out).all() for out in outs)
        rows = passed[-len(pack_items):]  # one chunk per item: one row each, in order
        for item, got in zip(pack_items, rows):
            degradation = item.recipe["degradation"]
            y = build_degradation({"name": degradation["name"], **(degradation["params"] or {})})(
                plan.clips[item.clip].waveform[None])
            expected = stack.conditioning(spec, audio=y[0]).cond
            torch.testing.assert_close(got, expected.gpt2[0], rtol=1e-5, atol=1e-6, msg=f"{item.clip} {item.task}")
            seen.append(got)
    assert len(seen) == len(items)
    for i in range(len(seen)):  # and the items' conditionings differ from one another
        for j in range(i):
            assert (seen[i] - seen[j]).abs().max() > 1e-4, (items[i].clip, items[i].task, items[j].task)


def test_audio_condition_refused_without_the_clap_audio_branch(tiny_dir, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    check_audio_branch(folder)  # the published layout has it
    weights = folder / "text_encoder" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("audio_model.")}, str(weights))
    with pytest.raises(UnsupportedModelError, match="no audio_model weights"):
        check_audio_branch(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "ClapTextModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="not a ClapModel"):
        check_audio_branch(folder)


# ------------------------------------------------------------------------------------------ cache and values
def test_conditions_are_cached_by_content_and_reused_without_the_text_stack(tiny_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    cache = ConditionCache(folder, tmp_path / "cache")
    x = 0.3 * torch.randn(16000, generator=torch.Generator().manual_seed(5))
    spec = ConditionSpec(text=PROMPT, audio="measurement", cfg_scale=2.0)
    first = cache.get(spec, x)
    assert len(list((tmp_path / "cache" / "conditions").glob("*.safetensors"))) == 1
    cache.get(spec, x.clone())  # same content: same entry
    other = cache.get(spec, x.flip(0))  # other content: a new entry
    assert len(list((tmp_path / "cache" / "conditions").glob("*.safetensors"))) == 2
    assert (other.cond.gpt2 - first.cond.gpt2).abs().max() > 1e-5
    cache.close()
    for sub in ("text_encoder", "text_encoder_2", "language_model", "projection_model"):
        shutil.rmtree(folder / sub)
    again = ConditionCache(folder, tmp_path / "cache").get(spec, x)
    for a, b in ((again.cond, first.cond), (again.uncond, first.uncond)):
        torch.testing.assert_close(a.gpt2, b.gpt2)
        torch.testing.assert_close(a.t5, b.t5)
        assert torch.equal(a.t5_mask, b.t5_mask)
    assert again.cfg_scale == 2.0


@pytest.mark.parametrize("values, match", [
    ({"cfg_scale": float("nan"), "text": "rain"}, "cfg_scale"),
    ({"cfg_scale": -1.0, "text": "rain"}, "cfg_scale"),
    ({"cfg_scale": float("inf"), "text": "rain"}, "cfg_scale"),
    ({"cfg_scale": 3.5}, "nothing to guide towards"),
    ({"cfg_scale": 3.5, "text": "   "}, "nothing to guide towards"),
    ({"audio": "input"}, "condition.audio"),
    ({"unconditional": "zeros"}, "condition.unconditional"),
    ({"text": 3}, "condition.text"),
    ({"prompt": "rain"}, "unknown key"),
])
def test_bad_condition_values_are_one_line_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        ConditionSpec.from_dict(values)


def test_long_prompts_are_truncated_as_the_tokenizers_do_and_said(stack):
    long = " ".join(["rain"] * 700)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conditioning = stack.conditioning(ConditionSpec(text=long, cfg_scale=2.0))
    notes = [str(w.message) for w in caught if issubclass(w.category, GdrWarning)]
    assert len(notes) == 1 and "truncated" in notes[0]
    assert conditioning.cond.t5.shape[1] == stack.part("tokenizer_2").model_max_length


def test_labels_say_which_condition(stack):
    assert ConditionSpec().label() == "null:original"
    assert ConditionSpec(unconditional="diffusers").label() == "null:diffusers"
    assert ConditionSpec(text="rain", cfg_scale=3.5).label() == '"rain" w=3.5 uncond=original'
    assert ConditionSpec(audio="measurement").label() == "clap:measurement"
    assert ConditionSpec(text="rain", cfg_scale=2, negative_text="noise").label() == '"rain" w=2 neg="noise"'


# ------------------------------------------------------------------------------------------ the script
def _one_line_error(proc, needle, out):
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [  # the other bad values: test_bad_condition_values_are_one_line_...
    (["--condition.cfg_scale", "nan", "--condition.text", "rain"], "cfg_scale"),
    (["--sweep.grid", "{condition.cfg_scale: [1.0, -2.0]}", "--condition.text", "rain"], "cfg_scale"),
])
def test_bad_condition_values_stop_the_script_in_one_line(tmp_path, args, needle):
    from conftest import run_script

    out = tmp_path / "out"
    proc = run_script("evaluate.py", "--config", "configs/smoke.yaml", "--output_dir", str(out), *args)
    _one_line_error(proc, needle, out)


def test_audio_condition_on_a_folder_without_clap_audio_stops_before_anything_is_written(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from conftest import run_script

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = folder / "text_encoder" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("audio_model.")}, str(weights))
    out = tmp_path / "out"
    proc = run_script("evaluate.py", "--config", "configs/smoke.yaml", "--model.pretrained", str(folder),
                      "--output_dir", str(out), "--condition.audio", "measurement", "--data.demo_seconds", "1.0",
                      env={"GDR_CACHE": str(tmp_path / "cache")})
    _one_line_error(proc, "no audio_model weights", out)


def test_a_conditioned_run_says_its_condition_in_every_row_and_the_report(tmp_path):
    import csv

    import numpy as np
    import soundfile as sf

    from conftest import run_script

    clips = tmp_path / "clips"
    clips.mkdir()
    t = np.arange(16000) / 16000
    sf.write(str(clips / "tone.wav"), 0.3 * np.sin(2 * np.pi * 330 * t), 16000)
    out = tmp_path / "out"
    proc = run_script("evaluate.py", "--config", "configs/smoke.yaml", "--data.root", str(clips), "--output_dir",
                      str(out), "--sampler.steps", "2", "--progress", "false", "--logger", "false",
                      "--report.fad", "false", "--sweep.grid", "{condition.cfg_scale: [1.0, 2.5]}",
                      "--condition.text", "a pure tone", "--condition.audio", "measurement")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    prior = {r["method"]: r["condition"] for r in rows if r["guidance"] == "dps"}
    assert set(prior.values()) == {'"a pure tone" clap:measurement',
                                   '"a pure tone" clap:measurement w=2.5 uncond=original'}
    assert all(condition in method for method, condition in prior.items())  # two recipes, two labels
    assert {r["condition"] for r in rows if r["kind"] == "baseline"} == {"none"}
    report = (out / "report.md").read_text()
    assert "w=2.5 uncond=original" in report.split("## ")[0]  # said at the top, before any result
