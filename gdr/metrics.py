"""Metrics that mean something after a phase-free vocoder, as functions and torchmetrics classes.

Definitions (``shared/docs/methods.md`` §4); each is tested against the independent reference named
in brackets (``tests/test_metrics.py``):

* ``logmel_l1``: mean |M(x_hat) - M(x)| of AudioLDM2's own log-mel (natural log, floor 1e-5),
  both signals trimmed to the same length: exactly the representation the VAE sees.
  [numpy/librosa re-implementation of AudioLDM2's front end, ``tests/test_frontend.py``]
* ``lsd``: log-spectral distance as in the ssr_eval toolkit (NVSR/AudioSR papers):
  ``S = |STFT(x)|``, ``S_hat = |STFT(x_hat)|`` with ``n_fft = int(2048 sr / 44100)`` (743 at
  16 kHz), hop ``sr / 100``, Hann window, centred (reflect) frames;
  ``LSD = mean_t sqrt(mean_f (log10((S + 1e-12)^2 / (S_hat + 1e-12)^2))^2)``. The toolkit writes
  ``log10(S^2 / (S_hat + eps)^2 + eps)``, which scores two identical digitally silent frames as 12;
  gdr puts the epsilon on both sides, identical elsewhere (where S >> 1e-12). ``lsd_high``
  restricts the mean over f to bins at or above ``cutoff_hz`` (default 4 kHz). [librosa.stft + numpy]
* ``mrstft``: auraloss's own ``MultiResolutionSTFTLoss()`` with its defaults (Parallel WaveGAN
  resolutions ``MRSTFT_RESOLUTIONS``: FFT sizes 1024, 2048, 512, hops 120, 240, 50, Hann windows of
  600, 1200, 240 samples; centred reflect-padded frames; ``|S| = sqrt(max(|STFT|^2, 1e-8))``, so the
  magnitude floor is 1e-4), called once per item: the mean over resolutions of spectral convergence
  ``||S - S_hat||_F / ||S||_F`` plus mean ``|log S - log S_hat|``. Dimensionless. [auraloss itself]

* ``si_sdr`` (zero-mean, Le Roux et al.) and ``snr`` come from torchmetrics. They compare waveforms
  sample by sample, so they mean something only where the output keeps the input's phase (the
  degraded input and the DSP baselines); after a phase-free vocoder they are low for any method. The
  evaluation leaves them blank for rows that are not ``phase_coherent`` (metrics.csv: empty string;
  report tables: "—"), and statistics skip them. [numpy formulas]

The speech metrics (PESQ, STOI, ESTOI, DNSMOS, PLCMOS) and the rule of where they apply live in
`gdr.speech_metrics`; FAD (set-level, optional) in `gdr.fad`.

All take ``pred`` and ``target`` ``(B, N)`` waveforms at 16 kHz and return ``(B,)`` values.
Lower is better except for ``si_sdr`` and ``snr`` (`HIGHER_IS_BETTER`). Outputs are aligned to the
reference first (`align`: integer lag, polarity kept, then the reference's length).
"""

from __future__ import annotations

import functools
import math

import torch
from torchmetrics import Metric
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio, signal_noise_ratio

from gdr.audio import SAMPLE_RATE, log_mel
from gdr.metric_names import HIGHER_IS_BETTER, PHASE_METRICS  # noqa: F401  (re-read by stats and evaluate)

