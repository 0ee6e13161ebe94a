"""AudioLDM2's components behind one object: waveform <-> mel <-> latent, and the UNet's noise prediction.

Only the parts the samplers need stay in memory: VAE, UNet, scheduler, vocoder, and the null
(empty-prompt) conditioning, computed once with the text stack and cached as safetensors.

Null conditioning (``null_condition``), see ``shared/docs/audioldm2-frontend.md`` §5:

* ``"original"`` (default): GPT-2 stream = zeros (1, 8, 768), T5 stream = T5("") with an all-ones
  mask. This is the null condition the original AudioLDM2 UNet was trained with (10 % condition
  dropout), so it is the unconditional model the prior was actually fit to.
* ``"diffusers"``: ``""`` through the whole text path (CLAP, T5, projection, GPT-2 generating 8
  vectors), which is what `AudioLDM2Pipeline` does for an empty negative prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from gdr.audio import HOP_LENGTH, LOG_FLOOR, log_mel
from gdr.errors import ConfigError, ModelNotFoundError

DEFAULT_MODEL = "cvssp/audioldm2"
NullConditionKind = Literal["original", "diffusers"]

# What a loadable pipeline folder must hold: subfolder -> (config file, accepted weight files).
_REQUIRED = {
    "vae": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "unet": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vocoder": ("config.json", ("model.safetensors", "pytorch_model.bin")),
    "scheduler": ("scheduler_config.json", ()),
}
_TEXT_STACK = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "language_model", "projection_model")


def default_cache_dir() -> Path:
    """``$GDR_CACHE`` or ``~/.cache/gdr``: the tiny model and cached null conditionings live here."""
    return Path(os.environ.get("GDR_CACHE", Path.home() / ".cache" / "gdr"))


def _how_to_get() -> str:
    return (
        f"get it with `huggingface-cli download {DEFAULT_MODEL} --local-dir models/audioldm2` and pass "
        "`--model.pretrained models/audioldm2` (train.py: `--model.init_args.pretrained`), or run the offline "
        "demo with `--config configs/smoke.yaml`"
    )


@dataclass
class NullCondition:
    """The two cross-attention inputs of the UNet for "no prompt".

    Attributes:
        gpt2: ``(1, 8, D1)`` GPT-2 stream (D1 = 768 for AudioLDM2).
        t5: ``(1, L, D2)`` Flan-T5 hidden states (D2 = 1024).
        t5_mask: ``(1, L)`` long attention mask of the T5 stream.
        kind: ``"original"`` or ``"diffusers"``.
    """

    gpt2: torch.Tensor
    t5: torch.Tensor
    t5_mask: torch.Tensor
    kind: str

    def to(self, device=None, dtype=None) -> "NullCondition":
        return NullCondition(self.gpt2.to(device, dtype), self.t5.to(device, dtype), self.t5_mask.to(device),
                             self.kind)

    def expand(self, batch: int) -> dict[str, torch.Tensor]:
        """UNet keyword arguments for a batch of `batch` latents."""
        return {
            "encoder_hidden_states": self.gpt2.expand(batch, -1, -1),
            "encoder_hidden_states_1": self.t5.expand(batch, -1, -1),
            "encoder_attention_mask_1": self.t5_mask.expand(batch, -1),
        }


def _quiet_hf() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)


def check_model_folder(folder: Path) -> None:
    """Raise `ModelNotFoundError` naming the first missing piece of a local pipeline folder."""
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist; {_how_to_get()}")
    for sub, (config, weights) in _REQUIRED.items():
        if not (folder / sub / config).is_file():
            raise ModelNotFoundError(f"model folder {folder} is incomplete: missing {sub}/{config}; "
                                     f"{_how_to_get()}")
        if weights and not any((folder / sub / w).is_file() for w in weights):
            raise ModelNotFoundError(f"model folder {folder} is incomplete: no weights in {sub}/ "
                                     f"(expected {' or '.join(weights)}); {_how_to_get()}")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_folder(pretrained: str, cache_dir: Path) -> Path:
    """Local pipeline folder for `pretrained`: ``"gdr-tiny"``, a local path, or a hub id.

    A hub id is looked up in the Hugging Face cache first and downloaded only when the hub is
    reachable, so an offline machine gets the one-line message at once instead of minutes of retries.
    """
    from gdr.builders import TINY_MODEL_NAME, ensure_tiny_model

    if pretrained == TINY_MODEL_NAME:
        return ensure_tiny_model(cache_dir)
    local = Path(pretrained).expanduser()
    if local.exists() or not _HUB_ID.match(pretrained):
        check_model_folder(local)
        return local.resolve()
    import huggingface_hub

    try:
        folder = Path(huggingface_hub.snapshot_download(pretrained, local_files_only=True))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _hub_reachable():
            raise ModelNotFoundError(f"model {pretrained!r} is not in the local Hugging Face cache and the hub "
                                     f"cannot be reached; {_how_to_get()}") from None
        try:
            folder = Path(huggingface_hub.snapshot_download(pretrained))
        except Exception as exc:
            raise ModelNotFoundError(f"cannot download {pretrained!r} ({_first_line(exc)}); "
                                     f"{_how_to_get()}") from None
    check_model_folder(folder)
    return folder


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class AudioLDM2(nn.Module):
    """AudioLDM2's VAE, UNet, scheduler and vocoder with a cached null conditioning.

    Shapes (AudioLDM2 names, see the style guide): waveform ``x`` ``(B, N)`` at 16 kHz;
    ``mel`` ``(B, 1, T, 64)`` with ``T = N // 160``; latent ``z`` ``(B, 8, T // 4, 16)``.
    """

    def __init__(self, vae, unet, scheduler, vocoder, null_condition: NullCondition, source: str = "in-memory"):
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
    def null_condition(self) -> NullCondition:
        return NullCondition(self.null_gpt2, self.null_t5, self.null_t5_mask, self.null_kind)

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
    ) -> "AudioLDM2":
        """Load from a hub id (default ``cvssp/audioldm2``) or a local pipeline folder.

        ``pretrained="gdr-tiny"`` builds (once) and loads the tiny random-weight model through
        the same code. The VAE and vocoder stay in float32 when the VAE config asks for
        ``force_upcast`` (AudioLDM2's does); the UNet runs in `dtype`. `lora_path`: a folder written by
        ``scripts/train.py`` (LoRA adapter on the UNet). `attention`: ``"sdpa"`` (PyTorch's fused
        scaled-dot-product attention, diffusers' default) or ``"eager"`` (the plain reference
        implementation); `compile`: wrap the UNet in ``torch.compile`` (first call compiles).
        Raises `ModelNotFoundError` with a one-line message when the model is missing or incomplete.
        """
        from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL, DDIMScheduler
        from transformers import SpeechT5HifiGan

        if null_condition not in ("original", "diffusers"):
            raise ConfigError(f"null_condition must be 'original' or 'diffusers', got {null_condition!r}")
        _quiet_hf()
        cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        source = str(resolve_model_folder(str(pretrained), cache_dir))

        def load(kind, sub, **kw):
            try:
                return kind.from_pretrained(source, subfolder=sub, **kw)
            except Exception as exc:  # OSError, ValueError, safetensors' own errors on truncated files, ...
                raise ModelNotFoundError(f"cannot load {sub}/ from {source} (truncated or corrupt file?): "
                                         f"{type(exc).__name__}: {_first_line(exc)}; {_how_to_get()}") from None

        scheduler = load(DDIMScheduler, "scheduler")
        vae = load(AutoencoderKL, "vae")
        upcast = bool(getattr(vae.config, "force_upcast", False)) and dtype in (torch.float16, torch.bfloat16)
        aux_dtype = torch.float32 if upcast else dtype
        vae = vae.to(device=device, dtype=aux_dtype)
        vocoder = load(SpeechT5HifiGan, "vocoder").to(device=device, dtype=aux_dtype)
        unet = load(AudioLDM2UNet2DConditionModel, "unet")
        if lora_path is not None:
            from gdr.adapters import load_lora

            load_lora(unet, lora_path)
        unet = unet.to(device=device, dtype=dtype)
        if attention not in ("sdpa", "eager"):
            raise ConfigError(f"model.attention must be 'sdpa' or 'eager', got {attention!r}")
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
    def eps(self, z_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """UNet noise prediction with the null condition. ``z_t``: ``(B, 8, L, 16)``; same shape out."""
        unet_dtype = next(self.unet.parameters()).dtype
        cond = self.null_condition.expand(z_t.shape[0])
        out = self.unet(self.scheduler.scale_model_input(z_t, t).to(unet_dtype), t, return_dict=False, **cond)[0]
        return out.to(z_t.dtype)


# -------------------------------------------------------------------- null conditioning
def _text_stack_fingerprint(source: str) -> str:
    """Names, sizes and mtimes of the text-stack files, or "" when the stack is not (all) there."""
    if not all((Path(source) / sub).is_dir() for sub in _TEXT_STACK):
        return ""
    files = [f for sub in _TEXT_STACK for f in sorted((Path(source) / sub).glob("*")) if f.is_file()]
    ident = [(f.parent.name, f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16] if files else ""


def compute_null_condition(pipe, kind: NullConditionKind) -> NullCondition:
    """Run ``""`` through the pipeline's text stack once (see the module docstring for `kind`)."""
    with torch.no_grad():
        t5, t5_mask, gpt2 = pipe.encode_prompt("", pipe.device, 1, False)
    if kind == "original":
        gpt2 = torch.zeros_like(gpt2)
        t5_mask = torch.ones_like(t5_mask)
    return NullCondition(gpt2.float().cpu(), t5.float().cpu(), t5_mask.long().cpu(), kind)


def load_null_condition(source: str, kind: NullConditionKind, cache_dir: Path) -> NullCondition:
    """The null conditioning for `source`, from the safetensors cache or computed and cached."""
    from safetensors.torch import load_file, save_file

    from gdr.atomic import atomic_path

    key = hashlib.sha256(f"{source}|{kind}".encode()).hexdigest()[:16]
    path = cache_dir / "null_condition" / f"{key}.safetensors"
    fingerprint = _text_stack_fingerprint(source)
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            cached_fingerprint = (f.metadata() or {}).get("text_stack", "")
        # Reuse unless the text stack is present and has changed since the cache was written; a
        # folder whose text encoders were deleted after caching keeps working.
        if not fingerprint or fingerprint == cached_fingerprint:
            t = load_file(str(path))
            return NullCondition(t["gpt2"], t["t5"], t["t5_mask"], kind)
    missing = [sub for sub in _TEXT_STACK if not (Path(source) / sub).is_dir()]
    if missing:
        raise ModelNotFoundError(f"model folder {source} has no text stack ({', '.join(missing)}) to compute "
                                     f"the null conditioning once; {_how_to_get()}")
    from diffusers import AudioLDM2Pipeline

    try:
        pipe = AudioLDM2Pipeline.from_pretrained(source, vae=None, unet=None, vocoder=None)
    except Exception as exc:
        raise ModelNotFoundError(f"cannot load the text stack of {source} ({_first_line(exc)}); "
                                 f"{_how_to_get()}") from None
    cond = compute_null_condition(pipe, kind)
    del pipe
    with atomic_path(path) as tmp:
        save_file({"gpt2": cond.gpt2.contiguous(), "t5": cond.t5.contiguous(), "t5_mask": cond.t5_mask.contiguous()},
                  str(tmp), metadata={"source": source, "kind": kind, "text_stack": fingerprint})
    logging.getLogger(__name__).info("cached the %s null conditioning of %s in %s", kind, source, path)
    return cond
