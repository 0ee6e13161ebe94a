"""Damage estimation: read each restore task's measurement operator from a damaged recording itself.

Pure numpy/scipy, no model: ``gdr restore --dry-run`` runs only this. Every detector takes the recording
at its native rate, ``x`` ``(N, C)`` float64 in [-1, 1] (soundfile's layout) and its rate in Hz, and returns a
`Damage`: what it found (one line, `Damage.summary`), the native-rate unreliable samples where the task has a
sample subset (declip, inpaint), and the parameters of the 16 kHz operator the model is guided by
(`Damage.operator`, built with `gdr.degradations.build_degradation`).

* ``declip``: per channel and polarity, the extreme value, if hard clipping left it at ``MIN_CLIPPED`` or
  more samples, or in a run of three or more (an unclipped peak is one sample, rarely two equal codes); the
  clipped set is every sample at or beyond that level. Override: one symmetric level (``clip_level``).
* ``bwe``: the highest frequency with content, found as the sharpest step down to the spectrum's floor
  (``CONTRAST_DB`` or more within a few hundred Hz, which a natural roll-off never has). Override: ``cutoff_hz``.
* ``inpaint``: dropouts, runs of one repeated value (digital silence or a stuck sample) of at least
  ``min_gap_ms`` that neither start nor end the file (leading and trailing silence are not dropouts: nothing
  on the other side to restore from); or the spans of an Audacity label file (``start end [label]`` in seconds).
* ``denoise``: the noise power is the mean power of the quietest 10 % of 20 ms frames (speech pauses, rests);
  the SNR is the rest of the power against it. Override: ``snr_db``.
* ``reconstruct``: no measurement, nothing to detect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gdr import checks
from gdr.errors import ConfigError, EmptyAudioError, NonFiniteAudioError, SilentAudioError
from gdr.registry import Registry

MODEL_RATE = 16_000
MODEL_BAND_HZ = MODEL_RATE / 2  # the model produces nothing above 8 kHz
SILENCE_PEAK = 1e-5  # -100 dBFS, as gdr.audio: below this a file is digital silence
MIN_CLIPPED = 4  # samples at the extreme before a level counts as clipping
CONTRAST_DB = 25.0  # a band edge: the spectrum falls this far, to its floor, within EDGE_HZ
EDGE_HZ = 500.0
NOISE_FRAME_S, QUIET_FRACTION = 0.02, 0.10
NOISE_FLOOR_DBFS = -90.0  # quieter than 16-bit dither: no noise worth removing
NOISE_SNR_DB = 60.0  # cleaner than this: no noise worth removing
# The 16 kHz model input is torchaudio's windowed-sinc resampling (6 zero crossings, rolloff 0.99): a native
# sample reaches ceil(6 / 0.99) = 7 output samples either side; one more for rounding.
RESAMPLE_REACH_16K = 8

TASKS = ("declip", "bwe", "inpaint", "denoise", "reconstruct")
DETECTORS = Registry("restore task")


@dataclass
class DetectionConfig:
    """How each task reads the damage, and overrides of what it would find.

    clip_level: declip's level (full scale = 1), both polarities; null = detect per channel and polarity.
    cutoff_hz: bwe's band edge in Hz; null = detect from the spectrum.
    min_gap_ms: inpaint's shortest dropout (a run of one repeated value); labels: an Audacity label file of
    the gaps (``start end [label]`` per line, seconds) instead of detecting them.
    snr_db: denoise's signal-to-noise ratio; null = estimate from the quietest frames.
    force: run the model even when nothing was found (otherwise the file is copied through unchanged).
    """

    clip_level: float | None = None
    cutoff_hz: float | None = None
    min_gap_ms: float = 20.0
    labels: str | None = None
    snr_db: float | None = None
    force: bool = False

    def __post_init__(self):
        if self.clip_level is not None:
            checks.positive("clip_level", self.clip_level)
        if self.cutoff_hz is not None:
            checks.positive("cutoff_hz", self.cutoff_hz)
        checks.positive("min_gap_ms", self.min_gap_ms)
        if self.snr_db is not None:
            checks.number("snr_db", self.snr_db, low=-30.0, high=80.0)


@dataclass
class Damage:
    """What a detector found in one recording.

    Attributes:
        task: the restore task.
        found: whether there is anything to restore.
        summary: one line, e.g. ``declip: clipped at +0.300/-0.300, 1 532 samples (3.5 %)``.
        unreliable: ``(N, C)`` bool, True where the recording is unreliable (declip, inpaint); None where the
            task has no sample subset (bwe: a band; denoise, reconstruct: everything).
        operator: the 16 kHz degradation the model is guided by (``build_degradation`` spec) without the
            sample positions, which `operator_for` adds per model channel.
        params: what was measured (levels, cutoff, gaps, noise), for tests and summaries.
    """

    task: str
    found: bool
    summary: str
    unreliable: np.ndarray | None = None
    operator: dict = field(default_factory=lambda: {"name": "identity"})
    params: dict = field(default_factory=dict)

    def operator_for(self, unreliable: np.ndarray | None, sample_rate: int, num_samples_16k: int) -> dict:
        """The operator spec for one model channel whose native-rate unreliable samples are `unreliable` ``(N,)``.

        Sample-subset tasks become ``gaps`` with explicit spans on the 16 kHz grid, dilated so that no 16 kHz
        sample the resampler computed from an unreliable native sample is taken as reliable.
        """
        if self.operator["name"] != "gaps":
            return dict(self.operator)
        mask = to_model_rate(unreliable, sample_rate, num_samples_16k)
        starts, ends = runs(mask)
        spans = [[s / MODEL_RATE, e / MODEL_RATE] for s, e in zip(starts.tolist(), ends.tolist())]
        return {"name": "gaps", "spans": spans}


def check_audio(x: np.ndarray, name: str = "audio") -> None:
    """One line for audio no task can work on: empty, NaN/Inf, or digital silence."""
    if x.size == 0:
        raise EmptyAudioError(f"{name}: the audio is empty (0 samples)")
    if not np.isfinite(x).all():
        raise NonFiniteAudioError(f"{name}: the audio contains NaN or Inf samples")
    if np.abs(x - x.mean(axis=0)).max() < SILENCE_PEAK:
        raise SilentAudioError(f"{name}: the audio is silent (peak below -100 dBFS): there is nothing to restore")


def detect(task: str, x: np.ndarray, sample_rate: int, config: DetectionConfig | None = None,
           name: str = "audio") -> Damage:
    """Run `task`'s detector on `x` ``(N, C)`` (or ``(N,)``) float64 at `sample_rate` Hz."""
    config = config or DetectionConfig()
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    check_audio(x, name)
    return DETECTORS.get_factory(task)(x, sample_rate, config)


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the runs of True in a 1-D bool `mask` (``ends`` exclusive)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def to_model_rate(unreliable: np.ndarray, sample_rate: int, num_samples_16k: int) -> np.ndarray:
    """``(N,)`` native-rate unreliable samples -> ``(num_samples_16k,)`` 16 kHz ones, conservatively.

    A 16 kHz sample is unreliable when an unreliable native sample lies within `RESAMPLE_REACH_16K` of it.
    """
    out = np.zeros(num_samples_16k, dtype=bool)
    scale = MODEL_RATE / sample_rate
    for s, e in zip(*runs(unreliable)):
        lo = max(0, math.floor(s * scale) - RESAMPLE_REACH_16K)
        hi = min(num_samples_16k, math.ceil((e - 1) * scale) + 1 + RESAMPLE_REACH_16K)
        out[lo:hi] = True
    return out


