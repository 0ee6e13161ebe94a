"""The tiny model is the published layout scaled down: same files, same classes, published configs with
only sizes changed; -large and -music build and run; their published UNets have the published sizes."""

import json

import pytest
import torch

from gdr.builders import (CHECKPOINTS, PUBLISHED_DIR, REAL_CONFIG_DIR, TINY_SIZES, is_random_weights, layout_config,
                          published_config, published_file, save_published_layout)

COMPONENTS = ("vae", "unet", "vocoder", "text_encoder", "text_encoder_2", "language_model", "projection_model")
VERBATIM = ("model_index.json", "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
            "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
            "tokenizer_2/tokenizer_config.json", "tokenizer_2/special_tokens_map.json")


def _flatten(d, prefix=""):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_published_files_are_packaged_with_their_sources():
    assert (PUBLISHED_DIR / "SOURCES.md").is_file()
    for checkpoint in CHECKPOINTS:
        assert (PUBLISHED_DIR / checkpoint / "model_index.json").is_file()
        assert (PUBLISHED_DIR / checkpoint / "unet" / "config.json").is_file()
    assert published_config("audioldm2", "text_encoder")["torch_dtype"] == "float64"
    assert published_config("audioldm2", "model_index")["language_model"] == ["transformers", "GPT2Model"]


def test_the_older_trimmed_configs_agree_with_the_published_ones():
    for trimmed, component in (("vae", "vae"), ("unet", "unet"), ("vocoder", "vocoder"), ("scheduler", "scheduler")):
        ours = json.loads((REAL_CONFIG_DIR / f"{trimmed}.json").read_text())
        published = published_config("audioldm2", component)
        for key, value in ours.items():
            if key in published:
                assert published[key] == value, (trimmed, key)


def test_tiny_layout_files_are_the_published_files(tiny_dir):
    for relative in VERBATIM:
        assert (tiny_dir / relative).read_bytes() == published_file("audioldm2", relative).read_bytes(), relative
    assert (tiny_dir / "tokenizer" / "tokenizer.json").is_file() and (tiny_dir / "tokenizer_2" / "tokenizer.json").is_file()
    assert is_random_weights(tiny_dir)
    for sub in COMPONENTS:
        assert list((tiny_dir / sub).glob("*.safetensors")), sub
        assert not list((tiny_dir / sub).glob("*.bin")), sub


@pytest.mark.parametrize("component", COMPONENTS)
def test_tiny_configs_differ_from_the_published_ones_only_in_sizes(tiny_dir, component):
    tiny = json.loads((tiny_dir / component / "config.json").read_text())
    published = published_config("audioldm2", component)
    assert tiny == layout_config("audioldm2", component, "tiny")
    changed = {k for k, v in _flatten(tiny).items() if _flatten(published).get(k, object()) != v}
    allowed = set(_flatten(TINY_SIZES.get(component, {}))) | ({"cross_attention_dim"} if component == "unet" else set())
    assert changed <= allowed, changed - allowed
    assert set(_flatten(published)) <= set(_flatten(tiny))  # nothing published was dropped


