"""Every metric against its reference (numpy/librosa, auraloss), the torchmetrics classes, alignment, and
waveform metrics of phase-free outputs left blank from metrics.csv to the report."""

import csv
import json
from types import SimpleNamespace

import auraloss
import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from gdr import metrics
from gdr.run_folder import RunFolder
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


def _lowpassed_noise(n, seed, cutoff_hz=2000.0):
    sos = scipy.signal.butter(8, cutoff_hz, fs=16000, output="sos")
    return scipy.signal.sosfiltfilt(sos, 0.3 * np.random.default_rng(seed).standard_normal(n)).copy()


def _mrstft_cases():
    """(pred, target) float64 pairs, including the band-limited and digitally silent cases where a
    magnitude floor other than auraloss's changes the value."""
    x, y = _pair()
    t = np.arange(16000) / 16000
    tone = 0.4 * np.sin(2 * np.pi * 440 * t)
    gapped, other = tone.copy(), tone + 0.01 * np.random.default_rng(3).standard_normal(16000)
    gapped[5000:11000] = 0.0  # exact digital silence
    return {
        "ordinary": (y, x),
        "lowpassed_noise": (_lowpassed_noise(16000, 1), _lowpassed_noise(16000, 2)),
        "digital_silence": (other, gapped),
        "silence_in_pred": (gapped, other),
        "identical": (x, x),
        "unequal_lengths": (y[:15000], x),
    }


def test_mrstft_resolutions_are_auraloss_defaults():
    default = auraloss.freq.MultiResolutionSTFTLoss()
    assert tuple(zip(default.fft_sizes, default.hop_sizes, default.win_lengths)) == metrics.MRSTFT_RESOLUTIONS


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mrstft_is_auraloss_item_by_item(dtype):
    cases = _mrstft_cases()
    # The band-limited and silent targets do have STFT magnitudes under auraloss's 1e-4 floor.
    for name in ("lowpassed_noise", "digital_silence"):
        s = np.abs(librosa.stft(cases[name][1], n_fft=2048, hop_length=240, win_length=1200))
        assert (s < 1e-4).mean() > 0.05, name
    n = 15000  # one batch: gdr trims every pair to a common length; auraloss gets the same samples
    preds = torch.stack([torch.as_tensor(p[:n], dtype=dtype) for p, _ in cases.values()])
    targets = torch.stack([torch.as_tensor(t[:n], dtype=dtype) for _, t in cases.values()])
    ours = metrics.mrstft(preds, targets)
    assert ours.shape == (len(cases),) and ours.dtype == dtype
    reference = auraloss.freq.MultiResolutionSTFTLoss()
    for i, name in enumerate(cases):
        expected = reference(preds[i].reshape(1, 1, -1), targets[i].reshape(1, 1, -1)).item()
        assert ours[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-5), name
    assert ours[list(cases).index("identical")].item() == 0.0
    # Unequal lengths are trimmed to the shorter one.
    pred, target = cases["unequal_lengths"]
    expected = reference(_t(pred)[None], _t(target[:15000])[None]).item()
    assert metrics.mrstft(_t(pred), _t(target)).item() == pytest.approx(expected, rel=1e-6)


def test_mrstft_is_differentiable():
    x, y = _pair(4000)
    pred = torch.tensor(np.stack([y, 0.5 * y]), dtype=torch.float32, requires_grad=True)
    metrics.mrstft(pred, torch.tensor(np.stack([x, x]), dtype=torch.float32)).sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


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


def _tonal(n=8000, seed=4):
    """A harmonic tone plus a little noise: its autocorrelation has strong positive and negative peaks
    (period 72.7 samples), so a signed correlation peak at the wrong lag is easy to find."""
    t = np.arange(n) / 16000
    noise = 0.02 * np.random.default_rng(seed).standard_normal(n)
    return torch.from_numpy(0.5 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 440 * t + 1.0) + noise)


