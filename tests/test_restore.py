"""`gdr restore` and `gdr.restore.Restorer` on the tiny model (CPU, 1 sampling step): the output keeps the
input's rate, channels, length and sample format, every reliable sample bit for bit; bad inputs give one line
each; the command and the API give the same bytes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_detect import music_like, quantize, speech_like, steep_lowpass

from gdr.audio import read_audio, write_audio
from gdr.detect import Damage, DetectionConfig, detect
from gdr.restore import Restorer, channel_estimates, merge

ROOT = Path(__file__).resolve().parents[1]
FAST = {"sampler": {"steps": 1}}
BITS = {"PCM_16": 16, "PCM_24": 24}


@pytest.fixture(scope="module")
def restorer(tiny_model, cache_dir):
    return Restorer(tiny_model, cache_dir=cache_dir)


def recording(sr: int, channels: int, seconds: float = 0.8) -> np.ndarray:
    """``(N, C)``: speech in channel 0, music (or speech again, quieter) in the others."""
    x = np.stack([speech_like(sr, seconds), music_like(sr, seconds)][:channels], axis=1)
    return x if channels == 2 else x[:, :1]


def damaged(task: str, sr: int, channels: int, bits: int) -> np.ndarray:
    x = recording(sr, channels)
    if task == "declip":
        return np.clip(quantize(x, bits), -0.3, quantize(np.array(0.27), bits))
    if task == "inpaint":
        x = quantize(x, bits)
        x[int(0.3 * sr):int(0.33 * sr)] = 0.0  # a dropout in every channel
        if channels == 2:
            x[int(0.6 * sr):int(0.64 * sr), 1] = x[int(0.6 * sr), 1]  # a stuck sample in one
        return x
    if task == "bwe":
        return quantize(steep_lowpass(x, 4000.0, sr) if x.ndim == 1 else
                        np.stack([steep_lowpass(c, 4000.0, sr) for c in x.T], axis=1), bits)
    return quantize(x + 3e-3 * np.random.default_rng(0).standard_normal(x.shape), bits)


def ints(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="int32", always_2d=True)[0]


@pytest.mark.parametrize("task,sr,channels,subtype,mode", [
    ("declip", 44_100, 1, "PCM_16", "mid-side"),
    ("declip", 48_000, 2, "PCM_24", "mid-side"),
    ("declip", 44_100, 2, "PCM_16", "per-channel"),
    ("inpaint", 48_000, 1, "PCM_24", "mid-side"),
    ("inpaint", 44_100, 2, "PCM_16", "mid-side"),
    ("inpaint", 48_000, 2, "PCM_24", "per-channel"),
])
def test_every_reliable_sample_is_bit_exact_and_the_format_is_kept(restorer, tmp_path, task, sr, channels, subtype,
                                                                    mode):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    write_audio(src, damaged(task, sr, channels, BITS[subtype]), sr, "WAV", subtype)
    x, rate = read_audio(src, dtype="float64")
    result = restorer.restore(x, rate, task, channels=mode, **FAST)
    write_audio(dst, result.audio, rate, "WAV", subtype)
    info_in, info_out = sf.info(str(src)), sf.info(str(dst))
    assert (info_out.samplerate, info_out.channels, info_out.frames, info_out.subtype) == \
        (info_in.samplerate, info_in.channels, info_in.frames, info_in.subtype)
    reliable = ~result.damage.unreliable
    assert result.damage.found and (~reliable).sum() > 0
    np.testing.assert_array_equal(ints(dst)[reliable], ints(src)[reliable])
    assert "replaced, every other sample bit-exact" in result.replaced


@pytest.mark.parametrize("task,sr,channels", [("bwe", 48_000, 2), ("denoise", 44_100, 1), ("reconstruct", 48_000, 2)])
def test_tasks_without_a_sample_subset_keep_rate_channels_length_and_dtype(restorer, task, sr, channels):
    x = damaged(task, sr, channels, 24)
    pcm = np.rint(x * 2 ** 31).astype(np.int32)  # the API takes integer PCM as it is, and gives it back
    out, rate = restorer(pcm, sr, task=task, **FAST)
    assert rate == sr and out.shape == pcm.shape and out.dtype == np.int32
    result = restorer.restore(x, sr, task, **FAST)
    expected = "the band above" if task == "bwe" else "no reliable subset"
    assert expected in result.replaced and result.damage.found


def test_the_api_takes_and_returns_numpy_and_torch_in_their_own_layouts(restorer):
    import torch

    x = damaged("inpaint", 44_100, 2, 16).astype(np.float32)  # (N, C)
    out, rate = restorer(x, 44_100, task="inpaint", **FAST)
    assert out.dtype == np.float32 and out.shape == x.shape and rate == 44_100
    t = torch.from_numpy(x.T.copy())  # torchaudio's (C, N)
    out_t, _ = restorer(t, 44_100, task="inpaint", **FAST)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == t.shape and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy().T, out)


def test_nothing_found_returns_the_input_unchanged_without_running_the_model(restorer):
    x = quantize(recording(48_000, 2))
    result = restorer.restore(x, 48_000, "declip", **FAST)
    assert not result.damage.found and result.method is None
    np.testing.assert_array_equal(result.audio, x)


def test_declipped_samples_are_projected_beyond_their_level_and_nothing_else_moves():
    x = np.array([[0.1], [0.3], [0.3], [-0.3], [0.05]])
    damage = detect("declip", x, 16_000, DetectionConfig(clip_level=0.3))
    estimate = np.array([[9.0], [0.2], [0.5], [-0.7], [9.0]])
    out, _ = merge(x, estimate, damage, 16_000)
    np.testing.assert_array_equal(out[:, 0], [0.1, 0.3, 0.5, -0.7, 0.05])


@pytest.mark.parametrize("sr", [44_100, 48_000])
def test_the_bwe_crossover_keeps_the_input_band_and_takes_the_estimate_above(sr):
    t = np.arange(sr) / sr
    x = quantize(steep_lowpass(speech_like(sr, 1.0), 3000.0, sr))[:, None]
    damage = Damage("bwe", True, "", None, {"name": "lowpass"}, {"cutoff_hz": 3000.0})
    above, below = 0.1 * np.sin(2 * np.pi * 5000 * t)[:, None], 0.1 * np.sin(2 * np.pi * 1500 * t)[:, None]
    out, _ = merge(x, x + above + below, damage, sr)
    inner = slice(sr // 10, -sr // 10)  # away from the file's edges, where the FIR sees zeros
    np.testing.assert_allclose(out[inner], (x + above)[inner], atol=1e-3)
    same, _ = merge(x, x.copy(), damage, sr)
    np.testing.assert_allclose(same, x, atol=1e-12)


def test_mid_side_recovers_a_damaged_channel_from_the_other_and_the_restored_mid():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-0.5, 0.5, (100, 2))
    x = truth.copy()
    unreliable = np.zeros((100, 2), dtype=bool)
    unreliable[10:20, 0] = unreliable[50:60, :] = True
    x[unreliable] = 0.0
    mid = truth.mean(axis=1)  # an exact restoration of the mid
    est = channel_estimates(x, [mid], unreliable, mid_side=True)
    np.testing.assert_allclose(est[10:20, 0], truth[10:20, 0], atol=1e-12)  # L = 2 M - R
    np.testing.assert_allclose(est[50:60], np.stack([mid[50:60]] * 2, axis=1))  # both lost: the mid


# ------------------------------------------------------------------------------------------ the command
def gdr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "gdr"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gdr"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_the_command_and_the_api_give_the_same_bytes(tmp_path, cache_dir):
    src = tmp_path / "take.wav"
    write_audio(src, damaged("declip", 48_000, 2, 24), 48_000, "WAV", "PCM_24")
    done = gdr("restore", str(src), "-o", str(tmp_path / "out"), "--task", "declip", "--model.pretrained", "gdr-tiny",
               "--sampler.steps", "1", "--progress", "false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{src}: declip: clipped at ch0 +0.27") and "replaced" in lines[1]
    x, sr = sf.read(str(src), dtype="float64", always_2d=True)
    out, rate = Restorer.from_pretrained("gdr-tiny", cache_dir=str(cache_dir))(x, sr, task="declip", **FAST)
    write_audio(tmp_path / "api.wav", out, rate, "WAV", "PCM_24")
    assert (tmp_path / "api.wav").read_bytes() == (tmp_path / "out" / "take.wav").read_bytes()


def test_bad_files_give_one_line_each_the_run_goes_on_and_exits_non_zero(tmp_path):
    good, short = tmp_path / "good.wav", tmp_path / "short.wav"
    write_audio(good, quantize(recording(44_100, 1, seconds=1.5)), 44_100, "WAV", "PCM_16")
    write_audio(short, quantize(recording(44_100, 1, seconds=0.5)), 44_100, "WAV", "PCM_16")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    write_audio(tmp_path / "silent.wav", np.zeros((44_100, 2)), 44_100, "WAV", "PCM_16")
    (tmp_path / "gaps.txt").write_text("0.600000\t0.640000\tdropout\n")
    names = ["good.wav", "short.wav", "broken.wav", "silent.wav", "missing.wav"]
    done = gdr("restore", *names, "-o", "out", "--task", "inpaint", "--labels", "gaps.txt",
               "--model.pretrained", "gdr-tiny", "--sampler.steps", "1", "--progress", "false", cwd=tmp_path)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 5 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith("error: short.wav: labels gaps.txt line 1: the gap 0.6-0.64 s ends past the end")
    assert errors[1].startswith("error: broken.wav: not readable as audio")
    assert errors[2].startswith("error: silent.wav: the audio is silent")
    assert errors[3] == "error: missing.wav: no such file"
    assert errors[4] == "error: 4 of 5 file(s) failed: short.wav, broken.wav, silent.wav, missing.wav"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.wav"]  # nothing partial, no temporaries
    x, y = ints(good), ints(tmp_path / "out" / "good.wav")
    keep = np.ones(len(x), dtype=bool)
    keep[int(0.6 * 44_100):int(0.64 * 44_100)] = False
    np.testing.assert_array_equal(x[keep], y[keep])


def test_dry_run_needs_no_model_and_option_errors_are_one_line(tmp_path):
    src = tmp_path / "a.wav"
    write_audio(src, quantize(steep_lowpass(speech_like(44_100, 1.0), 4000.0, 44_100))[:, None], 44_100, "WAV",
                "PCM_16")
    done = gdr("restore", "a.wav", "-o", "out", "--task", "bwe", "--dry-run", "--model.pretrained", "/nowhere",
               cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("a.wav: bwe: band-limited at 4"), done.stderr
    assert not (tmp_path / "out").exists()
    over = gdr("restore", "a.wav", "-o", ".", "--task", "bwe", cwd=tmp_path)
    assert over.returncode == 1 and over.stderr == "error: refusing to write over the input a.wav: choose another " \
                                                   "--output-dir\n"
    nyquist = gdr("restore", "a.wav", "-o", "out", "--task", "bwe", "--cutoff-hz", "30000", "--dry-run", cwd=tmp_path)
    assert nyquist.returncode == 1
    assert nyquist.stderr.splitlines()[0] == ("error: a.wav: cutoff_hz 30000 is at or above the Nyquist frequency of "
                                              "the file (22050 Hz at 44100 Hz)")
    steps = gdr("restore", "a.wav", "-o", "out", "--sampler.steps", "0", cwd=tmp_path)
    assert steps.returncode == 1 and len(steps.stderr.splitlines()) == 1 and steps.stderr.startswith("error: ")
