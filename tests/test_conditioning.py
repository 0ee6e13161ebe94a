"""gdr's own text stack on the tiny *published* layout: the GPT-2 loop against diffusers' helper and a
step-by-step reference, both null kinds against diffusers' encode_prompt, float32 whatever the config
says, and the null-condition cache."""

import json
import shutil

import pytest
import torch

from gdr.backbone import AudioLDM2
from gdr.condition_cache import load_null_condition
from gdr.text_stack import TextStack, generate_language_model
from gdr.errors import ModelNotFoundError


def _reference_generation(base, embeds, mask, steps):
    """The loop as AudioLDM2's modules.py defines it, written out with no cache: one full forward per vector."""
    out = []
    for _ in range(steps):
        hidden = base(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, S, D)
        vector = hidden[:, -1:, :]
        out.append(vector)
        embeds = torch.cat([embeds, vector], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.cat(out, dim=1)


def test_the_tiny_layout_uses_the_published_gpt2_class_and_length(tiny_dir, language_models):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["language_model"] == ["transformers", "GPT2Model"]
    assert type(language_models[0]).__name__ == "GPT2Model" and language_models[0].config.max_new_tokens == 8


@pytest.mark.parametrize("masked", [False, True])
def test_generation_equals_diffusers_helper_and_a_step_by_step_reference(diffusers_pipe, language_models, masked):
    base, head = language_models
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 7, base.config.n_embd, generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    if masked:
        mask[1, 5:] = 0  # a padded second prompt
    with torch.no_grad():
        reference = _reference_generation(base, embeds, mask, 8)
        ours_base = generate_language_model(base, embeds, mask, 8)
        ours_head = generate_language_model(head, embeds, mask, 8)
        theirs = diffusers_pipe.generate_language_model(embeds, attention_mask=mask, max_new_tokens=8)
    assert ours_base.shape == (2, 8, base.config.n_embd)
    torch.testing.assert_close(ours_base, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_head, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs, reference, rtol=1e-5, atol=1e-6)


def test_the_published_layout_breaks_diffusers_encode_prompt_without_an_explicit_dtype(tiny_dir):
    """The stand-in reproduces the first published crash: CLAP comes up float64 from its config."""
    from diffusers import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline.from_pretrained(tiny_dir)
    assert pipe.text_encoder.logit_scale_a.dtype == torch.float64
    with pytest.raises(RuntimeError, match="dtype"):
        pipe.encode_prompt("", "cpu", 1, False)


def test_text_stack_runs_in_float32_whatever_the_config_says(tiny_dir):
    assert json.loads((tiny_dir / "text_encoder" / "config.json").read_text())["torch_dtype"] == "float64"
    stack = TextStack(tiny_dir)
    clap = stack.part("text_encoder")
    assert {p.dtype for p in clap.parameters()} == {torch.float32}
    assert not clap.training and not stack.part("language_model").training
    assert stack.clap_text("rain").dtype == torch.float32


def test_diffusers_null_equals_the_pipelines_empty_prompt(tiny_dir, diffusers_pipe):
    ours = TextStack(tiny_dir).null("diffusers")
    with torch.no_grad():
        t5, mask, gpt2 = diffusers_pipe.encode_prompt("", "cpu", 1, False)
        # With CFG and an empty prompt, the unconditional half is the same "" encoding.
        t5_cfg, mask_cfg, gpt2_cfg = diffusers_pipe.encode_prompt("", "cpu", 1, True)
    assert ours.gpt2.shape == (1, 8, 16) and ours.kind == "diffusers"
    torch.testing.assert_close(ours.gpt2, gpt2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.t5, t5)
    assert torch.equal(ours.t5_mask, mask)
    torch.testing.assert_close(ours.gpt2, gpt2_cfg[:1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.t5, t5_cfg[:1])


def test_original_null_is_zero_gpt2_and_unmasked_t5_of_the_empty_string(tiny_dir, diffusers_pipe):
    ours = TextStack(tiny_dir).null("original")
    with torch.no_grad():
        t5, _, gpt2 = diffusers_pipe.encode_prompt("", "cpu", 1, False)
    assert ours.gpt2.shape == gpt2.shape and torch.count_nonzero(ours.gpt2) == 0
    torch.testing.assert_close(ours.t5, t5)
    assert ours.t5_mask.dtype == torch.long and bool((ours.t5_mask == 1).all())


def test_text_prompt_encoding_equals_diffusers(tiny_dir, diffusers_pipe):
    ours = TextStack(tiny_dir).encode("the sound of rain on a tin roof")
    with torch.no_grad():
        t5, mask, gpt2 = diffusers_pipe.encode_prompt("the sound of rain on a tin roof", "cpu", 1, False)
    assert ours.t5.shape[1] > 5
    torch.testing.assert_close(ours.t5, t5)
    torch.testing.assert_close(ours.gpt2, gpt2, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.t5_mask, mask)


def test_original_null_needs_only_flan_t5(tiny_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    for sub in ("text_encoder", "language_model/model.safetensors", "projection_model", "tokenizer"):
        target = copy / sub
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    cond = load_null_condition(copy, "original", tmp_path / "cache")
    assert cond.gpt2.shape == (1, 8, 16)
    with pytest.raises(ModelNotFoundError, match="'diffusers' null condition needs tokenizer/"):
        load_null_condition(copy, "diffusers", tmp_path / "cache")


def test_null_conditions_are_cached_and_survive_a_removed_text_stack(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    first = AudioLDM2.from_pretrained(copy, cache_dir=cache, null_condition="diffusers")
    assert len(list((cache / "null_condition").glob("*.safetensors"))) == 1
    for sub in ("text_encoder", "text_encoder_2", "language_model", "projection_model"):
        shutil.rmtree(copy / sub)
    again = AudioLDM2.from_pretrained(copy, cache_dir=cache, null_condition="diffusers")
    torch.testing.assert_close(again.null_condition.gpt2, first.null_condition.gpt2)
    # An uncached kind on the stripped folder names what is missing, in one line.
    with pytest.raises(ModelNotFoundError, match="needs text_encoder_2/"):
        AudioLDM2.from_pretrained(copy, cache_dir=cache, null_condition="original")