def _percent(count: int, total: int) -> str:
    return f"{100 * count / max(total, 1):.2g} %"


# ------------------------------------------------------------------------------------------ declip
@DETECTORS.register("declip")
def detect_clipping(x: np.ndarray, sample_rate: int, config: DetectionConfig) -> Damage:
    """Clipped samples: per channel and polarity, the samples at the extreme value (module docstring)."""
    unreliable = np.zeros(x.shape, dtype=bool)
    levels: list[list[float | None]] = []
    for c in range(x.shape[1]):
        v = x[:, c]
        pair: list[float | None] = []
        for sign in (1.0, -1.0):
            s = sign * v  # the polarity under test as the positive side
            level = config.clip_level if config.clip_level is not None else float(s.max())
            tol = 1e-7 * abs(level)  # below one 24-bit step at full scale: equal codes only
            at = s >= level - tol
            count = int(at.sum())
            starts, ends = runs(at)
            longest = int((ends - starts).max()) if count else 0
            clipped = count > 0 if config.clip_level is not None else (level > 0 and (count >= MIN_CLIPPED
                                                                                      or longest >= 3))
            if clipped:
                unreliable[:, c] |= at
            pair.append(sign * level if clipped else None)
        levels.append(pair)
    count = int(unreliable.sum())
    params = {"levels": levels, "count": count}
    if not count:
        what = (f"no samples at or beyond the level {config.clip_level:g} (peak {np.abs(x).max():.3g})"
                if config.clip_level is not None else "no clipping found (no run of samples at a constant extreme)")
        return Damage("declip", False, f"declip: {what}", unreliable, params=params)
    shown = []
    for c, (high, low) in enumerate(levels):
        if high is None and low is None:
            continue
        text = "/".join(f"{v:+.4g}" for v in (high, low) if v is not None)
        shown.append(f"ch{c} {text}" if x.shape[1] > 1 else text)
    summary = (f"declip: clipped at {', '.join(shown)}; {count} samples ({_percent(count, unreliable.size)}) "
               "are unreliable")
    return Damage("declip", True, summary, unreliable, {"name": "gaps"}, params)


