"""AudioLDM2-shaped models with random weights, for tests, the smoke config and benchmarks.

* `build_tiny_pipeline`: every component of `AudioLDM2Pipeline` at toy size (about 2 M
  parameters), including tokenizers built in memory, so it runs offline on a CPU in seconds.
  `save_tiny_pipeline` writes it as a complete pipeline folder that `AudioLDM2.from_pretrained`
  (the same code that loads `cvssp/audioldm2`) reads back.
* `build_real_size_components`: VAE, UNet, vocoder and scheduler of the real size from the
  configs in ``gdr/model_configs/audioldm2`` (sources in its SOURCES.md), random weights.

Numbers produced by either model say nothing about the methods; the report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_MODEL_NAME = "gdr-tiny"
# Bump when the tiny architecture changes, so cached folders are rebuilt.
TINY_MODEL_VERSION = 2
REAL_CONFIG_DIR = Path(__file__).parent / "model_configs" / "audioldm2"


def _tiny_tokenizers():
    from transformers import RobertaTokenizer, T5Tokenizer

    words = ["a", "the", "sound", "of", "dog", "music", "speech", "rain", "low", "quality", "."]
    roberta_vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    roberta_vocab.update({w: i + 5 for i, w in enumerate(words)})
    tokenizer = RobertaTokenizer(vocab=roberta_vocab, merges=[], model_max_length=77)
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{w}", -1.0) for w in words]
    tokenizer_2 = T5Tokenizer(vocab=t5_vocab, extra_ids=0, model_max_length=77)
    return tokenizer, tokenizer_2


def build_tiny_pipeline(seed: int = 0):
    """A complete, randomly initialised `AudioLDM2Pipeline` with AudioLDM2's shapes at toy width.

    Shapes kept from the real model: 1-channel (B, 1, T, 64) mel in, 8 latent channels, VAE
    downsampling 4x4, vocoder upsampling 160x (16 kHz, hop 160), two cross-attention streams.
    The UNet has 2 resolution levels (real: 4), so latent time must be a multiple of 2 (real: 8).
    """
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapTextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(seed)
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=64,
        in_channels=8,
        out_channels=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=([None, 16, 32], [None, 16, 32]),
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=8,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.4110932946205139,
    )
    scheduler = DDIMScheduler.from_config(json.loads((REAL_CONFIG_DIR / "scheduler.json").read_text()))
    text_config = ClapTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=16, intermediate_size=37,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=64, projection_dim=16,
    )
    audio_config = ClapAudioConfig(
        spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, depths=[2, 2],
        num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=192, projection_dim=16,
        patch_size=2, patch_stride=2, patch_embed_input_channels=4,
    )
    text_encoder = ClapModel(ClapConfig(text_config=text_config.to_dict(), audio_config=audio_config.to_dict(),
                                        projection_dim=16))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_ff=37, d_kv=8, num_heads=2, num_layers=2))
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_positions=99, bos_token_id=0, eos_token_id=2))
    language_model.config.max_new_tokens = 8
    projection_model = AudioLDM2ProjectionModel(text_encoder_dim=16, text_encoder_1_dim=32, langauge_model_dim=16)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=64, sampling_rate=16000, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[10, 8, 4, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
        # The default init (0.01) makes a 5-stage random HiFi-GAN output ~1e-10: every log-mel of its
        # output sits on the 1e-5 floor and measurement gradients through it vanish. 0.17 gives ~0.05 rms.
        initializer_range=0.17,
    ))
    tokenizer, tokenizer_2 = _tiny_tokenizers()
    return AudioLDM2Pipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, projection_model=projection_model,
        language_model=language_model, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        feature_extractor=ClapFeatureExtractor(), unet=unet, scheduler=scheduler, vocoder=vocoder,
    )


def save_tiny_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it as a complete pipeline folder (atomically). Returns the folder."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build_tiny_pipeline(seed).save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure_tiny_model(cache_dir: str | os.PathLike) -> Path:
    """Path of the saved tiny pipeline under `cache_dir`, building it on first use."""
    folder = Path(cache_dir) / f"{TINY_MODEL_NAME}-v{TINY_MODEL_VERSION}"
    if not (folder / "model_index.json").exists():
        save_tiny_pipeline(folder)
    return folder


def build_real_size_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """VAE, UNet, vocoder and scheduler of `cvssp/audioldm2`'s size with random weights.

    Returns ``{"vae", "unet", "vocoder", "scheduler"}``; cross-attention widths are 768 (GPT-2
    stream) and 1024 (T5 stream), as in the real model.
    """
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    def cfg(name: str) -> dict:
        return json.loads((REAL_CONFIG_DIR / f"{name}.json").read_text())

    torch.manual_seed(seed)
    vocoder_cfg = cfg("vocoder")
    vocoder_cfg.pop("model_type")
    parts = {
        "vae": AutoencoderKL.from_config(cfg("vae")),
        "unet": AudioLDM2UNet2DConditionModel.from_config(cfg("unet")),
        "vocoder": SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_cfg)),
    }
    if dtype != torch.float32:
        parts = {k: v.to(dtype) for k, v in parts.items()}
    return {**parts, "scheduler": DDIMScheduler.from_config(cfg("scheduler"))}