def test_tiny_layout_keeps_the_published_traps(tiny_dir):
    """CLAP comes up float64 without an explicit dtype; the tokenizers keep their published lengths."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, ClapModel

    with safe_open(str(tiny_dir / "text_encoder" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("logit_scale_a").dtype == torch.float64
        assert f.get_tensor("text_model.embeddings.word_embeddings.weight").dtype == torch.float32
    assert ClapModel.from_pretrained(tiny_dir / "text_encoder").logit_scale_a.dtype == torch.float64
    roberta = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    t5 = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer_2")
    assert (type(roberta).__name__, roberta.model_max_length) == ("RobertaTokenizer", 512)  # Fast is the same class
    assert (type(t5).__name__, t5.model_max_length) == ("T5Tokenizer", 128)
    assert t5.convert_tokens_to_ids("<extra_id_99>") != t5.unk_token_id
    assert len(t5("word " * 500, truncation=True).input_ids) == 128


def test_loaded_model_is_in_eval_mode_with_published_geometry(tiny_model):
    for module in (tiny_model.vae, tiny_model.unet, tiny_model.vocoder):
        assert not module.training
    assert len(tiny_model.unet.config.block_out_channels) == 4  # the published depth: latent time multiple of 8
    assert tiny_model.samples_multiple == 160 * 4 * 8
    assert tiny_model.scaling_factor == pytest.approx(0.4110932946205139)


def test_published_unets_have_the_published_sizes():
    """Built on the meta device (no memory): base and -music 346.9 M parameters, -large 718.0 M."""
    from diffusers import AudioLDM2UNet2DConditionModel

    sizes = {}
    for checkpoint in CHECKPOINTS:
        with torch.device("meta"):
            unet = AudioLDM2UNet2DConditionModel.from_config(published_config(checkpoint, "unet"))
        sizes[checkpoint] = sum(p.numel() for p in unet.parameters())
    assert sizes["audioldm2"] == sizes["audioldm2-music"]
    assert sizes["audioldm2"] / 1e6 == pytest.approx(346.9, abs=0.1)
    assert sizes["audioldm2-large"] / 1e6 == pytest.approx(718.0, abs=0.05)
    # The hub's UNet files (1,387,964,784 and 2,872,468,672 bytes) are float32 tensors plus a JSON header
    # that grows with the tensor count (-large has two transformer layers per block).
    header_base = 1_387_964_784 - 4 * sizes["audioldm2"]
    header_large = 2_872_468_672 - 4 * sizes["audioldm2-large"]
    assert 0 < header_base < header_large < 3 * header_base


@pytest.mark.parametrize("checkpoint", ["audioldm2-large", "audioldm2-music"])
def test_large_and_music_layouts_load_and_sample(checkpoint, tmp_path):
    from gdr.backbone import AudioLDM2
    from gdr.degradations import build_degradation
    from gdr.methods import build_guidance
    from gdr.module import GuidedReconstructor
    from gdr.schedules import build_schedule

    folder = save_published_layout(tmp_path / checkpoint, checkpoint, "tiny")
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    assert unet_cfg["transformer_layers_per_block"] == (2 if checkpoint == "audioldm2-large" else 1)
    model = AudioLDM2.from_pretrained(folder, cache_dir=tmp_path / "cache")
    y = 0.3 * torch.randn(1, 5120, generator=torch.Generator().manual_seed(0))
    module = GuidedReconstructor(model, build_degradation("identity"), build_guidance("dps"), build_schedule(1.0),
                                 steps=2)
    out = module.reconstruct(y, torch.Generator().manual_seed(0))
    assert out.shape == (1, 5120) and torch.isfinite(out).all()
    # Unguided, gdr's loop on this layout gives diffusers' own pipeline latents (as test_sampler checks for base).
    from diffusers import AudioLDM2Pipeline

    from gdr.measurement import LatentMeasurement
    from gdr.sampler import sample

    pipe = AudioLDM2Pipeline.from_pretrained(folder, dtype=torch.float32)
    cond = model.null_condition
    ref = pipe(prompt_embeds=cond.t5, attention_mask=cond.t5_mask, generated_prompt_embeds=cond.gpt2,
               num_inference_steps=3, audio_length_in_s=1.28, guidance_scale=1.0, eta=1.0,
               generator=torch.Generator().manual_seed(3), output_type="latent").audios
    measurement = LatentMeasurement(torch.zeros_like(ref), torch.zeros_like(ref))
    with torch.no_grad():
        ours = sample(model.eps, model.scheduler, build_guidance("none"), build_schedule(0.0), measurement, steps=3,
                      eta=1.0, generator=torch.Generator().manual_seed(3), return_denoised=False)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-5
    assert ref.abs().max() > 0.1  # not a degenerate all-zero comparison
