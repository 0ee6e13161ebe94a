"""Damage estimation (`gdr.detect`) on synthetic damage of generated speech-like and music-like recordings,
and the explicit-span gaps operator it feeds (`gdr.degradations.Gaps(spans=...)`). No model: numpy/scipy only."""

import numpy as np
import pytest
import torch
from scipy.signal import firwin, lfilter, oaconvolve

from gdr.detect import DetectionConfig, detect, read_labels, runs, to_model_rate
from gdr.errors import ConfigError

RATES = (44_100, 48_000)


def speech_like(sr: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Voiced syllables (jittered 110-140 Hz pulses through four formant resonators), fricative noise bursts
    and silent pauses between words; peak 0.5. ``(N,)`` float64."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    pulses = np.zeros(n)
    pos = 0.0
    while pos < n:
        pulses[int(pos)] = 1.0
        pos += sr / rng.uniform(110, 140)
    voiced = np.zeros(n)
    for f, bw, gain in ((700, 130, 1.0), (1220, 70, 0.5), (2600, 160, 0.25), (3500, 250, 0.1)):
        r = np.exp(-np.pi * bw / sr)  # a two-pole resonator per formant, in parallel (Klatt's parallel branch)
        voiced += gain * lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], pulses)
    voiced = np.diff(voiced, prepend=0.0)  # radiation at the lips: a differentiator (and no DC)
    fricative = np.diff(rng.standard_normal(n + 1)) * 0.02  # first difference: a rising, sibilant-like spectrum
    t = np.arange(n) / sr
    syllables = np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) ** 0.7
    words = ((t % 0.5) < 0.38).astype(float)  # 120 ms pause every 0.5 s
    x = (voiced / np.abs(voiced).max() + fricative * (syllables < 0.3)) * np.maximum(syllables, 0.25) * words
    return 0.5 * x / np.abs(x).max() + room_noise(n, rng)


