"""Metrics that mean something after a phase-free vocoder, as functions and torchmetrics classes.

Definitions (``shared/docs/methods.md`` §4):

* ``logmel_l1``: mean |M(x_hat) - M(x)| of AudioLDM2's own log-mel (natural log, floor 1e-5),
  both signals trimmed to the same length: exactly the representation the VAE sees.
* ``lsd``: log-spectral distance as in the ssr_eval toolkit (NVSR/AudioSR papers):
  ``S = |STFT(x)|``, ``S_hat = |STFT(x_hat)|`` with ``n_fft = int(2048 sr / 44100)`` (743 at
  16 kHz), hop ``sr / 100``, Hann window, centred (reflect) frames;
  ``LSD = mean_t sqrt(mean_f (log10((S + 1e-12)^2 / (S_hat + 1e-12)^2))^2)``. The toolkit writes
  ``log10(S^2 / (S_hat + eps)^2 + eps)``, which scores two identical digitally silent frames as 12;
  gdr puts the epsilon on both sides, identical elsewhere (where S >> 1e-12). ``lsd_high``
  restricts the mean over f to bins at or above ``cutoff_hz`` (default 4 kHz).
* ``mrstft``: multi-resolution STFT distance (Parallel WaveGAN / auraloss defaults): mean over
  (1024, 120, 600), (2048, 240, 1200), (512, 50, 240) of spectral convergence + mean |log S - log S_hat|.

* ``si_sdr`` (zero-mean, Le Roux et al.) and ``snr`` come from torchmetrics. They compare waveforms
  sample by sample, so they mean something only where the output keeps the input's phase (the
  degraded input and the DSP baselines); after a phase-free vocoder they are low for any method. The
  evaluation computes them everywhere but flags rows (``phase_coherent``) and the report and verdicts
  use them only on flagged rows.

All take ``pred`` and ``target`` ``(B, N)`` waveforms at 16 kHz and return ``(B,)`` values.
Lower is better except for ``si_sdr`` and ``snr`` (`HIGHER_IS_BETTER`). Outputs are aligned to the
reference first (`align`: integer lag, then the reference's length).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio, signal_noise_ratio

from gdr.audio import SAMPLE_RATE, log_mel

LSD_EPS = 1e-12
MRSTFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def _trim(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(pred.shape[-1], target.shape[-1])
    return pred[..., :n], target[..., :n]


def _magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    window = torch.hann_window(win, dtype=x.dtype, device=x.device)
    return torch.stft(x, n_fft, hop, win, window=window, center=True, pad_mode="reflect", return_complex=True).abs()


def logmel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute log-mel difference per item. ``(B, N)`` each -> ``(B,)``."""
    pred, target = _trim(pred, target)
    return (log_mel(pred) - log_mel(target)).abs().mean(dim=(1, 2, 3))


def lsd(pred: torch.Tensor, target: torch.Tensor, *, sample_rate: int = SAMPLE_RATE,
        min_hz: float = 0.0) -> torch.Tensor:
    """Log-spectral distance per item (ssr_eval definition; bins >= `min_hz` only). ``(B, N)`` -> ``(B,)``."""
    pred, target = _trim(pred, target)
    n_fft, hop = int(2048 * sample_rate / 44100), int(sample_rate / 100)
    s, s_hat = _magnitude(target, n_fft, hop, n_fft), _magnitude(pred, n_fft, hop, n_fft)  # (B, F, T)
    freqs = torch.arange(s.shape[1], device=s.device) * sample_rate / n_fft
    keep = freqs >= min_hz
    log_ratio = 2 * torch.log10((s[:, keep] + LSD_EPS) / (s_hat[:, keep] + LSD_EPS))
    return torch.sqrt((log_ratio**2).mean(dim=1)).mean(dim=1)


def mrstft(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Multi-resolution STFT distance per item. ``(B, N)`` each -> ``(B,)``."""
    pred, target = _trim(pred, target)
    total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for n_fft, hop, win in MRSTFT_RESOLUTIONS:
        s, s_hat = _magnitude(target, n_fft, hop, win), _magnitude(pred, n_fft, hop, win)
        sc = torch.linalg.vector_norm(s - s_hat, dim=(1, 2)) / torch.linalg.vector_norm(s, dim=(1, 2)).clamp_min(eps)
        mag = (torch.log(s.clamp_min(eps)) - torch.log(s_hat.clamp_min(eps))).abs().mean(dim=(1, 2))
        total = total + sc + mag
    return total / len(MRSTFT_RESOLUTIONS)


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
    """`mrstft` averaged over items."""

    distance = staticmethod(mrstft)


def si_sdr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Zero-mean SI-SDR in dB per item (torchmetrics). ``(B, N)`` each -> ``(B,)``."""
    pred, target = _trim(pred, target)
    return scale_invariant_signal_distortion_ratio(pred, target, zero_mean=True)


def snr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SNR in dB per item (torchmetrics): ``10 log10(|x|^2 / |x - x_hat|^2)``. ``(B, N)`` each -> ``(B,)``."""
    pred, target = _trim(pred, target)
    return signal_noise_ratio(pred, target)


def align(pred: torch.Tensor, target: torch.Tensor, max_lag: int = 800, min_corr: float = 0.2) -> torch.Tensor:
    """Shift ``pred`` ``(N',)`` by the integer lag in ``[-max_lag, max_lag]`` that maximises its normalised
    cross-correlation with ``target`` ``(N,)`` (only if that peak exceeds `min_corr`: a phase-free output
    has no reliable peak), then trim or zero-pad it to ``N``."""
    n = target.shape[-1]
    p, t = pred.double(), target.double()
    size = 1 << (p.shape[-1] + n).bit_length()
    corr = torch.fft.irfft(torch.fft.rfft(t, size) * torch.fft.rfft(p, size).conj(), size)
    lags = torch.cat([torch.arange(0, max_lag + 1), torch.arange(-max_lag, 0)])
    values = corr[lags % size] / (p.norm() * t.norm()).clamp_min(1e-12)
    best = int(values.argmax())
    lag = int(lags[best]) if values[best] > min_corr else 0
    shifted = torch.roll(torch.nn.functional.pad(pred, (max_lag, max_lag)), lag)[max_lag:max_lag + pred.shape[-1]]
    return torch.nn.functional.pad(shifted, (0, max(0, n - shifted.shape[-1])))[:n]


# name -> per-item function; the evaluation writes one column per entry.
PER_ITEM = {
    "logmel_l1": logmel_l1,
    "lsd": lsd,
    "lsd_high": lambda p, t: lsd(p, t, min_hz=4000.0),
    "mrstft": mrstft,
    "si_sdr": si_sdr,
    "snr": snr,
}
HIGHER_IS_BETTER = {"logmel_l1": False, "lsd": False, "lsd_high": False, "mrstft": False, "si_sdr": True, "snr": True}
PHASE_METRICS = ("si_sdr", "snr")
