"""AudioLDM2's components behind one object: waveform <-> mel <-> latent, and the UNet's noise prediction.

Only the parts the samplers need stay in memory: VAE, UNet, scheduler, vocoder, and the null
(empty-prompt) condition, computed once with the text stack (`gdr.conditioning`) and cached as
safetensors. Where the model comes from (tiny, local folder, hub) is `gdr.hub`'s business.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from gdr import checks
from gdr.audio import HOP_LENGTH, LOG_FLOOR, log_mel
from gdr.condition_cache import load_null_condition
from gdr.conditioning import NULL_KINDS, Condition, Conditioning, NullConditionKind
from gdr.errors import ModelNotFoundError
from gdr.hub import DEFAULT_MODEL, first_line, how_to_get, resolve_model_folder


def default_cache_dir() -> Path:
    """``$GDR_CACHE`` or ``~/.cache/gdr``: the tiny model and cached null conditions live here."""
    return Path(os.environ.get("GDR_CACHE", Path.home() / ".cache" / "gdr"))


def _quiet_hf() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)


class AudioLDM2(nn.Module):
    """AudioLDM2's VAE, UNet, scheduler and vocoder with a cached null conditioning.

    Shapes (AudioLDM2 names, see the style guide): waveform ``x`` ``(B, N)`` at 16 kHz;
    ``mel`` ``(B, 1, T, 64)`` with ``T = N // 160``; latent ``z`` ``(B, 8, T // 4, 16)``.
    """

    def __init__(self, vae, unet, scheduler, vocoder, null_condition: Condition, source: str = "in-memory"):
        super().__init__()
        self.vae, self.unet, self.vocoder = vae, unet, vocoder
        self.scheduler = scheduler
        self.source = source
        # Buffers, so that `.to(device)` (and Lightning, per DDP rank) moves the conditioning with the UNet.
        self.register_buffer("null_gpt2", null_condition.gpt2, persistent=False)
        self.register_buffer("null_t5", null_condition.t5, persistent=False)
        self.register_buffer("null_t5_mask", null_condition.t5_mask, persistent=False)
        self.null_kind = null_condition.kind
        for module in (vae, unet, vocoder):
            module.requires_grad_(False).eval()

    @property
    def null_condition(self) -> Condition:
        return Condition(self.null_gpt2, self.null_t5, self.null_t5_mask, self.null_kind)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike = DEFAULT_MODEL,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        null_condition: NullConditionKind = "original",
        cache_dir: str | os.PathLike | None = None,
        lora_path: str | os.PathLike | None = None,
        attention: str = "sdpa",
        compile: bool = False,
        variant: str | None = None,
    ) -> "AudioLDM2":
        """Load from a hub id (default ``cvssp/audioldm2``) or a local pipeline folder.

        ``pretrained="gdr-tiny"`` builds (once) and loads the tiny published layout with random weights
        through the same code. Every component is loaded with an explicit dtype (a config's own
        ``torch_dtype`` never decides): the UNet in `dtype`; the VAE and vocoder in float32 when the VAE
        config asks for ``force_upcast`` (AudioLDM2's does), else in `dtype`; the text stack in float32.
        `variant`: weight files ``*.<variant>.safetensors`` (e.g. ``"fp16"``); sharded folders load too.
        `lora_path`: a folder written by ``scripts/train.py`` (LoRA adapter on the UNet). `attention`:
        ``"sdpa"`` (PyTorch's fused scaled-dot-product attention, diffusers' default) or ``"eager"`` (the
        plain reference implementation); `compile`: wrap the UNet in ``torch.compile`` (first call compiles).
        Raises `ModelNotFoundError` / `UnsupportedModelError` with a one-line message.
        """
        from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
        from transformers import SpeechT5HifiGan

        checks.choice("null_condition", null_condition, NULL_KINDS)
        checks.choice("model.attention", attention, ("sdpa", "eager"))
        _quiet_hf()
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        source = str(resolve_model_folder(str(pretrained), cache_dir, variant))

        def load(kind, sub, **kw):
            try:
                return kind.from_pretrained(source, subfolder=sub, variant=variant, **kw)
            except Exception as exc:  # OSError, ValueError, safetensors' own errors on truncated files, ...
                raise ModelNotFoundError(f"cannot load {sub}/ from {source} (truncated or corrupt file?): "
                                         f"{type(exc).__name__}: {first_line(exc)}; {how_to_get()}") from None

        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
        vae = load(AutoencoderKL, "vae", dtype=torch.float32)
        upcast = bool(getattr(vae.config, "force_upcast", False)) and dtype in (torch.float16, torch.bfloat16)
        aux_dtype = torch.float32 if upcast else dtype
        vae = vae.to(device=device, dtype=aux_dtype)
        vocoder = load(SpeechT5HifiGan, "vocoder", dtype=aux_dtype).to(device)
        # LoRA is merged into float32 weights before any cast.
        unet = load(AudioLDM2UNet2DConditionModel, "unet", dtype=torch.float32)
        if lora_path is not None:
            from gdr.adapters import load_lora

            load_lora(unet, lora_path)
        unet = unet.to(device=device, dtype=dtype)
        if attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        if compile:
            unet = torch.compile(unet)
        cond = load_null_condition(source, null_condition, cache_dir)
        return cls(vae, unet, scheduler, vocoder, cond.to(device, dtype), source=source)

    # ---------------------------------------------------------------- geometry
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale(self) -> int:
        """Downsampling of the VAE in time and mel (4 for AudioLDM2)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def samples_multiple(self) -> int:
        """Waveform lengths the whole chain handles without padding: 160 * 4 * 2**(UNet levels - 1)."""
        return HOP_LENGTH * self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def pad_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the last axis of `x` (waveforms, ``(..., n)``) at the end to a multiple of `samples_multiple`."""
        return torch.nn.functional.pad(x, (0, (-x.shape[-1]) % self.samples_multiple))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ---------------------------------------------------------------- front end and inverses
    def mel_to_latent(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 1, T, 64)`` log-mel -> ``(B, 8, ceil(T / 4), 16)`` latent (posterior mode * scaling_factor).

        A time length that is not a multiple of 4 is padded at the end with the log floor
        (silence); `latent_to_mel` then returns the padded length and callers trim.
        """
        pad = (-mel.shape[2]) % self.vae_scale
        if pad:
            mel = torch.nn.functional.pad(mel, (0, 0, 0, pad), value=float(torch.log(torch.tensor(LOG_FLOOR))))
        vae_dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode(mel.to(vae_dtype)).latent_dist
        return posterior.mode() * self.scaling_factor

    def latent_to_mel(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, 8, L, 16)`` latent -> ``(B, 1, 4 L, 64)`` log-mel (``vae.decode(z / scaling_factor)``)."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(z.to(vae_dtype) / self.scaling_factor).sample

    def mel_to_waveform(self, mel: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """``(B, 1, T, 64)`` log-mel -> ``(B, num_samples)`` float32 waveform through the vocoder.

        The vocoder returns ``160 T + 32`` samples; the output is trimmed (or zero-padded) to
        `num_samples` (default ``160 T``).
        """
        voc_dtype = next(self.vocoder.parameters()).dtype
        x = self.vocoder(mel.squeeze(1).to(voc_dtype)).float()
        if x.ndim == 1:
            x = x[None]
        n = HOP_LENGTH * mel.shape[2] if num_samples is None else num_samples
        return x[:, :n] if x.shape[1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[1]))

    def waveform_to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` waveform -> latent ``z_y = E(M(x))``."""
        return self.mel_to_latent(log_mel(x))

    def latent_to_waveform(self, z: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``G(z) = V(D(z))``: latent -> ``(B, num_samples)`` waveform."""
        return self.mel_to_waveform(self.latent_to_mel(z), num_samples)

    # ---------------------------------------------------------------- denoiser
    def eps(self, z_t: torch.Tensor, t: torch.Tensor | int, conditioning: Conditioning | None = None) -> torch.Tensor:
        """UNet noise prediction ``(B, 8, L, 16)`` -> same shape, conditioned on `conditioning` (default: the null).

        With classifier-free guidance the conditional and unconditional branches run in one UNet call on
        the doubled batch, as ``AudioLDM2Pipeline.__call__`` does, and are combined by `Conditioning.combine`.
        """
        unet_dtype = next(self.unet.parameters()).dtype
        if conditioning is None:
            conditioning = Conditioning(self.null_condition)
        kwargs = {k: v.to(z_t.device, unet_dtype if v.is_floating_point() else v.dtype)
                  for k, v in conditioning.unet_kwargs(z_t.shape[0]).items()}
        z_in = torch.cat([z_t, z_t]) if conditioning.cfg else z_t
        out = self.unet(self.scheduler.scale_model_input(z_in, t).to(unet_dtype), t, return_dict=False, **kwargs)[0]
        return conditioning.combine(out).to(z_t.dtype)

    def denoiser(self, conditioning: Conditioning | None = None):
        """``(z_t, t) -> eps`` with `conditioning` bound: what the sampler and the guidance methods call."""
        if conditioning is None:
            return self.eps
        return functools.partial(self.eps, conditioning=conditioning)