LSD_EPS = 1e-12
# (n_fft, hop, window) per resolution: auraloss.freq.MultiResolutionSTFTLoss's defaults, passed explicitly
# so that a change of auraloss's defaults cannot silently change the metric (the tests check they agree).
MRSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def _trim(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(pred.shape[-1], target.shape[-1])
    return pred[..., :n], target[..., :n]


def _magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    window = torch.hann_window(win, dtype=x.dtype, device=x.device)
    return torch.stft(x, n_fft, hop, win, window=window, center=True, pad_mode="reflect", return_complex=True).abs()


def logmel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of AudioLDM2 log-mels (`gdr.audio.log_mel`, natural log) per item.
    ``(B, N)`` each -> ``(B,)`` in nepers. Tested against a numpy/librosa re-implementation of AudioLDM2's
    front end (``tests/test_frontend.py::reference_log_mel``)."""
    pred, target = _trim(pred, target)
    return (log_mel(pred) - log_mel(target)).abs().mean(dim=(1, 2, 3))


def lsd(pred: torch.Tensor, target: torch.Tensor, *, sample_rate: int = SAMPLE_RATE,
        min_hz: float = 0.0) -> torch.Tensor:
    """Log-spectral distance per item (ssr_eval definition, see the module docstring; bins >= `min_hz`
    only). ``(B, N)`` each -> ``(B,)``, in log10 units of power (bels). Tested against ``librosa.stft`` and
    the formula in numpy."""
    pred, target = _trim(pred, target)
    n_fft, hop = int(2048 * sample_rate / 44100), int(sample_rate / 100)
    s, s_hat = _magnitude(target, n_fft, hop, n_fft), _magnitude(pred, n_fft, hop, n_fft)  # (B, F, T)
    freqs = torch.arange(s.shape[1], device=s.device) * sample_rate / n_fft
    keep = freqs >= min_hz
    log_ratio = 2 * torch.log10((s[:, keep] + LSD_EPS) / (s_hat[:, keep] + LSD_EPS))
    return torch.sqrt((log_ratio**2).mean(dim=1)).mean(dim=1)


@functools.lru_cache(maxsize=1)
def _mrstft_loss():
    # Imported here: auraloss is needed only when the metric is computed.
    from auraloss.freq import MultiResolutionSTFTLoss

    fft_sizes, hop_sizes, win_lengths = (list(v) for v in zip(*MRSTFT_RESOLUTIONS))
    return MultiResolutionSTFTLoss(fft_sizes=fft_sizes, hop_sizes=hop_sizes, win_lengths=win_lengths)


def mrstft(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT distance per item: auraloss's ``MultiResolutionSTFTLoss()`` (see the module
    docstring), both signals trimmed to the same length. ``(B, N)`` each -> ``(B,)``, dimensionless, in the
    dtype of the inputs. Differentiable (it is auraloss's training loss).

    auraloss reduces over the whole batch (its spectral convergence is one Frobenius norm over all items,
    and ``reduction="none"`` does not make it per item), so it is called once per item on ``(1, 1, N)``.
    Tested against ``auraloss.freq.MultiResolutionSTFTLoss()`` called directly.
    """
    pred, target = _trim(pred, target)
    loss = _mrstft_loss()
    return torch.stack([loss(p.reshape(1, 1, -1), t.reshape(1, 1, -1)) for p, t in zip(pred, target)])


class _MeanOverItems(Metric):
    """Mean of a per-item distance (the subclass's ``distance``) over every item seen, across DDP ranks."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _per_item(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self).distance(pred, target)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: ``(B, N)`` waveforms at 16 kHz."""
        values = self._per_item(pred.float(), target.float())
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


class LogMelL1(_MeanOverItems):
    """`logmel_l1` averaged over items."""

    distance = staticmethod(logmel_l1)


class LogSpectralDistance(_MeanOverItems):
    """`lsd` averaged over items; ``min_hz > 0`` gives the high-band variant."""

    def __init__(self, min_hz: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.min_hz = min_hz

    def _per_item(self, pred, target):
        return lsd(pred, target, min_hz=self.min_hz)


class MultiResolutionSTFT(_MeanOverItems):
    """`mrstft` (auraloss's ``MultiResolutionSTFTLoss``, per item) averaged over items."""

    distance = staticmethod(mrstft)


def si_sdr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Zero-mean SI-SDR in dB per item (torchmetrics' ``scale_invariant_signal_distortion_ratio``).
    ``(B, N)`` each -> ``(B,)``. Tested against the formula in numpy. Meaningless for phase-free outputs."""
    pred, target = _trim(pred, target)
    return scale_invariant_signal_distortion_ratio(pred, target, zero_mean=True)


def snr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SNR in dB per item (torchmetrics' ``signal_noise_ratio``): ``10 log10(|x|^2 / |x - x_hat|^2)``.
    ``(B, N)`` each -> ``(B,)``. Tested against the formula in numpy. Meaningless for phase-free outputs."""
    pred, target = _trim(pred, target)
    return signal_noise_ratio(pred, target)


def _lag_correlation(pred: torch.Tensor, target: torch.Tensor, max_lag: int, block: int) -> torch.Tensor:
    """``c[lag + max_lag] = sum_n target[n + lag] pred[n]`` for ``lag`` in ``[-max_lag, max_lag]`` (samples outside
    either signal count as 0), in float64, one block of `pred` at a time: memory O(block), not O(N)."""
    out = torch.zeros(2 * max_lag + 1, dtype=torch.float64)
    n_t = target.shape[-1]
    for s in range(0, pred.shape[-1], block):
        p = pred[s:s + block].double()
        lo, hi = s - max_lag, s + p.shape[-1] + max_lag  # the target samples this block can meet
        t = torch.zeros(hi - lo, dtype=torch.float64)
        t[max(0, -lo):max(0, -lo) + max(0, min(hi, n_t) - max(lo, 0))] = target[max(lo, 0):min(hi, n_t)].double()
        size = 1 << (t.shape[-1] + p.shape[-1]).bit_length()
        full = torch.fft.irfft(torch.fft.rfft(t, size) * torch.fft.rfft(p, size).conj(), size)
        out += full[: 2 * max_lag + 1]
    return out


def _sum_squares(x: torch.Tensor, block: int) -> float:
    return float(sum(x[s:s + block].double().pow(2).sum() for s in range(0, x.shape[-1], block)))


def align(pred: torch.Tensor, target: torch.Tensor, max_lag: int = 800, min_corr: float = 0.2,
          block: int = 1 << 16) -> torch.Tensor:
    """Shift ``pred`` ``(N',)`` by an integer lag, then trim or zero-pad it to the length ``N`` of ``target`` ``(N,)``.

    Rule: the lag in ``[-max_lag, max_lag]`` that maximises the *absolute* normalised cross-correlation
    ``|sum_n target[n + lag] pred[n]| / (|pred| |target|)``; it is applied only if that peak exceeds
    `min_corr` (a phase-free output has no reliable peak and keeps lag 0). The absolute value makes the
    rule polarity-safe: for an inverted copy the signed correlation is most negative at the true lag,
    and its largest positive value sits at a wrong lag (half a period away for tonal audio). The sign is
    never flipped: an inverted output stays inverted, so waveform metrics see it (SNR of ``-x`` against
    ``x`` is -6 dB, not perfect). The correlation is computed `block` samples at a time, so memory stays flat
    for long audio. Returns ``(N,)`` in the dtype of `pred`: a view of `pred` where the shifted output covers
    the whole target (lag <= 0 and `pred` long enough; the usual case), else a new zero-padded tensor.
    """
    n = target.shape[-1]
    corr = _lag_correlation(pred, target, max_lag, block)
    values = corr.abs() / max((_sum_squares(pred, block) * _sum_squares(target, block)) ** 0.5, 1e-12)
    best = int(values.argmax())
    lag = best - max_lag if values[best] > min_corr else 0
    # out[m] = pred[m - lag] where both exist
    lo, hi = max(0, lag), min(n, pred.shape[-1] + lag)
    if lo == 0 and hi == n:  # no zero padding needed: a view of `pred`, not a third whole-length buffer
        return pred[-lag:n - lag]
    out = torch.zeros(n, dtype=pred.dtype)
    if hi > lo:
        out[lo:hi] = pred[lo - lag:hi - lag]
    return out


# ------------------------------------------------------------------------------------------ streaming scores
BLOCK_FRAMES = 512  # STFT frames per block in `score` (5 s of audio at a 10 ms hop; ~30 MB of spectra)


def _frame_sums(pred: torch.Tensor, target: torch.Tensor, n_fft: int, hop: int, win: int, block: int):
    """Yield ``(S_hat, S)`` magnitude blocks ``(n_fft // 2 + 1, frames)`` in float64 of the centred STFTs."""
    from gdr.audio import frame_blocks, stft_frames

    window = torch.hann_window(win, dtype=torch.float64)
    frames = 1 + (pred.shape[-1] + 2 * (n_fft // 2) - n_fft) // hop  # torch.stft's count (odd n_fft: one fewer)
    for start, stop in frame_blocks(frames, block):
        yield (stft_frames(pred, n_fft, hop, window, start, stop, prepare=torch.Tensor.double).abs(),
               stft_frames(target, n_fft, hop, window, start, stop, prepare=torch.Tensor.double).abs())


@torch.no_grad()
def score(pred: torch.Tensor, target: torch.Tensor, *, seed_metrics_of: torch.Tensor | None = None,
          block_frames: int = BLOCK_FRAMES) -> dict[str, float]:
    """Every `PER_ITEM` metric of one output, computed block by block: memory does not grow with the length.

    Args:
        pred: ``(N',)`` output, already aligned (`align`); target: ``(N,)`` clean reference, 16 kHz.
        seed_metrics_of: the raw (unaligned) output ``(N'',)``; when given, the seed's metrics
            (`SEED_METRICS`) of it are added.

    Each value equals ``PER_ITEM[name](pred[None].double(), target[None].double())[0]`` (and the seed's functions)
    up to float64 summation order: every metric here is a sum over STFT frames, mel cells or samples, so the
    sums of blocks are the whole sums (``tests/test_metrics.py`` checks this against the whole-signal functions,
    which are checked against librosa, auraloss and torchmetrics).
    """
    from gdr.audio import frame_blocks, log_mel_frames, num_frames

    pred, target = _trim(pred, target)
    out: dict[str, float] = {}
    # log-mel L1: mean over the (frames, 64) cells AudioLDM2 keeps.
    total, count = 0.0, 0
    for start, stop in frame_blocks(num_frames(pred.shape[-1]), block_frames):
        diff = log_mel_frames(pred, start, stop, torch.float64) - log_mel_frames(target, start, stop, torch.float64)
        total, count = total + float(diff.abs().sum()), count + diff.numel()
    out["logmel_l1"] = total / count
    # LSD (full band and >= 4 kHz): mean over frames of the per-frame RMS log ratio.
    n_fft, hop = int(2048 * SAMPLE_RATE / 44100), int(SAMPLE_RATE / 100)
    high = torch.arange(n_fft // 2 + 1) * SAMPLE_RATE / n_fft >= 4000.0
    sums, frames = [0.0, 0.0], 0
    for s_hat, s in _frame_sums(pred, target, n_fft, hop, n_fft, block_frames):
        log_ratio2 = (2 * torch.log10((s + LSD_EPS) / (s_hat + LSD_EPS))) ** 2
        sums[0] += float(log_ratio2.mean(dim=0).sqrt().sum())
        sums[1] += float(log_ratio2[high].mean(dim=0).sqrt().sum())
        frames += s.shape[1]
    out["lsd"], out["lsd_high"] = sums[0] / frames, sums[1] / frames
    # MR-STFT (auraloss's definition): per resolution, spectral convergence + mean |log magnitude difference|.
    per_resolution = []
    for n_fft, hop, win in MRSTFT_RESOLUTIONS:
        diff2 = ref2 = log_l1 = 0.0
        cells = 0
        for s_hat, s in _frame_sums(pred, target, n_fft, hop, win, block_frames):
            s_hat, s = s_hat.pow(2).clamp_min(1e-8).sqrt(), s.pow(2).clamp_min(1e-8).sqrt()  # auraloss's floor
            diff2 += float((s - s_hat).pow(2).sum())
            ref2 += float(s.pow(2).sum())
            log_l1 += float((s_hat.log() - s.log()).abs().sum())
            cells += s.numel()
        per_resolution.append((diff2 / ref2) ** 0.5 + log_l1 / cells)
    out["mrstft"] = sum(per_resolution) / len(per_resolution)
    # SNR and zero-mean SI-SDR from sums over samples.
    sums = _sample_sums(pred, target)
    n = pred.shape[-1]
    eps = torch.finfo(torch.float64).eps  # torchmetrics' own
    out["snr"] = 10 * math.log10((sums["tt"] + eps) / (sums["dd"] + eps))
    cpt = sums["pt"] - sums["p"] * sums["t"] / n
    ctt, cpp = sums["tt"] - sums["t"] ** 2 / n, sums["pp"] - sums["p"] ** 2 / n
    alpha = (cpt + eps) / (ctt + eps)
    signal = alpha**2 * ctt  # |alpha t|^2 of the centred signals
    noise = cpp - 2 * alpha * cpt + alpha**2 * ctt  # |p - alpha t|^2
    out["si_sdr"] = 10 * math.log10((signal + eps) / (max(noise, 0.0) + eps))
    if seed_metrics_of is not None:
        raw, ref = _trim(seed_metrics_of, target)
        s2 = _sample_sums(raw, ref)
        m = raw.shape[-1]
        out["seed_mse"] = s2["dd"] / m
        out["seed_snr"] = 10 * math.log10(s2["tt"] / max(s2["dd"], 1e-20))
        cov = s2["pt"] - s2["p"] * s2["t"] / m
        var_p, var_t = s2["pp"] - s2["p"] ** 2 / m, s2["tt"] - s2["t"] ** 2 / m
        out["seed_corr"] = cov / max(math.sqrt(max(var_p, 0.0) * max(var_t, 0.0)), 1e-20)
    return out


def _sample_sums(pred: torch.Tensor, target: torch.Tensor, block: int = 1 << 18) -> dict[str, float]:
    """Float64 sums over samples: p, t, p^2, t^2, p t and (p - t)^2, a block at a time."""
    sums = dict.fromkeys(("p", "t", "pp", "tt", "pt", "dd"), 0.0)
    for s in range(0, pred.shape[-1], block):
        p, t = pred[s:s + block].double(), target[s:s + block].double()
        for key, value in (("p", p.sum()), ("t", t.sum()), ("pp", p @ p), ("tt", t @ t), ("pt", p @ t),
                           ("dd", (p - t) @ (p - t))):
            sums[key] += float(value)
    return sums


# ------------------------------------------------------------------------------------------ the seed's metrics
def seed_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed experiment's waveform MSE ``mean((x_hat - x)^2)`` per item, on the raw output (no alignment),
    trimmed to the shorter length. ``(B, N)`` each -> ``(B,)``. Tested against numpy."""
    pred, target = _trim(pred, target)
    return (pred - target).pow(2).mean(dim=-1)


def seed_snr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed experiment's SNR in dB, ``10 log10(sum x^2 / sum (x - x_hat)^2)``, raw output, no alignment.
    ``(B, N)`` each -> ``(B,)``. Tested against numpy."""
    pred, target = _trim(pred, target)
    return 10 * torch.log10(target.pow(2).sum(-1) / (pred - target).pow(2).sum(-1).clamp_min(1e-20))


def seed_corr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The seed experiment's correlation: Pearson's r of the raw output and the input (``numpy.corrcoef``).
    ``(B, N)`` each -> ``(B,)``. Tested against numpy."""
    pred, target = _trim(pred, target)
    p, t = pred - pred.mean(-1, keepdim=True), target - target.mean(-1, keepdim=True)
    return (p * t).sum(-1) / (p.norm(dim=-1) * t.norm(dim=-1)).clamp_min(1e-20)


# The seed's own numbers (``report.seed_metrics``): waveform comparisons of the output, unaligned, as the seed
# computed them against its input. They are reported beside gdr's metrics so that its claim can be checked,
# and labelled: after the phase-free vocoder they measure phase luck as much as quality.
SEED_METRICS = {"seed_mse": seed_mse, "seed_snr": seed_snr, "seed_corr": seed_corr}

# name -> per-item function; the evaluation writes one column per entry.
PER_ITEM = {
    "logmel_l1": logmel_l1,
    "lsd": lsd,
    "lsd_high": lambda p, t: lsd(p, t, min_hz=4000.0),
    "mrstft": mrstft,
    "si_sdr": si_sdr,
    "snr": snr,
}
