"""Where clips come from: a folder of audio files, or built-in procedurally generated demo clips.

Every clip is validated and normalised (``gdr.audio.prepare_waveform``) before any model work
starts, so one bad file stops a run before anything is written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from gdr.audio import SAMPLE_RATE, MonoMode, load_audio, prepare_waveform
from gdr.errors import AudioFileNotFoundError, ConfigError

# Extensions soundfile (libsndfile >= 1.1) reads; other files in a data folder are ignored.
AUDIO_EXTENSIONS = frozenset(f".{ext.lower()}" for ext in sf.available_formats()) | {".mp3", ".oga", ".opus"}


@dataclass
class Clip:
    """One input clip. ``waveform``: ``(N,)`` float32 at 16 kHz, mean 0, peak 0.5."""

    name: str
    waveform: torch.Tensor
    source: str


def list_audio_files(root: str | os.PathLike) -> list[Path]:
    """Audio files under `root` (recursively, sorted). Raises if the folder is missing or has none."""
    root = Path(root)
    if not root.exists():
        raise AudioFileNotFoundError(f"{root}: no such folder")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ConfigError(f"{root}: no audio files found (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
    return files


def load_folder(root: str | os.PathLike, *, mono: MonoMode = "first") -> list[Clip]:
    """Load and validate every audio file under `root`; the first bad file raises, naming it."""
    root = Path(root)
    files = list_audio_files(root)
    base = root if root.is_dir() else root.parent
    clips = []
    for path in files:
        name = path.relative_to(base).with_suffix("").as_posix().replace("/", "__")
        clips.append(Clip(name=name, waveform=load_audio(path, mono=mono), source=str(path)))
    return clips


def demo_clips(seconds: float = 6.0, seed: int = 0) -> list[Clip]:
    """Four synthetic clips covering tonal, transient, swept and noisy content.

    ``tone_vibrato`` (harmonic tone, 5.5 Hz vibrato), ``drums`` (decaying noise and pitched
    thumps), ``chirp`` (100 Hz -> 7 kHz exponential sweep), ``noise_bursts`` (band-limited noise
    bursts in silence). Deterministic for a given `seed`.
    """
    if not 0.1 <= seconds <= 600:
        raise ConfigError(f"demo clip length must be in [0.1, 600] s, got {seconds}")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE

    phase = 2 * np.pi * np.cumsum(220.0 * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 9)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t) ** 2)

    drums = np.zeros(n)
    for start in np.arange(0.0, seconds, 0.25):
        i = int(start * SAMPLE_RATE)
        m = min(n - i, SAMPLE_RATE // 4)
        tau = np.arange(m) / SAMPLE_RATE
        if int(start / 0.25) % 2 == 0:  # kick: pitch-dropping sine
            drums[i:i + m] += np.sin(2 * np.pi * (60 + 90 * np.exp(-tau * 30)) * tau) * np.exp(-tau * 12)
        else:  # snare/hat: decaying noise
            drums[i:i + m] += 0.5 * rng.standard_normal(m) * np.exp(-tau * 40)

    f0, f1 = 100.0, 7000.0
    k = math.log(f1 / f0) / max(seconds, 1e-3)
    chirp = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)

    bursts = 1e-4 * rng.standard_normal(n)  # a -80 dB noise floor, as real recordings have
    for start in np.arange(0.1, seconds, 0.7):
        i, m = int(start * SAMPLE_RATE), int(0.3 * SAMPLE_RATE)
        seg = rng.standard_normal(min(m, n - i))
        bursts[i:i + len(seg)] += np.convolve(seg, np.ones(4) / 4, mode="same") * np.hanning(len(seg))

    signals = {"tone_vibrato": tone, "drums": drums, "chirp": chirp, "noise_bursts": bursts}
    return [Clip(name, prepare_waveform(sig.astype(np.float32), SAMPLE_RATE, name=f"demo:{name}"), f"demo:{name}")
            for name, sig in signals.items()]
