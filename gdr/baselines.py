"""Reconstructions without diffusion: the baselines every guided result has to beat.

Model baselines (run per chunk): ``degraded`` (B0, the measurement itself), ``vocoder_roundtrip``
(B1v, ``V(M(y))``), ``vae_roundtrip`` (B1, ``G(E(M(y)))``, the seed's "plain VAE reconstruction").
The oracle ``G(E(M(x)))`` is the same function applied to the clean ``x`` by the evaluation.

DSP baselines, one per task (B3 in ``shared/docs/methods.md``), run on whole clips and keep the
measurement's phase: ``spectral_subtraction`` (noise), ``lowband_replacement`` (lowpass: the VAE round
trip with the measured low band pasted back, as AudioSR/NVSR post-process), ``ar_interpolation`` (gaps:
forward and backward autoregressive extrapolation, crossfaded), ``consistent_declip`` (clip: cubic
interpolation of the clipped samples, then projection onto the consistent set ``|x| >= level``, same sign,
with the magnitude capped at twice the level so the spline cannot run away over long clipped runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.interpolate
import scipy.linalg
import scipy.signal
import torch

from gdr.audio import log_mel
from gdr.backbone import AudioLDM2
from gdr.registry import Registry

BASELINES = Registry("baseline")


@dataclass
class Baseline:
    """A named baseline. ``fn(model, y, degradation)``: ``y`` ``(B, n)`` -> ``(B, n)``.

    ``task``: the degradation name it is for (None: every task). ``chunked``: run per chunk (model
    baselines) or on the whole clip (DSP). ``phase_coherent``: whether waveform metrics (SNR, SI-SDR)
    mean anything for its output.
    """

    name: str
    fn: Callable
    task: str | None = None
    chunked: bool = True
    phase_coherent: bool = False

    def applies_to(self, degradation_name: str) -> bool:
        return self.task is None or self.task == degradation_name


def register(name: str, **kwargs):
    def deco(fn):
        BASELINES.register(name)(Baseline(name, fn, **kwargs))
        return fn

    return deco


@register("degraded", phase_coherent=True)
def degraded(model: AudioLDM2, y: torch.Tensor, degradation=None) -> torch.Tensor:
    """B0: the measurement itself ("do nothing")."""
    return y


@register("vocoder_roundtrip")
@torch.no_grad()
def vocoder_roundtrip(model: AudioLDM2, y: torch.Tensor, degradation=None) -> torch.Tensor:
    """B1v: ``V(M(y))``, separates vocoder error from VAE error."""
    n = y.shape[-1]
    return model.mel_to_waveform(log_mel(model.pad_to_grid(y)), n)


@register("vae_roundtrip")
@torch.no_grad()
def vae_roundtrip(model: AudioLDM2, y: torch.Tensor, degradation=None) -> torch.Tensor:
    """B1: ``G(E(M(y)))``, the seed's "plain VAE reconstruction" (posterior mode)."""
    n = y.shape[-1]
    z = model.waveform_to_latent(model.pad_to_grid(y))
    return model.latent_to_waveform(z, n)


