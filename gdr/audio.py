"""Audio in and out, and AudioLDM2's exact log-mel front end.

The front end follows the original AudioLDM2 code (haoheliu/AudioLDM2,
``audioldm2/utilities/audio/{tools,stft}.py``; see ``shared/docs/audioldm2-frontend.md``):

* mono = channel 0 (``mono="first"``, the default, as AudioLDM2 does) or the channel mean;
* resampling to 16 kHz with ``torchaudio.functional.resample`` (windowed sinc, its defaults);
* loudness: remove the mean, scale the peak to 0.5, then once more ``0.5 * x / max|x|``;
* the waveform is clipped to [-1, 1] before the STFT (``get_mel_from_wav``: ``torch.clip(audio, -1, 1)``);
* STFT: periodic Hann window of 1024, hop 160, reflect padding of 512 on both sides, magnitude;
* Slaney mel filterbank, 64 bins, 0-8 kHz, Slaney area normalisation;
* natural log of ``clamp(mel, 1e-5)``; the centred STFT gives ``1 + N // 160`` frames, the first
  ``N // 160`` are kept (163 840 samples -> 1024 frames).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

from gdr.atomic import atomic_path
from gdr.errors import (
    AudioFileNotFoundError,
    EmptyAudioError,
    NonFiniteAudioError,
    SilentAudioError,
    TooShortAudioError,
    UnreadableAudioError,
)

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP_LENGTH = 160
N_MELS = 64
F_MAX = 8_000.0
LOG_FLOOR = 1e-5
PEAK = 0.5
# One analysis window: anything shorter has no meaningful STFT frame (and reflect padding fails).
MIN_SAMPLES = N_FFT
# -100 dBFS: below this the file is treated as digital silence; normalising it would only
# amplify dither or rounding noise by > 90 dB.
SILENCE_PEAK = 1e-5
# torchaudio.functional.resample's defaults (windowed sinc, Hann), which `read_resampled` relies on.
RESAMPLE_FILTER_WIDTH = 6
RESAMPLE_ROLLOFF = 0.99

MonoMode = Literal["first", "mean"]


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: ``frames`` (samples per channel), ``sample_rate`` in Hz, ``channels``."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def frames_16k(self) -> int:
        """Length at 16 kHz after `torchaudio.functional.resample` (its ``ceil(frames * new / orig)``)."""
        g = math.gcd(self.sample_rate, SAMPLE_RATE)
        return -(-self.frames * (SAMPLE_RATE // g) // (self.sample_rate // g))


def _unreadable(path: Path, exc: Exception) -> UnreadableAudioError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UnreadableAudioError(f"{path}: not readable as audio ({reason})")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioFileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise UnreadableAudioError(f"{path}: is a folder, not an audio file")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """The header of an audio file, without decoding its samples; a file soundfile cannot open raises, naming it."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def read_audio(path: str | os.PathLike, dtype: str = "float32", start: int = 0,
               stop: int | None = None) -> tuple[np.ndarray, int]:
    """Read any file soundfile can decode, or only its frames ``start .. stop - 1`` (seeking, not decoding the
    rest). Returns ``(samples (N, C) in `dtype`, sample_rate)``, full scale 1 (``float64`` holds every PCM code
    exactly, up to 32 bits)."""
    path = Path(path)
    _check_exists(path)
    try:
        data, sr = sf.read(str(path), dtype=dtype, always_2d=True, start=start, stop=stop)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    return data, int(sr)


