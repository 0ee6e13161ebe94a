"""Reconstructions that use no diffusion: the round trips every guided result must beat.

Each baseline maps a batch of measured waveforms ``y`` ``(K, n)`` at 16 kHz to reconstructions
of the same shape. They run per chunk through `gdr.chunking.process_in_chunks`.
"""

from __future__ import annotations

import torch

from gdr.audio import log_mel
from gdr.backbone import AudioLDM2
from gdr.registry import Registry

BASELINES = Registry("baseline")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last axis of `x` at the end to a multiple of `multiple` samples."""
    return torch.nn.functional.pad(x, (0, (-x.shape[-1]) % multiple))


@BASELINES.register("degraded")
def degraded(model: AudioLDM2, y: torch.Tensor) -> torch.Tensor:
    """B0: the measurement itself ("do nothing")."""
    return y


@BASELINES.register("vocoder_roundtrip")
@torch.no_grad()
def vocoder_roundtrip(model: AudioLDM2, y: torch.Tensor) -> torch.Tensor:
    """B1v: ``V(M(y))``, separates vocoder error from VAE error."""
    n = y.shape[-1]
    return model.mel_to_waveform(log_mel(pad_to_multiple(y, model.samples_multiple)), n)


@BASELINES.register("vae_roundtrip")
@torch.no_grad()
def vae_roundtrip(model: AudioLDM2, y: torch.Tensor) -> torch.Tensor:
    """B1: ``G(E(M(y)))``, the seed's "plain VAE reconstruction" (posterior mode)."""
    n = y.shape[-1]
    z = model.waveform_to_latent(pad_to_multiple(y, model.samples_multiple))
    return model.latent_to_waveform(z, n)