# ------------------------------------------------------------------------------------------ bwe
def spectrum_db(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(freqs (F,) Hz, level (F,) dB)``: Welch power spectrum, averaged over channels, ~5 Hz resolution."""
    from scipy.signal import welch

    nperseg = min(2 ** math.ceil(math.log2(sample_rate / 5)), 2 ** int(math.log2(x.shape[0])))
    freqs, psd = welch(x - x.mean(axis=0), fs=sample_rate, nperseg=nperseg, axis=0)
    return freqs, 10 * np.log10(psd.mean(axis=1) + 1e-30)


@DETECTORS.register("bwe")
def detect_cutoff(x: np.ndarray, sample_rate: int, config: DetectionConfig) -> Damage:
    """The band edge: the frequency where the spectrum steps down to its floor (module docstring)."""
    nyquist = sample_rate / 2
    if config.cutoff_hz is not None:
        if config.cutoff_hz >= nyquist:
            raise ConfigError(f"cutoff_hz {config.cutoff_hz:g} is at or above the Nyquist frequency of the file "
                              f"({nyquist:g} Hz at {sample_rate} Hz)")
        return _band_damage(config.cutoff_hz, sample_rate, "given")
    freqs, level = spectrum_db(x, sample_rate)
    df = freqs[1] - freqs[0]
    window = max(1, int(round(100 / df)))  # 100 Hz power average: harmonic combs read as a band
    smooth = 10 * np.log10(np.convolve(10 ** (level / 10), np.ones(window) / window, mode="same") + 1e-30)
    edge = max(2, int(round(EDGE_HZ / df)))
    candidates = np.flatnonzero((freqs >= 2 * EDGE_HZ) & (freqs <= 0.97 * nyquist))
    best, best_contrast = None, -np.inf
    for k in candidates[:: max(1, int(round(20 / df)))]:  # a 20 Hz grid for the coarse search
        below = np.median(smooth[k - edge:k])
        above = np.percentile(smooth[k:], 95)  # the strongest content above, robust to a stray tone
        if below - above > best_contrast:
            best, best_contrast = k, below - above
    if best is None or best_contrast < CONTRAST_DB:
        return Damage("bwe", False, "bwe: no band edge found (the spectrum has no step down to a floor)",
                      params={"cutoff_hz": None, "contrast_db": float(best_contrast)})
    # Refine on the raw spectrum: the highest bin near the step above the middle (in dB) of band and floor.
    floor = np.median(smooth[min(best + edge, len(smooth) - 1):]) if best + edge < len(smooth) else smooth[-1]
    band = np.median(smooth[max(0, best - 2 * edge):best - edge // 2])
    near = np.flatnonzero((np.abs(freqs - freqs[best]) <= 2 * EDGE_HZ) & (level > (band + floor) / 2))
    cutoff = float(freqs[near.max()]) if near.size else float(freqs[best])
    return _band_damage(cutoff, sample_rate, f"detected, {band - floor:.0f} dB above the floor")


def _band_damage(cutoff: float, sample_rate: int, how: str) -> Damage:
    params = {"cutoff_hz": cutoff}
    if cutoff >= MODEL_BAND_HZ:
        return Damage("bwe", False, f"bwe: the band reaches {cutoff / 1000:.2f} kHz ({how}); the model produces "
                      f"only up to {MODEL_BAND_HZ / 1000:g} kHz: nothing to restore", params=params)
    summary = (f"bwe: band-limited at {cutoff:.0f} Hz ({how}); {cutoff:.0f}-{MODEL_BAND_HZ:.0f} Hz will be "
               "generated" + ("" if sample_rate <= MODEL_RATE else f", above {MODEL_BAND_HZ:.0f} Hz stays empty"))
    return Damage("bwe", True, summary, None, {"name": "lowpass", "cutoff_hz": cutoff}, params)


# ------------------------------------------------------------------------------------------ inpaint
def read_labels(path: str | Path, duration: float) -> list[tuple[float, float]]:
    """Gaps from an Audacity label file: ``start<TAB>end[<TAB>label]`` per line, in seconds.

    Lines starting with a backslash (Audacity's spectral-selection lines) and blank lines are skipped; a point
    label (start = end) marks nothing. One-line `ConfigError` for a line that is not two numbers, a span that
    ends before it starts, or one past the end of a file of `duration` seconds.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels {path}: not readable ({getattr(exc, 'strerror', None) or exc})") from None
    spans = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("\\"):
            continue
        fields = line.split()
        try:
            start, end = float(fields[0]), float(fields[1])
        except (IndexError, ValueError):
            raise ConfigError(f"labels {path} line {number}: expected 'start end [label]' in seconds, "
                              f"got {line.strip()!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ConfigError(f"labels {path} line {number}: the span {start:g}-{end:g} s is not a time span")
        if end > duration + 1e-9:
            raise ConfigError(f"labels {path} line {number}: the gap {start:g}-{end:g} s ends past the end of "
                              f"the file ({duration:.3f} s)")
        if end > start:
            spans.append((start, end))
    return spans


@DETECTORS.register("inpaint")
def detect_gaps(x: np.ndarray, sample_rate: int, config: DetectionConfig) -> Damage:
    """Dropouts (runs of one repeated value, inside the file) or the spans of a label file (module docstring)."""
    n = x.shape[0]
    unreliable = np.zeros(x.shape, dtype=bool)
    gaps: list[tuple[int, int]] = []
    if config.labels is not None:
        for start, end in read_labels(config.labels, n / sample_rate):
            # Every sample the span touches; the 1e-6 keeps whole-sample times (k / rate s) on sample k.
            a, b = int(math.floor(start * sample_rate + 1e-6)), min(n, int(math.ceil(end * sample_rate - 1e-6)))
            unreliable[a:b] = True
        how = f"from {Path(config.labels).name}"
    else:
        shortest = max(2, int(round(config.min_gap_ms * sample_rate / 1000)))
        for c in range(x.shape[1]):
            same = np.concatenate([[False], x[1:, c] == x[:-1, c]])  # equal to the previous sample
            for s, e in zip(*runs(same)):
                s -= 1  # the run's first value is the sample before the first repeat
                if e - s >= shortest and s > 0 and e < n:
                    unreliable[s:e, c] = True
        how = f"runs of one value >= {config.min_gap_ms:g} ms"
    starts, ends = runs(unreliable.any(axis=1))
    gaps = list(zip(starts.tolist(), ends.tolist()))
    params = {"gaps": gaps}
    if unreliable.all(axis=0).any():
        raise ConfigError("inpaint: the gaps cover the whole file: there is nothing to restore from")
    if not gaps:
        return Damage("inpaint", False, f"inpaint: no dropouts found ({how})", unreliable, params=params)
    total = int(sum(e - s for s, e in gaps))
    shown = ", ".join(f"{s / sample_rate:.3f}-{e / sample_rate:.3f}" for s, e in gaps[:4])
    more = f" and {len(gaps) - 4} more" if len(gaps) > 4 else ""
    summary = (f"inpaint: {len(gaps)} gap(s) ({how}) at {shown} s{more}, {1000 * total / sample_rate:.0f} ms "
               f"({_percent(total, n)})")
    return Damage("inpaint", True, summary, unreliable, {"name": "gaps"}, params)


# ------------------------------------------------------------------------------------------ denoise
def noise_power(x: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """``(noise power, total power)`` (mean squares, full scale = 1) from the quietest frames (module docstring)."""
    x = x - x.mean(axis=0)
    frame = max(16, int(round(NOISE_FRAME_S * sample_rate)))
    usable = (x.shape[0] // frame) * frame
    if usable == 0:
        p = float(np.mean(x ** 2))
        return p, p
    powers = np.mean(x[:usable].reshape(-1, frame, x.shape[1]) ** 2, axis=(1, 2))  # (frames,)
    quiet = np.sort(powers)[: max(1, int(round(QUIET_FRACTION * powers.size)))]
    return float(quiet.mean()), float(np.mean(x ** 2))


@DETECTORS.register("denoise")
def detect_noise(x: np.ndarray, sample_rate: int, config: DetectionConfig) -> Damage:
    """The noise level from the quietest frames, and the SNR it implies (module docstring)."""
    noise, total = noise_power(x, sample_rate)
    noise_db = 10 * math.log10(max(noise, 1e-30))
    if config.snr_db is not None:
        snr, how = float(config.snr_db), "given"
        noise_db = 10 * math.log10(total / (1 + 10 ** (snr / 10)))
    else:
        snr = 10 * math.log10(max(total - noise, 1e-30) / max(noise, 1e-30))
        how = "from the quietest 10 % of 20 ms frames"
    params = {"noise_dbfs": noise_db, "snr_db": snr}
    if config.snr_db is None and (noise_db < NOISE_FLOOR_DBFS or snr > NOISE_SNR_DB):
        return Damage("denoise", False, f"denoise: no noise found (floor {noise_db:.0f} dBFS, SNR {snr:.0f} dB)",
                      params=params)
    summary = f"denoise: noise at {noise_db:.1f} dBFS, SNR {snr:.1f} dB ({how}); no sample is reliable"
    operator = {"name": "noise", "snr_db": min(max(snr, -30.0), 80.0)}
    return Damage("denoise", True, summary, None, operator, params)


@DETECTORS.register("reconstruct")
def detect_nothing(x: np.ndarray, sample_rate: int, config: DetectionConfig) -> Damage:
    """Reconstruction has no measurement operator: the whole recording is re-generated through the prior."""
    return Damage("reconstruct", True, "reconstruct: no damage model (identity); no sample is reliable",
                  None, {"name": "identity"})
