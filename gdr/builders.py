"""The published AudioLDM2 layouts with random weights: scaled down for tests, full size for the CI check.

A stand-in proves something about `cvssp/audioldm2` only where it is built like it. So every model
gdr builds starts from the *published* files in ``gdr/model_configs/published`` (sources in its
SOURCES.md): the same ``model_index.json`` (classes ``GPT2Model``, ``RobertaTokenizerFast``,
``T5TokenizerFast``, ``ClapFeatureExtractor``, ...), each component's published ``config.json``
written back byte for byte in the published form, the CLAP config's ``"torch_dtype": "float64"``
with its two float64 logit scales, the tokenizers' ``model_max_length`` (512 / 128), safetensors
weights. The tiny size changes *only sizes* (`TINY_SIZES`: widths, depths, layer counts); full size
changes nothing. Weights are random, so numbers produced by either say nothing about the methods
(the folder carries `RANDOM_WEIGHTS_MARKER`, and reports say so).

* `save_published_layout(folder, checkpoint, size)`: writes a complete pipeline folder that
  ``AudioLDM2.from_pretrained`` (the code that loads the real download) and diffusers' own
  ``AudioLDM2Pipeline.from_pretrained`` read.
* `ensure_tiny_model(cache_dir)`: the tiny base layout (``--model.pretrained gdr-tiny``), built once.
* `build_tiny_pipeline` / `build_real_size_components`: the same components in memory (benchmarks).

The tokenizers' vocabularies are not published in the config files (and cannot be downloaded here),
so they are built in memory over a byte-level alphabet: any text tokenizes, with the published
special tokens, ids and lengths.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_MODEL_NAME = "gdr-tiny"
# Bump when the tiny layout changes, so cached folders are rebuilt.
TINY_MODEL_VERSION = 3
PUBLISHED_DIR = Path(__file__).parent / "model_configs" / "published"
# The older, trimmed copies of four base configs (kept for reference; a test checks they agree).
REAL_CONFIG_DIR = Path(__file__).parent / "model_configs" / "audioldm2"
CHECKPOINTS = ("audioldm2", "audioldm2-large", "audioldm2-music")
RANDOM_WEIGHTS_MARKER = "gdr_random_weights.json"

# Only sizes shrink. Widths are chained as in the published model: CLAP projection (512) ->
# projection `text_encoder_dim`; Flan-T5 width (1024) -> `text_encoder_1_dim` and the UNet's second
# cross-attention width; GPT-2 width (768) -> `langauge_model_dim` and the first cross-attention width.
CLAP_PROJ, T5_WIDTH, GPT2_WIDTH = 16, 32, 16
TINY_SIZES = {
    "unet": {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1},
    "vae": {"block_out_channels": [32, 32, 32], "layers_per_block": 1},
    "vocoder": {"upsample_initial_channel": 32},
    "text_encoder": {
        "projection_dim": CLAP_PROJ,
        "text_config": {"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "projection_hidden_size": 16, "fusion_hidden_size": 16},
        # HTSAT: hidden_size = patch_embeds_hidden_size * 2 ** (len(depths) - 1).
        "audio_config": {"hidden_size": 64, "patch_embeds_hidden_size": 8, "depths": [1, 1, 1, 1],
                         "num_attention_heads": [2, 2, 2, 2], "projection_hidden_size": 16},
    },
    "text_encoder_2": {"d_model": T5_WIDTH, "d_ff": 37, "d_kv": 8, "num_heads": 2, "num_layers": 2,
                       "num_decoder_layers": 2},
    "language_model": {"n_embd": GPT2_WIDTH, "n_head": 2, "n_layer": 2},
    "projection_model": {"text_encoder_dim": CLAP_PROJ, "text_encoder_1_dim": T5_WIDTH,
                         "langauge_model_dim": GPT2_WIDTH},
}
_WEIGHTED = ("vae", "unet", "vocoder", "text_encoder", "text_encoder_2", "language_model", "projection_model")
_CONFIG_FILE = {"scheduler": "scheduler_config.json", "feature_extractor": "preprocessor_config.json"}


# ------------------------------------------------------------------------------------------ configs
def published_file(checkpoint: str, relative: str) -> Path:
    """A published file of `checkpoint`; -large and -music share base's files except their own."""
    if checkpoint not in CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {checkpoint!r}; known: {', '.join(CHECKPOINTS)}")
    own = PUBLISHED_DIR / checkpoint / relative
    return own if own.is_file() else PUBLISHED_DIR / "audioldm2" / relative


