"""Where clips come from: a folder of audio files, or built-in procedurally generated demo clips.

Every clip is validated and normalised (``gdr.audio.prepare_waveform``) before any model work
starts, so one bad file stops a run before anything is written.

Every clip has a ``kind`` (`CLIP_KINDS`: speech, music, sound, other) that decides which metrics apply to it
(speech metrics only to speech, `gdr.speech_metrics.applicable`). Where it comes from, first match wins: the
``kind`` column of ``manifest.csv`` in the data folder (columns ``path,kind``, paths relative to the folder);
the nearest enclosing folder named like a kind (``speech/``, ``music/``, ``sound/``, the data folder itself
included); ``data.kind``; else ``other``. See ``data/README.md``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from gdr import checks
from gdr.audio import SAMPLE_RATE, MonoMode, load_audio, prepare_waveform
from gdr.errors import AudioFileNotFoundError, ConfigError
from gdr.file_lists import read_file_list

MANIFEST = "manifest.csv"

# Extensions soundfile (libsndfile >= 1.1) reads; other files in a data folder are ignored.
AUDIO_EXTENSIONS = frozenset(f".{ext.lower()}" for ext in sf.available_formats()) | {".mp3", ".oga", ".opus"}


CLIP_KINDS = ("speech", "music", "sound", "other")  # decides which metrics apply (`gdr.speech_metrics.applicable`)


@dataclass
class Clip:
    """One input clip. ``waveform``: ``(N,)`` float32 at 16 kHz, mean 0, peak 0.5."""

    name: str
    waveform: torch.Tensor
    source: str
    kind: str = "other"  # one of CLIP_KINDS: decides which metrics apply


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


def _check_kind(kind: str, where: str) -> str:
    if kind not in CLIP_KINDS:
        raise ConfigError(f"{where}: unknown clip kind {kind!r}; known: {', '.join(CLIP_KINDS)}")
    return kind


def read_manifest(base: Path) -> dict[Path, str]:
    """``{resolved audio path: kind}`` from ``base/manifest.csv`` (columns ``path`` and ``kind``; others are
    ignored), or ``{}`` without one. A missing column, an unknown kind or a path that is no file raises
    `ConfigError` naming the manifest and its line."""
    manifest = base / MANIFEST
    if not manifest.is_file():
        return {}
    kinds = {}
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"path", "kind"} <= set(reader.fieldnames or ()):
            raise ConfigError(f"{manifest}: needs the columns path and kind, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            where = f"{manifest}, line {line}"
            path = (base / (row["path"] or "").strip()).resolve()
            if not path.is_file():
                raise ConfigError(f"{where}: {row['path']!r} is not a file under {base}")
            kinds[path] = _check_kind((row["kind"] or "").strip(), where)
    return kinds


def read_captions(base: Path) -> dict[Path, str]:
    """``{resolved audio path: caption}`` from the optional ``caption`` column of ``base/manifest.csv`` (training's
    per-item text condition, ``item_condition: caption``); ``{}`` without a manifest or that column."""
    manifest = base / MANIFEST
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        if "caption" not in (reader.fieldnames or ()):
            return {}
        return {(base / (row["path"] or "").strip()).resolve(): (row["caption"] or "").strip() for row in reader}


def clip_kind(path: Path, base: Path, manifest: dict[Path, str], default: str | None = None) -> str:
    """The kind of the file `path` under `base`: manifest, else nearest folder named like a kind (up to and
    including `base`), else `default`, else ``other``."""
    if path.resolve() in manifest:
        return manifest[path.resolve()]
    folder = path.parent
    while True:
        if folder.name in CLIP_KINDS:
            return folder.name
        if folder == base or folder == folder.parent:
            break
        folder = folder.parent
    return _check_kind(default, "data.kind") if default is not None else "other"


def load_folder(root: str | os.PathLike | None, *, mono: MonoMode = "first", kind: str | None = None,
                files: str | os.PathLike | None = None) -> list[Clip]:
    """Load and validate every audio file under `root`, or exactly those a file list names; the first bad file
    raises, naming it.

    `files`: a list in `gdr.file_lists` format (e.g. a training run's ``val.txt``), relative paths resolved
    against `root`; it is loaded in its own order. Each clip's `Clip.kind` comes from `clip_kind` (`kind` is
    the default for files nothing else marks)."""
    if files is not None:
        paths = read_file_list(files, root)
        base = Path(root) if root is not None else Path(files).parent
    else:
        root = Path(root)
        paths = list_audio_files(root)
        base = root if root.is_dir() else root.parent
    return _load_files(paths, base, mono, kind)


def _load_files(files: list[Path], base: Path, mono: MonoMode, kind: str | None) -> list[Clip]:
    manifest = read_manifest(base)
    clips = []
    for path in files:
        # A listed file outside the root (an absolute line) is named by its own file name.
        relative = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
        name = relative.with_suffix("").as_posix().replace("/", "__")
        clips.append(Clip(name=name, waveform=load_audio(path, mono=mono), source=str(path),
                          kind=clip_kind(path, base, manifest, kind)))
    return clips


def demo_clips(seconds: float = 6.0, seed: int = 0) -> list[Clip]:
    """Four synthetic clips covering tonal, transient, swept and noisy content.

    ``tone_vibrato`` (harmonic tone, 5.5 Hz vibrato), ``drums`` (decaying noise and pitched
    thumps), ``chirp`` (100 Hz -> 7 kHz exponential sweep), ``noise_bursts`` (band-limited noise
    bursts in silence). Deterministic for a given `seed`.
    """
    checks.number("demo clip length (s)", seconds, low=0.1, high=600)
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
    kinds = {"tone_vibrato": "music", "drums": "music", "chirp": "other", "noise_bursts": "sound"}  # none is speech
    return [Clip(name, prepare_waveform(sig.astype(np.float32), SAMPLE_RATE, name=f"demo:{name}"), f"demo:{name}",
                 kinds[name]) for name, sig in signals.items()]
