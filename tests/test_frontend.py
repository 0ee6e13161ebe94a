"""gdr.audio.log_mel against an independent numpy/librosa implementation of AudioLDM2's front end."""

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from conftest import signals, to_tensor
from gdr.audio import log_mel, normalize_loudness, prepare_waveform


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """(N,) float64 -> (N // 160, 64): clip to [-1, 1], reflect pad 512, periodic Hann 1024, |rfft|, Slaney mel,
    ln clamp 1e-5."""
    x = np.clip(x, -1.0, 1.0)  # AudioLDM2's get_mel_from_wav: torch.clip(audio, -1, 1)
    padded = np.pad(x, 512, mode="reflect")
    frames = librosa.util.frame(padded, frame_length=1024, hop_length=160)  # (1024, 1 + N // 160)
    window = scipy.signal.get_window("hann", 1024, fftbins=True)
    magnitude = np.abs(np.fft.rfft(frames * window[:, None], axis=0))  # (513, frames)
    fb = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
    mel = (fb @ magnitude)[:, : len(x) // 160]
    return np.log(np.maximum(mel, 1e-5)).T


@pytest.mark.parametrize("name", list(signals()))
def test_log_mel_float64_matches_reference(name):
    x = signals(16000 + 77)[name]  # a length that is not a multiple of the hop
    ours = log_mel(to_tensor(x, torch.float64))
    assert ours.shape == (1, 1, (16000 + 77) // 160, 64)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours[0, 0].numpy(), reference_log_mel(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(signals()))
def test_log_mel_float32_matches_reference_above_floor(name):
    x = signals()[name]
    ours = log_mel(to_tensor(x, torch.float32))[0, 0].double().numpy()
    ref = reference_log_mel(x.astype(np.float32).astype(np.float64))
    above = ref > -9.0
    assert above.any() or name == "near_silence"
    np.testing.assert_allclose(ours[above], ref[above], atol=2e-4, rtol=0)
    # Near the 1e-5 floor float32 rounding dominates, but both still sit near the floor.
    assert np.abs(ours - ref).max() < 0.5


def test_sanity_values_of_the_facts_sheet():
    t = np.arange(163_840) / 16000
    x = prepare_waveform(np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000)
    mel = log_mel(x[None])
    assert mel.shape == (1, 1, 1024, 64)
    assert mel.min().item() == pytest.approx(-11.5129, abs=1e-4)
    assert mel.max().item() == pytest.approx(1.2903, abs=1e-3)
    assert mel.mean().item() == pytest.approx(-9.93, abs=5e-3)


def test_log_mel_is_batched_and_differentiable():
    x = torch.randn(3, 4000, requires_grad=True)
    mel = log_mel(x)
    assert mel.shape == (3, 1, 25, 64)
    mel.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(mel[1:2], log_mel(x[1:2].detach()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_mel_clips_beyond_full_scale_like_audioldm2(dtype):
    rng = np.random.default_rng(3)
    t = np.arange(4000) / 16000
    x = torch.as_tensor(1.6 * np.sin(2 * np.pi * 300 * t) + 0.2 * rng.standard_normal(4000), dtype=dtype)[None]
    assert (x.abs() > 1).float().mean() > 0.2
    torch.testing.assert_close(log_mel(x), log_mel(x.clamp(-1, 1)), rtol=0, atol=0)


def test_log_mel_gradient_is_untouched_inside_full_scale_and_zero_beyond():
    rng = np.random.default_rng(4)
    x = torch.as_tensor(0.3 * rng.standard_normal(2000))[None]
    x[0, 100:140] = 1.5  # clipped samples
    weights = torch.as_tensor(rng.standard_normal(log_mel(x).shape))
    x.requires_grad_(True)
    (log_mel(x) * weights).sum().backward()
    assert torch.equal(x.grad[0, 100:140], torch.zeros(40, dtype=x.dtype))
    # Inside [-1, 1] the analytic gradient is the true one: compare a directional derivative with central
    # differences along a direction that leaves the clipped samples alone.
    direction = torch.as_tensor(rng.standard_normal(2000))[None]
    direction[0, 100:140] = 0.0
    h = 1e-6
    with torch.no_grad():
        numeric = ((log_mel(x + h * direction) - log_mel(x - h * direction)) * weights).sum() / (2 * h)
    assert (x.grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5)


def test_loudness_normalisation_is_audioldm2s_normalize_wav():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5000) * 0.1 + 0.3
    ref = x - x.mean()
    ref = 0.5 * ref / (np.max(np.abs(ref)) + 1e-8)
    ref = 0.5 * ref / np.max(np.abs(ref))
    np.testing.assert_allclose(normalize_loudness(torch.as_tensor(x)).numpy(), ref, rtol=0, atol=1e-12)


def test_prepare_waveform_mono_and_resampling():
    rng = np.random.default_rng(2)
    stereo = rng.standard_normal((44100, 2)).astype(np.float32)
    stereo[:, 1] *= 0.1
    first = prepare_waveform(stereo, 44100, mono="first")
    mean = prepare_waveform(stereo, 44100, mono="mean")
    assert first.shape == mean.shape == (16000,)
    # Channel 0 alone, resampled by torchaudio's sinc resampler then normalised.
    import torchaudio

    expected = normalize_loudness(torchaudio.functional.resample(torch.from_numpy(stereo[:, 0]), 44100, 16000))
    torch.testing.assert_close(first, expected)
    assert not torch.allclose(first, mean)
    assert first.abs().max().item() == pytest.approx(0.5) and abs(first.mean().item()) < 1e-6