def published_config(checkpoint: str, component: str) -> dict:
    """The published config dict of one component (``"model_index"`` for model_index.json)."""
    relative = "model_index.json" if component == "model_index" else \
        f"{component}/{_CONFIG_FILE.get(component, 'config.json')}"
    return json.loads(published_file(checkpoint, relative).read_text())


def _deep_update(base: dict, sizes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in sizes.items():
        if isinstance(value, dict):
            out[key] = _deep_update(out.get(key, {}), value)
        else:
            out[key] = value
    return out


def layout_config(checkpoint: str, component: str, size: str) -> dict:
    """The config a built component gets: the published one, with `TINY_SIZES` applied for ``size="tiny"``."""
    config = published_config(checkpoint, component)
    if size == "full":
        return config
    if size != "tiny":
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    config = _deep_update(config, TINY_SIZES.get(component, {}))
    if component == "unet":  # the two streams' widths, wherever the published config puts them
        width = {768: GPT2_WIDTH, 1024: T5_WIDTH}
        config["cross_attention_dim"] = [[width.get(d, d) for d in block] for block in config["cross_attention_dim"]]
    return config


def _published_json(obj: dict) -> str:
    """The form diffusers and transformers write configs in (and the published files use)."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# ------------------------------------------------------------------------------------------ components
def _tokenizers():
    """RoBERTa (CLAP) and T5 tokenizers over a byte-level / character alphabet, published lengths."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizerFast, T5TokenizerFast

    roberta_vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for char in sorted(ByteLevel.alphabet()):
        roberta_vocab[char] = len(roberta_vocab)
    roberta_vocab["<mask>"] = len(roberta_vocab)
    roberta = RobertaTokenizerFast(vocab=roberta_vocab, merges=[], model_max_length=512)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)] + [(f"\u2581{chr(c)}", -2.5) for c in range(33, 127)]
    t5 = T5TokenizerFast(vocab=pieces, extra_ids=100, model_max_length=128)
    return roberta, t5


VOCODER_INIT_GAIN = 0.6


def _scale_vocoder_init(vocoder: torch.nn.Module, generator: torch.Generator) -> None:
    """Random convolutions with std ``VOCODER_INIT_GAIN / sqrt(fan_in)``, so that a random HiFi-GAN is audible.

    With the config's ``initializer_range`` (0.01) five upsampling stages shrink the output to about
    1e-10, every log-mel of it sits on the floor and measurement gradients through it vanish; at unit
    gain the output saturates the final tanh. 0.6 gives about 0.05 rms for a 0.5-peak tone's mel. Only
    the random draw changes; the saved config stays the published one.
    """
    with torch.no_grad():
        for module in vocoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                weight = module.weight
                fan_in = weight.shape[1] * weight.shape[2] if isinstance(module, torch.nn.Conv1d) \
                    else weight.shape[0] * weight.shape[2] // max(module.stride[0], 1)
                weight.normal_(0.0, VOCODER_INIT_GAIN * fan_in ** -0.5, generator=generator)