def _stft(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    return torch.stft(x, n_fft, hop, window=window, return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, hop: int, length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=spec.real.dtype, device=spec.device)
    return torch.istft(spec, n_fft, hop, window=window, length=length)


@register("spectral_subtraction", task="noise", chunked=False, phase_coherent=True)
def spectral_subtraction(model, y: torch.Tensor, degradation=None, *, floor: float = 0.03) -> torch.Tensor:
    """Power spectral subtraction, gain ``max(1 - N / |Y|^2, floor)`` per STFT bin (512, hop 128), noisy phase.

    Noise power per bin: the median of the frame powers divided by ln 2 (for noise-only bins the power is
    exponentially distributed, whose median is ln 2 times its mean), median-filtered over 15 bins so that
    steady tones (present in most frames of their bin) are not taken for noise.
    """
    spec = _stft(y.double(), 512, 128)  # (B, 257, frames)
    power = spec.abs() ** 2
    noise = torch.quantile(power, 0.5, dim=-1, keepdim=True) / math.log(2)  # (B, 257, 1)
    noise = torch.from_numpy(scipy.signal.medfilt(noise[..., 0].cpu().numpy(), (1, 15)))[..., None].to(power)
    gain = (1 - noise / power.clamp_min(1e-20)).clamp_min(floor)
    return _istft(spec * gain, 512, 128, y.shape[-1]).to(y.dtype)


@register("lowband_replacement", task="lowpass")
def lowband_replacement(model: AudioLDM2, y: torch.Tensor, degradation) -> torch.Tensor:
    """The VAE round trip of ``y`` with its STFT bins at or below the cutoff replaced by ``y``'s."""
    recon = vae_roundtrip(model, y)
    spec_y, spec_r = _stft(y.double(), 1024, 256), _stft(recon.double(), 1024, 256)
    freqs = torch.arange(spec_y.shape[1], device=y.device) * 16000 / 1024
    low = (freqs <= degradation.cutoff_hz)[:, None]
    return _istft(torch.where(low, spec_y, spec_r), 1024, 256, y.shape[-1]).to(y.dtype)


def _ar_coefficients(context: np.ndarray, order: int) -> np.ndarray:
    """AR(order) predictor from the autocorrelation (Yule-Walker), ``x[n] ~ a . x[n-1 .. n-order]``."""
    context = context - context.mean()
    r = np.correlate(context, context, "full")[len(context) - 1:len(context) + order] / len(context)
    r[0] = r[0] * (1 + 1e-9) + 1e-12  # white-noise correction keeps the Toeplitz system well posed
    return scipy.linalg.solve_toeplitz(r[:order], r[1:order + 1])


def _extrapolate(context: np.ndarray, length: int, order: int) -> np.ndarray:
    a = _ar_coefficients(context, order)
    buf = list(context[-order:])
    out = np.empty(length)
    for i in range(length):
        out[i] = float(np.dot(a, buf[::-1][:order]))
        buf.append(out[i])
        buf.pop(0)
    return out


@register("ar_interpolation", task="gaps", chunked=False, phase_coherent=True)
def ar_interpolation(model, y: torch.Tensor, degradation, *, order: int = 32, context: int = 1024) -> torch.Tensor:
    """Fill each gap with AR(`order`) predictions from both sides, crossfaded linearly across the gap."""
    mask = degradation.sample_support(y.shape[-1]).numpy().astype(bool)
    edges = np.diff(np.concatenate([[1], mask.astype(int), [1]]))
    starts, ends = np.where(edges == -1)[0], np.where(edges == 1)[0]
    out = y.double().numpy().copy()
    for row in out:
        for s, e in zip(starts, ends):
            before, after = row[max(0, s - context):s], row[e:e + context][::-1]
            fade = np.linspace(0, 1, e - s + 2)[1:-1]
            fwd = _extrapolate(before, e - s, order) if len(before) > order else np.zeros(e - s)
            bwd = _extrapolate(after, e - s, order)[::-1] if len(after) > order else np.zeros(e - s)
            row[s:e] = (1 - fade) * fwd + fade * bwd
    return torch.from_numpy(out).to(y.dtype)


@register("consistent_declip", task="clip", chunked=False, phase_coherent=True)
def consistent_declip(model, y: torch.Tensor, degradation) -> torch.Tensor:
    """Cubic-spline interpolation over clipped samples, then ``sign(y) clamp(|x|, level, 2 level)`` on them."""
    level = degradation.level
    out = y.double().numpy().copy()
    for row in out:
        clipped = np.abs(row) >= level * (1 - 1e-6)
        if not clipped.any() or clipped.all():
            continue
        idx = np.arange(row.size)
        spline = scipy.interpolate.CubicSpline(idx[~clipped], row[~clipped])
        guess = spline(idx[clipped])
        row[clipped] = np.sign(row[clipped]) * np.clip(np.abs(guess), level, 2 * level)
    return torch.from_numpy(out).to(y.dtype)