def music_like(sr: int, seconds: float = 1.5, seed: int = 1) -> np.ndarray:
    """Plucked harmonic notes (partials 1/k up to Nyquist, exponential decay), a noisy hi-hat on every beat,
    and a short rest after each note; peak 0.5. ``(N,)`` float64."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n)
    note = int(0.3 * sr)
    for k, start in enumerate(range(0, n, note)):
        f0 = 196.0 * 2 ** (rng.integers(0, 12) / 12)
        t = np.arange(min(note - int(0.06 * sr), n - start)) / sr
        partials = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6)) / h for h in range(1, int(sr / 2 / f0)))
        x[start:start + t.size] += partials * np.exp(-t * 6)
        hat = rng.standard_normal(int(0.04 * sr)) * np.exp(-np.arange(int(0.04 * sr)) / (0.008 * sr)) * 0.3
        x[start:start + hat.size] += hat
    return 0.5 * x / np.abs(x).max() + room_noise(n, rng)


def room_noise(n: int, rng) -> np.ndarray:
    """The floor every real recording has: white noise at -80 dBFS (about 3 LSB of 16-bit)."""
    return 1e-4 * rng.standard_normal(n)


SIGNALS = {"speech": speech_like, "music": music_like}


def quantize(x: np.ndarray, bits: int = 16) -> np.ndarray:
    """What a PCM file of `bits` stores, as float64 (full scale 1)."""
    scale = 2.0 ** (bits - 1)
    return np.clip(np.rint(x * scale), -scale, scale - 1) / scale


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("kind", SIGNALS)
@pytest.mark.parametrize("levels", [(0.2, -0.2), (0.3, -0.22)])
def test_clip_levels_and_the_clipped_set_are_exact_for_hard_clipping(sr, kind, levels):
    clean = quantize(np.stack([SIGNALS[kind](sr), 0.9 * SIGNALS[kind](sr, seed=5)], axis=1))
    high, low = quantize(np.array(levels))
    damaged = np.clip(clean, low, high)
    truth = (clean >= high) | (clean <= low)
    damage = detect("declip", damaged, sr)
    assert damage.found and damage.task == "declip"
    np.testing.assert_array_equal(damage.unreliable, truth)
    for found_high, found_low in damage.params["levels"]:
        assert abs(found_high - high) <= 0.01 * high and abs(found_low - low) <= 0.01 * abs(low)
    given = detect("declip", np.clip(clean, -high, high), sr, DetectionConfig(clip_level=float(high)))
    np.testing.assert_array_equal(given.unreliable, np.abs(clean) >= high)


@pytest.mark.parametrize("kind", SIGNALS)
def test_clean_recordings_show_no_damage_to_declip_inpaint_or_bwe(kind):
    clean = quantize(SIGNALS[kind](48_000) + 1e-3 * np.random.default_rng(3).standard_normal(72_000))
    for task in ("declip", "inpaint", "bwe"):
        damage = detect(task, clean, 48_000)
        assert not damage.found, damage.summary
        assert damage.summary.startswith(f"{task}: ") and "\n" not in damage.summary


def steep_lowpass(x: np.ndarray, cutoff: float, sr: int) -> np.ndarray:
    """A band limit as codecs and resamplers leave it: linear-phase FIR, 100 Hz transition, ~90 dB stop band."""
    from scipy.signal import kaiserord

    taps, beta = kaiserord(90, 100 / (sr / 2))
    h = firwin(taps | 1, cutoff, window=("kaiser", beta), fs=sr)
    return oaconvolve(x, h, mode="same")


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("kind", SIGNALS)
@pytest.mark.parametrize("cutoff", [2000.0, 3150.0, 4000.0, 5500.0, 7000.0, 8000.0])
def test_the_cutoff_is_found_within_150_hz(sr, kind, cutoff):
    damaged = quantize(steep_lowpass(SIGNALS[kind](sr), cutoff, sr))
    damage = detect("bwe", damaged, sr)
    assert abs(damage.params["cutoff_hz"] - cutoff) <= 150, damage.summary
    assert damage.found == (damage.params["cutoff_hz"] < 8000)  # the model cannot add above its 8 kHz band


def test_a_cutoff_at_or_above_nyquist_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^cutoff_hz 30000 is at or above the Nyquist frequency .*22050 Hz"):
        detect("bwe", speech_like(44_100), 44_100, DetectionConfig(cutoff_hz=30_000.0))


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("kind", SIGNALS)
def test_dropouts_are_found_to_the_sample_and_edges_of_the_file_are_not_dropouts(sr, kind):
    x = quantize(SIGNALS[kind](sr, seconds=2.0))
    x[: int(0.05 * sr)] = 0.0  # leading digital silence: not a dropout
    gaps = [(int(0.41 * sr), int(0.47 * sr), 0.0), (int(1.2031 * sr), int(1.2311 * sr), x[int(1.2031 * sr)])]
    for start, end, value in gaps:  # digital silence, then a stuck sample
        x[start:end] = value
    damage = detect("inpaint", x, sr, DetectionConfig(min_gap_ms=20))
    assert damage.found
    found = damage.params["gaps"]
    assert len(found) == 2
    for (start, end), (s, e, _) in zip(found, gaps):
        assert abs(start - s) / sr <= 0.005 and abs(end - e) / sr <= 0.005
    assert not detect("inpaint", x, sr, DetectionConfig(min_gap_ms=80)).found


def test_gaps_from_an_audacity_label_file(tmp_path):
    labels = tmp_path / "gaps.txt"
    labels.write_text("0.250000\t0.300000\tdropout\n\\\t100.0\t2000.0\n0.5\t0.5\tpoint\n1.0 1.1\n")
    assert read_labels(labels, 2.0) == [(0.25, 0.3), (1.0, 1.1)]
    damage = detect("inpaint", speech_like(48_000), 48_000, DetectionConfig(labels=str(labels)))
    assert damage.params["gaps"] == [(12_000, 14_400), (48_000, 52_800)]
    labels.write_text("0.2 0.3\n1.2 9.0\n")
    with pytest.raises(ConfigError, match=r"line 2: the gap 1.2-9 s ends past the end of the file \(1.500 s\)$"):
        detect("inpaint", speech_like(48_000), 48_000, DetectionConfig(labels=str(labels)))
    labels.write_text("start end\n")
    with pytest.raises(ConfigError, match="line 1: expected 'start end"):
        read_labels(labels, 2.0)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("kind", SIGNALS)
@pytest.mark.parametrize("noise_dbfs", [-50.0, -40.0, -30.0])
def test_the_noise_level_is_estimated_within_3_db(sr, kind, noise_dbfs):
    x = SIGNALS[kind](sr, seconds=2.0)
    noise = np.random.default_rng(7).standard_normal(x.shape) * 10 ** (noise_dbfs / 20)
    damage = detect("denoise", quantize(x + noise), sr)
    assert damage.found
    assert abs(damage.params["noise_dbfs"] - noise_dbfs) <= 3.0, damage.summary
    assert damage.operator["name"] == "noise"


def test_silence_is_refused_in_one_line():
    from gdr.errors import SilentAudioError

    for task in ("declip", "bwe", "inpaint", "denoise", "reconstruct"):
        with pytest.raises(SilentAudioError, match=r"^f.wav: the audio is silent"):
            detect(task, np.zeros((1000, 2)), 44_100, name="f.wav")


@pytest.mark.parametrize("sr", RATES)
def test_the_16k_mask_is_conservative_no_reliable_16k_sample_depends_on_an_unreliable_native_one(sr):
    import torchaudio

    rng = np.random.default_rng(0)
    x = speech_like(sr, seconds=0.5)
    unreliable = np.zeros(x.size, dtype=bool)
    for start in rng.integers(100, x.size - 100, 12):
        unreliable[start:start + rng.integers(1, 40)] = True
    changed = np.where(unreliable, rng.uniform(-1, 1, x.size), x)  # anything at all in the unreliable samples
    a, b = (torchaudio.functional.resample(torch.as_tensor(v), sr, 16_000).numpy() for v in (x, changed))
    mask16 = to_model_rate(unreliable, sr, a.size)
    assert np.abs(a - b)[~mask16].max() < 1e-4 * np.abs(a - b).max()  # beyond the kernel's reach: nothing
    assert mask16.mean() < 0.2


def test_gaps_at_given_spans_cover_exactly_the_16k_samples_they_touch():
    from gdr.degradations import build_degradation

    op = build_degradation({"name": "gaps", "spans": [[0.1, 0.2], [0.30003, 0.3001]]})
    mask = op.sample_mask(16_000)
    starts, ends = runs(mask.numpy() == 0)
    assert starts.tolist() == [1600, 4800] and ends.tolist() == [3200, 4802]
    local = op.localize(mask[:8000])
    torch.testing.assert_close(local(torch.ones(1, 8000)), mask[None, :8000])
    assert op.describe() == "gaps(2 spans, 100 ms)"
    with pytest.raises(ConfigError, match=r"span 0.9-1.5 s ends past the end of the clip \(1.000 s\)"):
        build_degradation({"name": "gaps", "spans": [[0.9, 1.5]]}).sample_mask(16_000)
    with pytest.raises(ConfigError, match="must end after it starts"):
        build_degradation({"name": "gaps", "spans": [[0.5, 0.4]]})