def test_align_keeps_an_inverted_copy_in_place_and_inverted():
    x = _tonal()
    aligned = metrics.align(-x, x)
    assert torch.equal(aligned, -x)  # lag 0, polarity kept
    # Waveform metrics still see the inversion: SNR of -x against x is 10 log10(1/4) = -6 dB.
    assert metrics.snr(aligned[None], x[None]).item() == pytest.approx(-6.0206, abs=1e-3)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_align_recovers_the_delay_of_a_tonal_copy_of_either_polarity(sign):
    x = _tonal()
    aligned = metrics.align(sign * torch.roll(x, 37), x)
    core = slice(800, 7200)
    torch.testing.assert_close(aligned[core], sign * x[core])


def test_align_leaves_a_phase_free_output_at_lag_zero():
    # Same magnitude spectrum as a broadband reference, random phases: a phase-free vocoder at best. (For a
    # steady tone a phase shift is a delay, so there a phase-free output can correlate; not tested here.)
    x = torch.from_numpy(_lowpassed_noise(8000, 6, cutoff_hz=4000.0))
    spectrum = np.fft.rfft(x.numpy())
    phases = np.exp(2j * np.pi * np.random.default_rng(5).random(spectrum.shape))
    phase_free = torch.from_numpy(np.fft.irfft(np.abs(spectrum) * phases, n=len(x)))
    assert torch.equal(metrics.align(phase_free, x), phase_free)


# ------------------------------------------------- waveform metrics of phase-free outputs: blank everywhere
def _finish(tmp_path, method, phase, out, seed_metrics=False, clip=None, clip_kind="other", degradation=None):
    """One row as `EvaluationRunner.finish` writes it (its record on disk), without a model. `clip`: ``(N,)``
    (default a tone) of kind `clip_kind`, on the task `degradation` (default identity)."""
    from gdr.evaluate import EvaluationRunner
    from gdr.sweep import Item

    x = _tonal(16000) if clip is None else clip
    item = Item(kind="baseline", clip="c", clip_hash="h", task="t", method=method,
                recipe={"degradation": degradation or {"name": "identity"}})
    clips = {"c": SimpleNamespace(waveform=x.float(), kind=clip_kind)}
    folder = RunFolder(tmp_path, ["c"], ["t"], [method])
    runner = SimpleNamespace(plan=SimpleNamespace(clips=clips), folder=folder, seed_metrics=seed_metrics)
    EvaluationRunner.finish(runner, item, out(x).float(), phase, 0.5, 10.0)
    record = json.loads(folder.record(item.key).read_text())
    return {**record["row"], "wav": record["wav"]}


def test_phase_free_rows_have_no_waveform_metrics_in_csv_and_report(tmp_path):
    from gdr.report import HEADER, NOT_MEANINGFUL, Report, Table, render_html, summary_table
    from gdr.stats import best_baseline, compare

    rows = [_finish(tmp_path, "degraded", True, lambda x: x + 0.05 * torch.randn(len(x), dtype=x.dtype)),
            _finish(tmp_path, "vocoder_roundtrip", False, lambda x: x.roll(100))]
    assert rows[1]["si_sdr"] == rows[1]["snr"] == "" and rows[1]["lsd"] != ""
    RunFolder(tmp_path).write_metrics(rows)
    read = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert read[1]["si_sdr"] == read[1]["snr"] == "" and float(read[0]["snr"]) > 10
    # A record written before waveform metrics were blanked still holds numbers: the report hides them too.
    stale = {**read[1], "method": "old_vocoder_roundtrip", "si_sdr": "-30.0", "snr": "-3.0"}
    table = summary_table([*read, stale])
    columns = {name: HEADER.index(name) for name in ("lsd", "si_sdr", "snr")}
    by_method = {row[1]: row for row in table}
    for method in ("vocoder_roundtrip", "old_vocoder_roundtrip"):
        assert by_method[method][columns["si_sdr"]] == by_method[method][columns["snr"]] == NOT_MEANINGFUL
        assert float(by_method[method][columns["lsd"]]) >= 0
        # The table shows the row's own LSD (the vocoder's output differs from x: a positive distance).
        assert float(by_method[method][columns["lsd"]]) == pytest.approx(float(read[1]["lsd"]), abs=1e-3)
        assert float(read[1]["lsd"]) > 0.01
    assert float(by_method["degraded"][columns["snr"]]) == pytest.approx(float(read[0]["snr"]), abs=1e-3)
    page = render_html(Report(means=Table(HEADER, table)))
    cells = page.split("<td>vocoder_roundtrip</td>")[1].split("</tr>")[0]
    assert f"<td>{NOT_MEANINGFUL}</td><td>{NOT_MEANINGFUL}</td>" in cells
    # Statistics never use them either.
    assert best_baseline([*read, stale], "t", "snr", ["vocoder_roundtrip", "old_vocoder_roundtrip", "degraded"]) \
        == "degraded"
    assert compare([*read, stale], "t", "snr", "old_vocoder_roundtrip", "degraded", n_boot=10) is None