def read_resampled(path: str | os.PathLike, info: AudioInfo, start: int, stop: int, *,
                   mono: MonoMode = "first") -> torch.Tensor:
    """Samples ``start .. stop - 1`` of a file's 16 kHz mono version, reading only the frames they depend on.

    Equal (up to float32 rounding of the convolution) to ``resample(mono(whole file))[start:stop]`` as
    `prepare_waveform` computes it before normalisation: torchaudio's windowed-sinc output ``j`` is
    ``kernel[j % new] . x[(j // new) * orig - width : (j // new) * orig + orig + width]`` (rates divided by
    their gcd), so reading from a multiple of ``orig`` that is ``width`` frames early and ``width`` frames late
    gives the same outputs; at the file's ends the block ends where the file does, with the same zero padding.

    Args:
        info: the file's `audio_info` (read once, at listing time).
        start, stop: ``0 <= start < stop <= info.frames_16k``, in 16 kHz samples.

    Returns:
        ``(stop - start,)`` float32, not normalised, not checked for silence (callers decide).
    """
    sr = info.sample_rate
    if sr == SAMPLE_RATE:
        data, _ = read_audio(path, start=start, stop=stop)
        return _to_mono(torch.from_numpy(data), mono)
    g = math.gcd(sr, SAMPLE_RATE)
    orig, new = sr // g, SAMPLE_RATE // g
    width = math.ceil(RESAMPLE_FILTER_WIDTH * orig / (min(orig, new) * RESAMPLE_ROLLOFF))  # torchaudio's, in frames
    first = max(0, start // new - math.ceil(width / orig))  # conv output step the block starts at
    a = first * orig
    b = min(info.frames, ((stop - 1) // new) * orig + orig + width + 1)
    data, _ = read_audio(path, start=a, stop=b)
    x = torchaudio.functional.resample(_to_mono(torch.from_numpy(data), mono), orig_freq=sr, new_freq=SAMPLE_RATE)
    offset = first * new  # 16 kHz index of the block's first output
    return x[start - offset:stop - offset]


def _to_mono(x: torch.Tensor, mono: MonoMode) -> torch.Tensor:
    """``(N, C)`` -> ``(N,)``: channel 0 or the channel mean."""
    return x[:, 0] if mono == "first" else x.mean(dim=1)


def prepare_waveform(
    samples: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    mono: MonoMode = "first",
    name: str = "audio",
) -> torch.Tensor:
    """Turn raw samples into AudioLDM2's input: 16 kHz mono float32, mean 0, peak 0.5.

    Args:
        samples: ``(N,)`` or ``(N, C)`` samples (soundfile layout), any sample rate.
        sample_rate: rate of `samples` in Hz.
        mono: ``"first"`` keeps channel 0 (AudioLDM2's choice), ``"mean"`` averages channels.
        name: used in error messages (usually the file path).

    Returns:
        ``(N',)`` float32 waveform at 16 kHz.
    """
    x = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise UnreadableAudioError(f"{name}: expected (samples, channels), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise EmptyAudioError(f"{name}: the audio is empty (0 samples)")
    if not torch.isfinite(x).all():
        raise NonFiniteAudioError(f"{name}: the audio contains NaN or Inf samples")
    if sample_rate <= 0:
        raise UnreadableAudioError(f"{name}: invalid sample rate {sample_rate}")
    channels = x
    x = _to_mono(x, mono)
    if sample_rate != SAMPLE_RATE:
        x = torchaudio.functional.resample(x, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    if x.numel() < MIN_SAMPLES:
        raise TooShortAudioError(
            f"{name}: {x.numel()} samples at 16 kHz is shorter than one frame ({MIN_SAMPLES} samples, 64 ms)"
        )
    if _abs_max(x - x.mean()) < SILENCE_PEAK:
        raise SilentAudioError(_why_silent(name, x, channels, mono))
    return normalize_loudness(x)


def _dbfs(peak: float) -> str:
    return f"{20 * np.log10(max(peak, 1e-12)):.0f} dBFS"


def _why_silent(name: str, x: torch.Tensor, channels: torch.Tensor, mono: MonoMode) -> str:
    """The one-line reason a waveform with nothing left after mean removal is rejected.

    `x`: ``(N,)`` the mono signal that failed; `channels`: ``(N0, C)`` the samples as read.
    """
    others = (channels - channels.mean(dim=0)).abs().amax(dim=0)  # (C,) peak of each channel after mean removal
    if mono == "first" and channels.shape[1] > 1 and bool((others[1:] >= SILENCE_PEAK).any()):
        return (f"{name}: channel 0 is silent but other channels are not ({channels.shape[1]} channels); "
                "gdr keeps channel 0 as AudioLDM2 does: pass --data.mono mean to average the channels")
    if x.abs().max() >= SILENCE_PEAK:
        peak = _dbfs(float(x.abs().max()))
        return (f"{name}: the audio is a constant (DC only, value {float(x.mean()):.3g}, peak {peak}): "
                "after AudioLDM2's mean removal nothing is left")
    return f"{name}: the audio is silent (peak below -100 dBFS)"


def normalize_loudness(x: torch.Tensor) -> torch.Tensor:
    """AudioLDM2's ``normalize_wav`` plus its second peak scaling. ``x``: ``(..., N)``; same shape.

    The second pass is a no-op up to the first pass's 1e-8 epsilon; it is kept so the result is
    bit-for-bit the original recipe.
    """
    # One new buffer, scaled in place: the same operations in the same order as
    # ``x = x - mean; x = PEAK * x / (max|x| + 1e-8); PEAK * x / max|x|``, so the same bits, without a
    # whole-signal temporary per step (loading a 10 min file: +103 MB high-water mark instead of +154 MB).
    x = x - x.mean(dim=-1, keepdim=True)  # a new tensor: the caller's samples are left alone
    peak = _abs_max(x) + 1e-8  # taken before the product, as in the recipe
    x.mul_(PEAK).div_(peak)
    peak = _abs_max(x)
    return x.mul_(PEAK).div_(peak)


def _abs_max(x: torch.Tensor) -> torch.Tensor:
    """``x.abs().amax(dim=-1, keepdim=True)`` exactly (negation is exact), without an ``abs`` copy of `x`."""
    return torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg())


def load_audio(path: str | os.PathLike, *, mono: MonoMode = "first") -> torch.Tensor:
    """Load, check and normalise one audio file. Returns ``(N,)`` float32 at 16 kHz (peak 0.5)."""
    data, sr = read_audio(path)
    return prepare_waveform(data, sr, mono=mono, name=str(path))


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono ``(N,)`` waveform as a 32-bit float wav, atomically."""
    data = np.asarray(torch.as_tensor(waveform).detach().float().cpu()).reshape(-1)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sample_rate, format="WAV", subtype="FLOAT")


@functools.lru_cache(maxsize=1)
def _mel_filterbank_f64() -> torch.Tensor:
    # torchaudio builds its frequency grids in the default dtype; in float32 the weights are off
    # by ~1e-7 relative, which shows as 5e-6 in float64 log-mels. Build them once in float64.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # (n_freqs, n_mels); Slaney scale + Slaney norm == librosa.filters.mel defaults.
        return torchaudio.functional.melscale_fbanks(
            n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=F_MAX, n_mels=N_MELS, sample_rate=SAMPLE_RATE,
            norm="slaney", mel_scale="slaney",
        )
    finally:
        torch.set_default_dtype(previous)


@functools.lru_cache(maxsize=8)
def _mel_filterbank(dtype: torch.dtype, device: str) -> torch.Tensor:
    return _mel_filterbank_f64().to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=8)
def _window(dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=device)


def num_frames(num_samples: int) -> int:
    """Mel frames AudioLDM2 keeps for `num_samples` samples: ``num_samples // 160``."""
    return num_samples // HOP_LENGTH


def log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """AudioLDM2's log-mel spectrogram.

    Args:
        waveform: ``(B, N)`` float32 (or float64) at 16 kHz, ``N >= 513`` (reflect padding). Samples
            beyond +-1 are clipped to +-1 first, as AudioLDM2 does.

    Returns:
        ``(B, 1, N // 160, 64)`` natural-log mel magnitudes, floor ``ln(1e-5) = -11.5129``, in
        the dtype of `waveform`. Differentiable: the gradient passes unchanged through samples inside
        [-1, 1] and is zero for clipped samples.
    """
    if waveform.ndim != 2:
        raise ValueError(f"log_mel expects (B, N), got shape {tuple(waveform.shape)}")
    device = str(waveform.device)
    # AudioLDM2's get_mel_from_wav clips before its STFT (torch.clip(audio, -1, 1)); normalised clips peak
    # at 0.5, but a guided estimate, a noisy measurement or a method's output can exceed full scale.
    waveform = torch.clamp(waveform, -1.0, 1.0)
    spec = torch.stft(
        waveform,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=N_FFT,
        window=_window(waveform.dtype, device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()  # (B, 513, 1 + N // 160)
    mel = torch.einsum("bft,fm->btm", spec, _mel_filterbank(waveform.dtype, device))  # (B, frames, 64)
    mel = mel[:, : num_frames(waveform.shape[-1])]
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).unsqueeze(1)


def stft_frames(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, start: int, stop: int,
                prepare=None) -> torch.Tensor:
    """Frames ``start .. stop - 1`` of ``torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="reflect")``,
    computed from only the samples they cover, so a long signal can be analysed block by block with memory that
    does not grow with its length (`gdr.metrics.score`, the report's spectrograms).

    Args:
        x: ``(N,)`` waveform, ``N > n_fft // 2`` (reflect padding).
        window: ``(win,)``, ``win <= n_fft`` (zero-padded to ``n_fft`` in the middle, as torch.stft does).
        prepare: an elementwise map applied to the samples first (e.g. a dtype cast or clipping), on the
            block's samples only.

    Returns:
        ``(n_fft // 2 + 1, stop - start)`` complex spectrum, equal to the whole-signal call's columns.
    """
    n, pad = x.shape[-1], n_fft // 2
    a, b = start * hop, (stop - 1) * hop + n_fft  # the frames' span in the padded signal
    if a >= pad and b - pad <= n:
        segment = x[a - pad:b - pad]
    else:  # at an edge: torch's reflect padding (the edge sample itself is not repeated)
        index = (torch.arange(a, b, device=x.device) - pad).abs()
        segment = x[torch.where(index > n - 1, 2 * (n - 1) - index, index)]
    if prepare is not None:
        segment = prepare(segment)
    return torch.stft(segment, n_fft, hop, window.shape[-1], window=window, center=False, return_complex=True)


def frame_blocks(frames: int, block: int):
    """``(start, stop)`` pairs covering ``range(frames)`` in blocks of at most `block` frames."""
    return [(s, min(s + block, frames)) for s in range(0, frames, block)]


def log_mel_frames(waveform: torch.Tensor, start: int, stop: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Frames ``start .. stop - 1`` of ``log_mel(waveform[None].to(dtype))[0, 0]``: ``(stop - start, 64)``, from
    only the samples they cover (`stft_frames`; only they are cast to `dtype`, default the waveform's).
    `waveform`: ``(N,)``; ``stop <= num_frames(N)``."""
    device, dtype = str(waveform.device), dtype or waveform.dtype
    spec = stft_frames(waveform, N_FFT, HOP_LENGTH, _window(dtype, device), start, stop,
                       prepare=lambda s: torch.clamp(s.to(dtype), -1.0, 1.0)).abs()  # clipped first, as log_mel
    mel = spec.T @ _mel_filterbank(dtype, device)  # (frames, 64)
    return torch.log(torch.clamp(mel, min=LOG_FLOOR))


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, format: str, subtype: str) -> None:
    """Write ``(N, C)`` float64 samples (full scale 1) in `format` / `subtype` (soundfile's names), atomically.

    PCM subtypes round to the nearest code and saturate at full scale (libsndfile), so a float64 sample read
    from a PCM file is written back to the same code, bit for bit.
    """
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, sample_rate, format=format, subtype=subtype)
