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


def align(pred: torch.Tensor, target: torch.Tensor, max_lag: int = 800, min_corr: float = 0.2) -> torch.Tensor:
    """Shift ``pred`` ``(N',)`` by an integer lag, then trim or zero-pad it to the length ``N`` of ``target`` ``(N,)``.

    Rule: the lag in ``[-max_lag, max_lag]`` that maximises the *absolute* normalised cross-correlation
    ``|sum_n target[n + lag] pred[n]| / (|pred| |target|)``; it is applied only if that peak exceeds
    `min_corr` (a phase-free output has no reliable peak and keeps lag 0). The absolute value makes the
    rule polarity-safe: for an inverted copy the signed correlation is most negative at the true lag,
    and its largest positive value sits at a wrong lag (half a period away for tonal audio). The sign is
    never flipped: an inverted output stays inverted, so waveform metrics see it (SNR of ``-x`` against
    ``x`` is -6 dB, not perfect). Returns ``(N,)`` in the dtype of `pred`.
    """
    n = target.shape[-1]
    p, t = pred.double(), target.double()
    size = 1 << (p.shape[-1] + n).bit_length()
    corr = torch.fft.irfft(torch.fft.rfft(t, size) * torch.fft.rfft(p, size).conj(), size)
    lags = torch.cat([torch.arange(0, max_lag + 1), torch.arange(-max_lag, 0)])
    values = corr[lags % size].abs() / (p.norm() * t.norm()).clamp_min(1e-12)
    best = int(values.argmax())
    lag = int(lags[best]) if values[best] > min_corr else 0
    shifted = torch.roll(torch.nn.functional.pad(pred, (max_lag, max_lag)), lag)[max_lag:max_lag + pred.shape[-1]]
    return torch.nn.functional.pad(shifted, (0, max(0, n - shifted.shape[-1])))[:n]


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
