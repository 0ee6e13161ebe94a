"""Every metric against an independent numpy/librosa computation, the torchmetrics classes, alignment."""

import librosa
import numpy as np
import pytest
import torch

from gdr import metrics
from test_frontend import reference_log_mel


def _pair(n=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    y = 0.8 * x + 0.03 * rng.standard_normal(n) + 0.1 * np.sin(2 * np.pi * 3000 * t)
    return x, y


def _t(a):
    return torch.as_tensor(a, dtype=torch.float64)[None]


def test_logmel_l1_matches_reference():
    x, y = _pair()
    expected = np.abs(reference_log_mel(y) - reference_log_mel(x)).mean()
    assert metrics.logmel_l1(_t(y), _t(x)).item() == pytest.approx(expected, rel=1e-6)


def test_lsd_matches_librosa_reference():
    x, y = _pair()
    for min_hz in (0.0, 4000.0):
        n_fft, hop = int(2048 * 16000 / 44100), 160
        s = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="reflect"))
        s_hat = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="reflect"))
        keep = np.arange(s.shape[0]) * 16000 / n_fft >= min_hz
        ratio = np.log10((s[keep] + 1e-12) ** 2 / (s_hat[keep] + 1e-12) ** 2)
        expected = np.mean(np.sqrt(np.mean(ratio**2, axis=0)))
        assert metrics.lsd(_t(y), _t(x), min_hz=min_hz).item() == pytest.approx(expected, rel=1e-6)
    assert metrics.lsd(_t(x), _t(x)).item() == 0.0


def test_mrstft_matches_librosa_reference():
    x, y = _pair()
    total = 0.0
    for n_fft, hop, win in metrics.MRSTFT_RESOLUTIONS:
        kw = dict(n_fft=n_fft, hop_length=hop, win_length=win, window="hann", center=True, pad_mode="reflect")
        s, s_hat = np.abs(librosa.stft(x, **kw)), np.abs(librosa.stft(y, **kw))
        sc = np.linalg.norm(s - s_hat) / np.linalg.norm(s)
        mag = np.mean(np.abs(np.log(np.maximum(s, 1e-7)) - np.log(np.maximum(s_hat, 1e-7))))
        total += sc + mag
    assert metrics.mrstft(_t(y), _t(x)).item() == pytest.approx(total / 3, rel=1e-6)


def test_si_sdr_and_snr_match_numpy():
    x, y = _pair()
    xz, yz = x - x.mean(), y - y.mean()
    alpha = np.dot(yz, xz) / np.dot(xz, xz)
    si_sdr = 10 * np.log10(np.sum((alpha * xz) ** 2) / np.sum((alpha * xz - yz) ** 2))
    snr = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert metrics.si_sdr(_t(y), _t(x)).item() == pytest.approx(si_sdr, rel=1e-6)
    assert metrics.snr(_t(y), _t(x)).item() == pytest.approx(snr, rel=1e-6)


def test_metric_classes_average_over_items_and_batches():
    pairs = [_pair(seed=s) for s in range(3)]
    for cls, fn in ((metrics.LogMelL1, metrics.logmel_l1), (metrics.LogSpectralDistance, metrics.lsd),
                    (metrics.MultiResolutionSTFT, metrics.mrstft)):
        metric = cls()
        metric.update(torch.cat([_t(p[1]) for p in pairs[:2]]).float(), torch.cat([_t(p[0]) for p in pairs[:2]]).float())
        metric.update(_t(pairs[2][1]).float(), _t(pairs[2][0]).float())
        expected = np.mean([fn(_t(y).float(), _t(x).float()).item() for x, y in pairs])
        assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
        assert metric.higher_is_better is False
    high = metrics.LogSpectralDistance(min_hz=4000.0)
    high.update(_t(pairs[0][1]).float(), _t(pairs[0][0]).float())
    assert high.compute().item() == pytest.approx(metrics.lsd(_t(pairs[0][1]), _t(pairs[0][0]), min_hz=4000).item(),
                                                  rel=1e-5)


@pytest.mark.parametrize("shift", [0, 37, -120, 700])
def test_align_recovers_integer_delays(shift):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal(8000))
    delayed = torch.roll(x, shift)
    aligned = metrics.align(delayed, x)
    core = slice(800, 7200)
    torch.testing.assert_close(aligned[core], x[core])


def test_align_leaves_incoherent_outputs_and_fixes_length():
    rng = np.random.default_rng(2)
    x, other = torch.from_numpy(rng.standard_normal(8000)), torch.from_numpy(rng.standard_normal(8032))
    aligned = metrics.align(other, x)
    assert aligned.shape == x.shape and torch.equal(aligned, other[:8000])