def build_component(checkpoint: str, component: str, size: str, seed: int = 0):
    """One randomly initialised component of the published layout (eval mode). Returns the module."""
    import diffusers
    import transformers

    library, class_name = published_config(checkpoint, "model_index")[component]
    config = layout_config(checkpoint, component, size)
    torch.manual_seed(seed + _WEIGHTED.index(component))
    if library == "transformers":
        cls = getattr(transformers, class_name)
        body = {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
        module = cls(cls.config_class.from_dict(body))
    else:  # "diffusers" or "audioldm2": both classes live in diffusers
        module = getattr(diffusers, class_name).from_config(config)
    if component == "text_encoder":
        # The published CLAP stores its two logit scales as float64 (the reason for its config dtype).
        for name in ("logit_scale_a", "logit_scale_t"):
            getattr(module, name).data = getattr(module, name).data.double()
    if component == "vocoder":
        _scale_vocoder_init(module, torch.Generator().manual_seed(seed))
    return module.eval()


def build_components(checkpoint: str = "audioldm2", size: str = "tiny", seed: int = 0) -> dict:
    """Every pipeline component of the layout in memory (tokenizers, scheduler and feature extractor included)."""
    from diffusers import DDIMScheduler
    from transformers import ClapFeatureExtractor

    parts = {name: build_component(checkpoint, name, size, seed) for name in _WEIGHTED}
    parts["tokenizer"], parts["tokenizer_2"] = _tokenizers()
    parts["scheduler"] = DDIMScheduler.from_config(published_config(checkpoint, "scheduler"))
    extractor = {k: v for k, v in published_config(checkpoint, "feature_extractor").items()
                 if k not in ("feature_extractor_type", "processor_class")}
    parts["feature_extractor"] = ClapFeatureExtractor(**extractor)
    return parts


def build_tiny_pipeline(seed: int = 0, checkpoint: str = "audioldm2"):
    """The tiny published layout as an in-memory `AudioLDM2Pipeline` (the benchmarks' peer)."""
    from diffusers import AudioLDM2Pipeline

    return AudioLDM2Pipeline(**build_components(checkpoint, "tiny", seed))


def build_real_size_components(seed: int = 0, dtype: torch.dtype = torch.float32,
                               checkpoint: str = "audioldm2") -> dict:
    """VAE, UNet, vocoder and scheduler of the published size with random weights (benchmarks).

    Returns ``{"vae", "unet", "vocoder", "scheduler"}``.
    """
    from diffusers import DDIMScheduler

    parts = {name: build_component(checkpoint, name, "full", seed).to(dtype) for name in ("vae", "unet", "vocoder")}
    return {**parts, "scheduler": DDIMScheduler.from_config(published_config(checkpoint, "scheduler"))}


# ------------------------------------------------------------------------------------------ folders
def save_published_layout(folder: str | os.PathLike, checkpoint: str = "audioldm2", size: str = "tiny",
                          seed: int = 0, progress: bool = False) -> Path:
    """Write the whole published layout of `checkpoint` with random weights to `folder` (atomically).

    One component at a time is built, saved (safetensors) and freed, so the full size peaks at the
    largest component (Flan-T5 encoder or UNet) in memory. Every config and tokenizer config is then
    replaced by the published file (with `TINY_SIZES` for the tiny size). Returns `folder`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    say = print if progress else (lambda *a, **k: None)
    try:
        index = published_config(checkpoint, "model_index")
        (tmp / "model_index.json").write_text(_published_json(index))
        for name in _WEIGHTED:
            say(f"building {name} ({size}) ...", flush=True)
            module = build_component(checkpoint, name, size, seed)
            module.save_pretrained(tmp / name)
            del module
            (tmp / name / "config.json").write_text(_published_json(layout_config(checkpoint, name, size)))
        roberta, t5 = _tokenizers()
        for name, tokenizer in (("tokenizer", roberta), ("tokenizer_2", t5)):
            tokenizer.save_pretrained(tmp / name)
            for file in ("tokenizer_config.json", "special_tokens_map.json"):
                shutil.copyfile(published_file(checkpoint, f"{name}/{file}"), tmp / name / file)
        for name, file in _CONFIG_FILE.items():
            (tmp / name).mkdir()
            shutil.copyfile(published_file(checkpoint, f"{name}/{file}"), tmp / name / file)
        marker = {"checkpoint": checkpoint, "size": size, "seed": seed,
                  "note": "random weights built by gdr.builders from the published configs; not a trained model"}
        (tmp / RANDOM_WEIGHTS_MARKER).write_text(_published_json(marker))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def is_random_weights(folder: str | os.PathLike) -> bool:
    """True for folders written by `save_published_layout` (random weights)."""
    return (Path(folder) / RANDOM_WEIGHTS_MARKER).is_file()


def ensure_tiny_model(cache_dir: str | os.PathLike) -> Path:
    """Path of the saved tiny base layout under `cache_dir`, building it on first use."""
    folder = Path(cache_dir) / f"{TINY_MODEL_NAME}-v{TINY_MODEL_VERSION}"
    if not (folder / "model_index.json").exists():
        save_published_layout(folder, "audioldm2", "tiny")
    return folder
