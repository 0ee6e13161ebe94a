"""The DSP baselines do what they claim, on signals where the right answer is known."""

import numpy as np
import pytest
import torch

from gdr.baselines import BASELINES
from gdr.degradations import build_degradation


def _snr(estimate, reference):
    return float(10 * torch.log10(reference.pow(2).sum() / (estimate - reference).pow(2).sum()))


def _tone(n=32000):
    t = torch.arange(n, dtype=torch.float64) / 16000
    x = 0.3 * torch.sin(2 * np.pi * 330 * t) + 0.15 * torch.sin(2 * np.pi * 990 * t + 0.3)
    return (0.5 * x / x.abs().max())[None]


def test_spectral_subtraction_raises_the_snr_of_a_noisy_tone():
    x = _tone()
    op = build_degradation({"name": "noise", "snr_db": 5})
    y = op.measure(x, torch.Generator().manual_seed(0))
    out = BASELINES["spectral_subtraction"].fn(None, y, op)
    assert _snr(out, x) > _snr(y, x) + 3


def test_ar_interpolation_restores_a_gap_in_a_sum_of_sinusoids():
    x = _tone()
    op = build_degradation({"name": "gaps", "length_ms": 20, "count": 2})
    y = op(x)
    out = BASELINES["ar_interpolation"].fn(None, y, op)
    gap = op.sample_support(x.shape[-1]) == 0
    assert _snr(out[0, gap], x[0, gap]) > 20  # AR models predict sinusoids almost exactly
    torch.testing.assert_close(out[0, ~gap], y[0, ~gap])


def test_consistent_declip_is_consistent_and_helps():
    x = _tone()
    op = build_degradation({"name": "clip", "level": 0.3})
    y = op(x)
    out = BASELINES["consistent_declip"].fn(None, y, op)
    clipped = y.abs() >= 0.3 * (1 - 1e-6)
    torch.testing.assert_close(out[~clipped], y[~clipped])
    assert bool((out[clipped].abs() >= 0.3 - 1e-12).all()) and bool((out[clipped].sign() == y[clipped].sign()).all())
    assert torch.equal(op(out), y)  # re-clipping the estimate gives the measurement back
    assert _snr(out, x) > _snr(y, x)
    # Long clipped runs (level 0.1 of a 0.5 peak): the spline overshoots (to ~20 x level here), and the estimate is
    # capped at 2 x level.
    op = build_degradation({"name": "clip", "level": 0.1})
    y = op(x)
    out = BASELINES["consistent_declip"].fn(None, y, op)
    clipped = y.abs() >= 0.1 * (1 - 1e-6)
    assert bool((out[clipped].abs() <= 0.2 + 1e-12).all()) and float(out[clipped].abs().max()) == pytest.approx(0.2)
    assert torch.equal(op(out), y)


def test_lowband_replacement_keeps_the_measured_low_band(tiny_model):
    x = _tone(16000).float()
    op = build_degradation({"name": "lowpass", "cutoff_hz": 2000})
    y = op(x)
    out = BASELINES["lowband_replacement"].fn(tiny_model, y, op)
    spec_out, spec_y = torch.fft.rfft(out[0, 2000:14000]), torch.fft.rfft(y[0, 2000:14000])
    freqs = torch.fft.rfftfreq(12000, 1 / 16000)
    low = freqs < 1500
    assert (spec_out[low] - spec_y[low]).abs().sum() < 0.05 * spec_y[low].abs().sum()
    # The whole measured band up to the cutoff is kept (a tone at 1.8 kHz too).
    t = torch.arange(16000) / 16000
    x = x + 0.1 * torch.sin(2 * np.pi * 1800 * t)
    y = op(x)
    out = BASELINES["lowband_replacement"].fn(tiny_model, y, op)
    spec_out, spec_y = torch.fft.rfft(out[0, 2000:14000]), torch.fft.rfft(y[0, 2000:14000])
    band = (freqs > 1600) & (freqs < 1950)
    assert (spec_out[band] - spec_y[band]).abs().sum() < 0.05 * spec_y[band].abs().sum()


def test_each_task_has_its_dsp_baseline():
    tasks = {b.task for b in BASELINES.values() if b.task}
    assert tasks == {"noise", "lowpass", "gaps", "clip"}
