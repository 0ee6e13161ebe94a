"""Degradation operators: their definitions, differentiability, masks and parameter checks."""

import math

import numpy as np
import pytest
import torch

from gdr.degradations import DEGRADATIONS, build_degradation
from gdr.errors import ConfigError


def _x(n=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    x = 0.3 * torch.sin(2 * math.pi * 300 * t) + 0.1 * torch.randn(n, generator=g)
    return (0.5 * x / x.abs().max())[None].double()


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_hits_the_snr_and_has_its_colour(color):
    x = _x(32000)
    op = build_degradation({"name": "noise", "snr_db": 7.5, "color": color})
    y = op.measure(x, torch.Generator().manual_seed(1))
    n = y - x
    assert 10 * torch.log10(x.pow(2).sum() / n.pow(2).sum()).item() == pytest.approx(7.5, abs=1e-6)
    spec = torch.fft.rfft(n[0]).abs().pow(2)
    low, high = spec[100:1000].mean(), spec[10000:15000].mean()  # ~50-500 Hz vs 5-7.5 kHz
    if color == "white":
        assert 0.7 < low / high < 1.4
    else:
        assert low / high > 10  # 1/f: about 15x for these bands
    assert torch.equal(op(x), x)  # A = I; the noise is the measurement noise
    torch.testing.assert_close(op.measure(x, torch.Generator().manual_seed(1)), y)


def test_clip_and_its_lack_of_mask():
    op = build_degradation({"name": "clip", "level": 0.2})
    x = _x()
    np.testing.assert_allclose(op(x).numpy(), np.clip(x.numpy(), -0.2, 0.2))
    assert op.mel_mask(10, 1600) is None and op.latent_mask(4, 1600) is None and not op.has_mel_mask


def test_lowpass_removes_the_high_band_and_is_linear():
    op = build_degradation({"name": "lowpass", "cutoff_hz": 2000})
    x, x2 = _x(seed=0), _x(seed=1)
    y = op(x)
    spec_x, spec_y = torch.fft.rfft(x[0]).abs(), torch.fft.rfft(y[0]).abs()
    freqs = torch.fft.rfftfreq(x.shape[-1], 1 / 16000)
    above, below = freqs > 2300, freqs < 1700
    assert spec_y[above].pow(2).sum() < 1e-4 * spec_x[above].pow(2).sum()
    torch.testing.assert_close(spec_y[below], spec_x[below], atol=0.05 * spec_x.max().item(), rtol=0.05)
    torch.testing.assert_close(op(2 * x - 3 * x2), 2 * y - 3 * op(x2))
    mask = op.mel_mask(5, 800)[0, 0, 0]
    assert mask[0] == 1 and mask[-1] == 0 and bool((mask[:-1] >= mask[1:]).all())  # low bins kept


def test_gaps_zero_exact_spans_and_localise_per_chunk():
    op = build_degradation({"name": "gaps", "length_ms": 25, "count": 4, "seed": 3})
    x = _x(32000)
    y = op(x)[0]
    zero = (y == 0).numpy().astype(int)
    runs = np.diff(np.concatenate([[0], zero, [0]]))
    starts, ends = np.where(runs == 1)[0], np.where(runs == -1)[0]
    assert len(starts) == 4 and set(ends - starts) == {400}
    torch.testing.assert_close(op(x), y[None])  # positions depend only on (seed, length)
    support = op.sample_support(32000)
    local = op.localize(support[5000:15000])
    torch.testing.assert_close(local(x[:, 5000:15000]), y[None, 5000:15000])
    mel = op.mel_mask(200, 32000)[0, 0, :, 0]
    for s in starts:  # the frame centred in each gap is unreliable, frames far away are reliable
        assert mel[(s + 200) // 160] == 0
    assert mel.sum() > 100
    latent = op.latent_mask(50, 32000)
    assert latent.shape == (1, 1, 50, 16) and 0 < latent.mean() < mel.mean()


def test_compose_applies_in_order_and_combines_masks():
    op = build_degradation({"name": "compose", "ops": [{"name": "lowpass", "cutoff_hz": 3000},
                                                        {"name": "noise", "snr_db": 20}]})
    x = _x()
    y = op.measure(x, torch.Generator().manual_seed(0))
    lp = build_degradation({"name": "lowpass", "cutoff_hz": 3000})(x)
    noise = build_degradation({"name": "noise", "snr_db": 20}).measure(lp, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, noise)
    torch.testing.assert_close(op.mel_mask(3, 480), build_degradation({"name": "lowpass", "cutoff_hz": 3000})
                               .mel_mask(3, 480))
    assert "lowpass(3000 Hz) -> noise(white, 20 dB)" == op.describe()


@pytest.mark.parametrize("name", ["identity", "noise", "clip", "lowpass", "gaps"])
def test_every_operator_is_differentiable(name):
    op = build_degradation({"name": name})
    x = _x(8000).requires_grad_(True)
    op(x).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("spec, needle", [
    ({"name": "noise", "snr_db": float("nan")}, "snr_db"),
    ({"name": "noise", "color": "purple"}, "color"),
    ({"name": "lowpass", "cutoff_hz": 8000}, "cutoff_hz"),
    ({"name": "lowpass", "cutoff_hz": -1}, "cutoff_hz"),
    ({"name": "clip", "level": 0}, "level"),
    ({"name": "gaps", "count": 0}, "count"),
    ({"name": "compose", "ops": []}, "non-empty"),
    ({"name": "nope"}, "known: clip, compose, gaps, identity, lowpass, noise"),
    ({"name": "lowpass", "cutof_hz": 10}, "unexpected keyword"),
])
def test_bad_parameters_raise_one_clear_error(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        build_degradation(spec)


def test_gaps_longer_than_the_clip_raise_on_use():
    op = build_degradation({"name": "gaps", "length_ms": 400, "count": 3})
    with pytest.raises(ConfigError, match="do not fit"):
        op(_x(16000))


def test_registry_lists_the_five_tasks_and_composition():
    assert set(DEGRADATIONS) == {"identity", "noise", "clip", "lowpass", "gaps", "compose"}


def test_gap_positions_are_uniform_within_their_segments():
    """Each of `count` gaps starts uniformly at random inside its own segment (k * segment + U[0, segment - gap])."""
    n, count, gap = 48_000, 3, 800  # 50 ms gaps
    segment = n // count
    offsets = []
    for seed in range(150):
        mask = build_degradation({"name": "gaps", "length_ms": 50, "count": count, "seed": seed}).sample_mask(n)
        starts = torch.nonzero(torch.diff(mask, prepend=torch.ones(1)) == -1)[:, 0]
        assert len(starts) == count
        for k, s in enumerate(starts.tolist()):
            assert k * segment <= s <= (k + 1) * segment - gap
            offsets.append((s - k * segment) / (segment - gap))
    offsets = np.array(offsets)  # U[0, 1]: mean 1/2, sd 0.29; 450 draws -> sd of the mean 0.014
    assert abs(offsets.mean() - 0.5) < 0.06 and offsets.min() < 0.05 and offsets.max() > 0.95


def _mel(x):
    from gdr.audio import log_mel

    return log_mel(x)[0, 0]  # (T, 64)


@pytest.mark.parametrize("spec", [{"name": "gaps", "length_ms": 60, "count": 3},
                                  {"name": "lowpass", "cutoff_hz": 3000}])
def test_mel_mask_marks_exactly_the_mel_cells_the_degradation_leaves_intact(spec):
    """The defining property of ``mel_mask``: where it says reliable, the mel of A(x) equals the mel of x; what it
    marks unreliable really changed (checked on broadband noise, whose every mel cell carries energy)."""
    n = 32_000
    x = 0.3 * torch.randn(1, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = build_degradation(spec)
    mel_x, mel_y = _mel(x), _mel(op(x))
    mask = op.mel_mask(mel_x.shape[0], n)[0, 0].bool()  # (T, 64)
    diff = (mel_y - mel_x).abs()
    if spec["name"] == "gaps":  # exact: a reliable frame's analysis window misses every gap
        assert diff[mask].max() < 1e-9 and diff[~mask].min() > 1e-6
    else:  # the STFT low-pass leaks a little into neighbouring bins: reliable means nearly unchanged
        assert diff[mask].mean() < 0.05 and diff[~mask].mean() > 1.0
        assert mask[:, :-1].ge(mask[:, 1:]).all() and 0 < mask[0].sum() < 64  # a low band, then nothing


@pytest.mark.parametrize("spec", [{"name": "gaps", "length_ms": 60, "count": 3},
                                  {"name": "lowpass", "cutoff_hz": 3000}])
def test_latent_mask_is_eroded_by_one_cell_for_the_vae_receptive_field(spec):
    """A latent cell is reliable only if the 4 x 4 mel cells of it and of each neighbour (3 x 3) are reliable."""
    n = 32_000
    op = build_degradation(spec)
    latent_frames = n // 160 // 4
    mel = op.mel_mask(latent_frames * 4, n)[0, 0]  # (T, 64)
    cells = mel.reshape(latent_frames, 4, 16, 4).amin(dim=(1, 3))  # (L, 16): all 4 x 4 mel cells reliable
    expected = torch.zeros_like(cells)
    for i in range(cells.shape[0]):
        for j in range(cells.shape[1]):
            expected[i, j] = cells[max(0, i - 1):i + 2, max(0, j - 1):j + 2].min()
    got = op.latent_mask(latent_frames, n)[0, 0]
    assert torch.equal(got, expected) and 0 < got.sum() < got.numel()