def test_seed_metrics_equal_numpy():
    from gdr.metrics import seed_corr, seed_mse, seed_snr

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5000))
    x_hat = 0.8 * x + 0.3 * rng.standard_normal((3, 5000)) + 0.01
    pred, target = torch.as_tensor(x_hat), torch.as_tensor(x)
    np.testing.assert_allclose(seed_mse(pred, target).numpy(), ((x_hat - x) ** 2).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(seed_snr(pred, target).numpy(),
                               10 * np.log10((x**2).sum(1) / ((x - x_hat) ** 2).sum(1)), rtol=1e-12)
    np.testing.assert_allclose(seed_corr(pred, target).numpy(),
                               [np.corrcoef(a, b)[0, 1] for a, b in zip(x_hat, x)], rtol=1e-12)
    # Unaligned, as the seed computed them: a delayed copy is not a perfect reconstruction.
    delayed = torch.roll(target, 3, dims=-1)
    assert float(seed_corr(delayed, target)[0]) < 0.5


def test_the_seeds_metrics_see_the_raw_output_and_gdrs_the_aligned_one(tmp_path):
    """A copy delayed by 40 samples: gdr's metrics align it first (near-perfect), the seed's own metrics compare
    the raw output sample by sample, as the seed did (a large MSE, a correlation far from 1)."""
    x = _tonal(16000)
    row = _finish(tmp_path, "late", True, lambda v: torch.roll(v, 40), seed_metrics=True)
    raw = torch.roll(x, 40)
    assert float(row["seed_mse"]) == pytest.approx(float((raw - x).pow(2).mean()), rel=1e-4)
    assert float(row["seed_corr"]) < 0.9 and float(row["snr"]) > 20  # aligned: only the wrapped 40 samples differ


def test_every_metric_is_named_once_with_its_direction():
    """`gdr.metric_names` (read by configs and reports without torch) names exactly what is computed."""
    from gdr import metric_names, speech_metrics

    computed = {*metrics.PER_ITEM, *metrics.SEED_METRICS, *speech_metrics.SPEECH_METRICS}
    assert computed == set(metric_names.HIGHER_IS_BETTER)
    assert set(metrics.PER_ITEM) == {*metric_names.SPECTRAL_METRICS, *metric_names.PHASE_METRICS}
    assert [m for m, up in metric_names.HIGHER_IS_BETTER.items() if up] == [
        "si_sdr", "snr", "seed_snr", "seed_corr", *metric_names.SPEECH_METRICS]


# ------------------------------------------------- long audio: the same numbers, block by block
def test_stft_frames_are_the_whole_signal_stfts_columns():
    from gdr.audio import stft_frames

    x = torch.randn(5003, dtype=torch.float64)
    for n_fft, hop, win in ((1024, 160, 1024), (743, 160, 743), (2048, 240, 1200), (512, 50, 240)):
        window = torch.hann_window(win, dtype=torch.float64)
        whole = torch.stft(x, n_fft, hop, win, window=window, center=True, pad_mode="reflect", return_complex=True)
        frames = whole.shape[1]
        for start, stop in ((0, 1), (0, 3), (2, frames - 2), (frames - 3, frames), (0, frames)):
            torch.testing.assert_close(stft_frames(x, n_fft, hop, window, start, stop), whole[:, start:stop],
                                       rtol=1e-9, atol=1e-9)


def test_log_mel_frames_are_log_mels_rows():
    from gdr.audio import log_mel, log_mel_frames

    x = 1.5 * torch.randn(7777, dtype=torch.float64).clamp(-2, 2)  # beyond full scale: clipped as log_mel does
    whole = log_mel(x[None])[0, 0]
    for start, stop in ((0, 5), (5, 30), (40, whole.shape[0])):
        torch.testing.assert_close(log_mel_frames(x, start, stop), whole[start:stop], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_pred", [16000 * 3 + 77, 16000 * 3 - 501])
def test_streaming_score_equals_the_whole_signal_metrics(n_pred):
    """`metrics.score` (blocks of 7 frames here, so every metric crosses many block edges) equals the
    whole-signal functions, which the tests above hold to librosa, auraloss and torchmetrics."""
    gen = torch.Generator().manual_seed(0)
    target = (0.5 * torch.sin(torch.arange(48000) * 0.05) + 0.05 * torch.randn(48000, generator=gen)).float()
    pred = (0.9 * target[:n_pred] if n_pred <= 48000 else torch.cat([0.9 * target, torch.zeros(n_pred - 48000)]))
    pred = pred + 0.02 * torch.randn(n_pred, generator=gen)
    raw = pred.roll(3)
    got = metrics.score(pred, target, seed_metrics_of=raw, block_frames=7)
    for name, fn in metrics.PER_ITEM.items():
        want = float(fn(pred[None].double(), target[None].double())[0])
        assert got[name] == pytest.approx(want, rel=1e-7, abs=1e-9), name
    for name, fn in metrics.SEED_METRICS.items():
        want = float(fn(raw[None].double(), target[None].double())[0])
        assert got[name] == pytest.approx(want, rel=1e-7, abs=1e-9), name


def _align_whole_fft(pred, target, max_lag=800, min_corr=0.2):
    """The whole-signal FFT rule (gdr's earlier align), as an independent reference."""
    n = target.shape[-1]
    p, t = pred.double(), target.double()
    size = 1 << (p.shape[-1] + n).bit_length()
    corr = torch.fft.irfft(torch.fft.rfft(t, size) * torch.fft.rfft(p, size).conj(), size)
    lags = torch.cat([torch.arange(0, max_lag + 1), torch.arange(-max_lag, 0)])
    values = corr[lags % size].abs() / (p.norm() * t.norm()).clamp_min(1e-12)
    best = int(values.argmax())
    lag = int(lags[best]) if values[best] > min_corr else 0
    out = torch.zeros(n, dtype=pred.dtype)  # out[m] = pred[m - lag] wherever both exist
    for m in range(n):
        if 0 <= m - lag < pred.shape[-1]:
            out[m] = pred[m - lag]
    return out


@pytest.mark.parametrize("lag", [0, 37, -123, 799, -800])
@pytest.mark.parametrize("length_change", [0, 500, -700])
def test_blocked_alignment_equals_the_whole_signal_fft(lag, length_change):
    gen = torch.Generator().manual_seed(abs(lag) + length_change)
    target = torch.randn(20000, generator=gen)
    pred = -torch.roll(target, lag)[: 20000 + length_change] if length_change <= 0 else \
        torch.cat([-torch.roll(target, lag), torch.randn(length_change, generator=gen)])
    got = metrics.align(pred, target, block=1000)
    torch.testing.assert_close(got, _align_whole_fft(pred, target), rtol=0, atol=0)
