"""Degradation operators ``y = A(x) (+ n)`` on 16 kHz waveforms, registered by name.

Each operator has two faces:

* ``forward(x)`` = ``A(x)``: deterministic, differentiable, no noise. Guidance methods use it to
  compare a decoded estimate with the measurement.
* ``measure(x, generator)`` = ``A(x) + n``: what the experiment observes (adds noise where the
  operator has some).

Linear operators whose effect is (approximately) a mask on AudioLDM2's mel or latent grid expose
``mel_mask(frames, num_samples)`` / ``latent_mask(...)`` (1 = reliable, 0 = unknown); the others
return None. Parameters are checked on construction; ones that depend on the clip (gaps longer
than the clip) are checked on first use. Shapes: ``x``, ``y`` ``(B, N)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gdr import checks
from gdr.audio import F_MAX, HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE
from gdr.errors import ConfigError
from gdr.registry import Registry

DEGRADATIONS = Registry("degradation")


class Degradation(nn.Module):
    """Base: the identity operator. Subclasses override what they change."""

    name = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x)``, ``(B, N)`` -> ``(B, N)``."""
        return x

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``y = A(x) + n`` for this operator's noise model (none by default)."""
        return self(x)

    def mel_mask(self, frames: int, num_samples: int) -> torch.Tensor | None:
        """``(1, 1, frames, 64)`` reliability of the mel of ``A(x)`` (1 = equals the mel of x), or None."""
        return torch.ones(1, 1, frames, N_MELS)

    @property
    def has_mel_mask(self) -> bool:
        """Whether `mel_mask` / `latent_mask` return masks (checkable before any clip is seen)."""
        return True

    def latent_mask(self, latent_frames: int, num_samples: int, scale: int = 4) -> torch.Tensor | None:
        """``(1, 1, latent_frames, 64 // scale)``: a latent cell is reliable when all its mel cells are,
        dilated by one latent cell for the VAE's receptive field."""
        mel = self.mel_mask(latent_frames * scale, num_samples)
        if mel is None:
            return None
        cells = -torch.nn.functional.max_pool2d(-mel, scale)  # min-pool: all 4x4 mel cells reliable
        if bool(cells.all()):
            return cells
        return -torch.nn.functional.max_pool2d(-cells, 3, stride=1, padding=1)  # erode the reliable region

    def sample_support(self, num_samples: int) -> torch.Tensor | None:
        """``(num_samples,)`` position-dependent part of the operator (gap masks), or None if it has none.

        Chunked processing slices this along with the signal and hands each chunk's slice to
        `localize`, so an operator defined on the whole clip is applied consistently per chunk.
        """
        return None

    def localize(self, support: torch.Tensor | None) -> "Degradation":
        """This operator restricted to a chunk whose slice of `sample_support` is `support` ``(n,)``."""
        return self

    def describe(self) -> str:
        return self.name


@DEGRADATIONS.register("identity")
class Identity(Degradation):
    """``A = I``: the seed's task, reconstruct the clean target itself."""


@DEGRADATIONS.register("noise")
class AdditiveNoise(Degradation):
    """``y = x + n`` with white or pink noise at ``snr_db`` (``10 log10(|x|^2 / |n|^2)``); ``A = I``."""

    name = "noise"

    def __init__(self, snr_db: float = 10.0, color: str = "white"):
        super().__init__()
        checks.number("noise.snr_db", snr_db, low=-30.0, high=80.0)
        checks.choice("noise.color", color, ("white", "pink"))
        self.snr_db, self.color = float(snr_db), color

    def measure(self, x, generator=None):
        n = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        if self.color == "pink":  # 1/f power: scale the spectrum by 1/sqrt(f), DC removed
            spec = torch.fft.rfft(n, dim=-1)
            f = torch.arange(spec.shape[-1], dtype=torch.float64, device=x.device)
            spec = spec / f.clamp_min(1.0).sqrt()
            spec[..., 0] = 0
            n = torch.fft.irfft(spec, n=x.shape[-1], dim=-1)
        x64 = x.double()
        gain = x64.norm(dim=-1, keepdim=True) / (n.norm(dim=-1, keepdim=True) * 10 ** (self.snr_db / 20))
        return (x64 + gain * n).to(x.dtype)

    def describe(self):
        return f"noise({self.color}, {self.snr_db:g} dB)"


@DEGRADATIONS.register("clip")
class HardClip(Degradation):
    """``y = clamp(x, -level, level)``; inputs are peak-normalised to 0.5, so level is in (0, 0.5)."""

    name = "clip"

    def __init__(self, level: float = 0.1):
        super().__init__()
        checks.number("clip.level", level, low=0.0, high=0.5, low_open=True, high_open=True)
        self.level = float(level)

    def forward(self, x):
        return x.clamp(-self.level, self.level)

    has_mel_mask = False  # clipping spreads energy over all bands: no reliable mel cells

    def mel_mask(self, frames, num_samples):
        return None

    def describe(self):
        return f"clip({self.level:g})"


@DEGRADATIONS.register("lowpass")
class LowPass(Degradation):
    """Ideal STFT low-pass (Hann 1024, hop 256): bins above ``cutoff_hz`` set to zero.

    Linear and differentiable; its pseudo-inverse keeps the measured low band. Applying it twice
    changes the result slightly (the STFT is redundant), so it is not an exact projection.
    """

    name = "lowpass"
    n_fft, hop = 1024, 256

    def __init__(self, cutoff_hz: float = 4000.0):
        super().__init__()
        checks.number("lowpass.cutoff_hz", cutoff_hz, low=0.0, high=F_MAX, low_open=True, high_open=True)
        self.cutoff_hz = float(cutoff_hz)

    def forward(self, x):
        window = torch.hann_window(self.n_fft, dtype=x.dtype, device=x.device)
        spec = torch.stft(x, self.n_fft, self.hop, window=window, center=True, return_complex=True)
        freqs = torch.arange(spec.shape[-2], device=x.device) * SAMPLE_RATE / self.n_fft
        spec = spec * (freqs <= self.cutoff_hz).to(x.dtype)[:, None]
        return torch.istft(spec, self.n_fft, self.hop, window=window, center=True, length=x.shape[-1])

    def mel_mask(self, frames, num_samples):
        from gdr.audio import _mel_filterbank_f64

        fb = _mel_filterbank_f64()  # (513, 64)
        freqs = torch.arange(fb.shape[0], dtype=torch.float64) * SAMPLE_RATE / N_FFT
        top = torch.stack([freqs[fb[:, m] > 0].max() for m in range(N_MELS)])  # upper edge of each filter
        return (top <= self.cutoff_hz).float().view(1, 1, 1, N_MELS).expand(1, 1, frames, N_MELS).clone()

    def describe(self):
        return f"lowpass({self.cutoff_hz:g} Hz)"


@DEGRADATIONS.register("gaps")
class Gaps(Degradation):
    """``y = m * x``: ``count`` zeroed spans of ``length_ms`` at positions drawn from ``seed``.

    Positions depend only on (seed, clip length), so ``forward`` is a fixed linear operator. ``spans``
    (``[[start_s, end_s], ...]`` in seconds) gives the positions instead (``gdr restore`` passes what it
    detected): each covers every 16 kHz sample it touches (start floored, end ceiled).
    """

    name = "gaps"

    def __init__(self, length_ms: float = 100.0, count: int = 3, seed: int = 0, spans: list | None = None):
        super().__init__()
        self.spans = None if spans is None else _check_spans(spans)
        checks.number("gaps.length_ms", length_ms, low=0.0, high=60_000.0, low_open=True)
        checks.integer("gaps.count", count, low=1)
        self.length_ms, self.count, self.seed = float(length_ms), count, int(seed)
        self.fixed_mask: torch.Tensor | None = None  # set by `localize` for one chunk

    def sample_mask(self, num_samples: int) -> torch.Tensor:
        """``(num_samples,)`` 1 outside the gaps, 0 inside; gaps are spread over equal segments."""
        if self.fixed_mask is not None:
            if self.fixed_mask.numel() != num_samples:
                raise ValueError(f"gap mask has {self.fixed_mask.numel()} samples, signal has {num_samples}")
            return self.fixed_mask
        if self.spans is not None:
            return _spans_mask(self.spans, num_samples)
        gap = int(round(self.length_ms * SAMPLE_RATE / 1000))
        segment = num_samples // self.count
        if gap * self.count >= num_samples or gap >= segment:
            raise ConfigError(f"gaps: {self.count} gaps of {self.length_ms:g} ms do not fit in a clip of "
                              f"{num_samples / SAMPLE_RATE:.2f} s")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + num_samples)
        mask = torch.ones(num_samples)
        for k in range(self.count):
            start = k * segment + int(torch.randint(0, segment - gap + 1, (1,), generator=g))
            mask[start:start + gap] = 0
        return mask

    def forward(self, x):
        return x * self.sample_mask(x.shape[-1]).to(x.device, x.dtype)

    def sample_support(self, num_samples):
        return self.sample_mask(num_samples)

    def localize(self, support):
        local = Gaps(self.length_ms, self.count, self.seed, self.spans)
        local.fixed_mask = support.detach().float().cpu()
        return local

    def mel_mask(self, frames, num_samples):
        # A frame is reliable when its 1024-sample window (centred on frame * 160) misses every gap.
        touched = 1 - self.sample_mask(num_samples)
        padded = torch.nn.functional.pad(touched, (N_FFT // 2, N_FFT // 2 + frames * HOP_LENGTH))
        windows = padded.unfold(0, N_FFT, HOP_LENGTH)[:frames]
        reliable = (windows.sum(dim=1) == 0).float()
        return reliable.view(1, 1, frames, 1).expand(1, 1, frames, N_MELS).clone()

    def describe(self):
        if self.spans is not None:
            return f"gaps({len(self.spans)} spans, {1000 * sum(e - s for s, e in self.spans):.0f} ms)"
        return f"gaps({self.count} x {self.length_ms:g} ms)"


def _check_spans(spans) -> list[tuple[float, float]]:
    """``[[start_s, end_s], ...]`` with ``0 <= start < end``, as float pairs; one-line `ConfigError` otherwise."""
    out = []
    for span in spans:
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ConfigError(f"gaps.spans must be [start_s, end_s] pairs, got {span!r}")
        start, end = (checks.number("gaps.spans (seconds)", v, low=0.0) for v in span)
        if end <= start:
            raise ConfigError(f"gaps.spans: a span must end after it starts, got [{start:g}, {end:g}]")
        out.append((start, end))
    return out


def _spans_mask(spans: list[tuple[float, float]], num_samples: int) -> torch.Tensor:
    """``(num_samples,)`` 1 outside `spans`, 0 on every 16 kHz sample a span touches."""
    mask = torch.ones(num_samples)
    for start, end in spans:
        if end * SAMPLE_RATE > num_samples + 1e-6:
            raise ConfigError(f"gaps: the span {start:g}-{end:g} s ends past the end of the clip "
                              f"({num_samples / SAMPLE_RATE:.3f} s)")
        # The 1e-6 keeps a span given in whole samples (k / 16000 s) on exactly those samples.
        mask[int(math.floor(start * SAMPLE_RATE + 1e-6)):int(math.ceil(end * SAMPLE_RATE - 1e-6))] = 0
    if not bool(mask.any()):
        raise ConfigError("gaps: the spans cover the whole clip: nothing is left to guide the reconstruction")
    return mask


@DEGRADATIONS.register("compose")
class Compose(Degradation):
    """Apply several operators in order: ``ops: [{name: lowpass, cutoff_hz: 4000}, {name: noise, ...}]``."""

    name = "compose"

    def __init__(self, ops: list[dict] | None = None):
        super().__init__()
        if not ops:
            raise ConfigError("compose needs a non-empty list of degradations (ops)")
        self.ops = nn.ModuleList(build_degradation(op) for op in ops)

    def forward(self, x):
        for op in self.ops:
            x = op(x)
        return x

    def measure(self, x, generator=None):
        for op in self.ops:
            x = op.measure(x, generator)
        return x

    def sample_support(self, num_samples):
        parts = [op.sample_support(num_samples) for op in self.ops]
        parts = [p for p in parts if p is not None]
        return torch.stack(parts).prod(dim=0) if parts else None

    def localize(self, support):
        local = Compose.__new__(Compose)
        nn.Module.__init__(local)
        local.ops = nn.ModuleList(op.localize(support) for op in self.ops)
        return local

    @property
    def has_mel_mask(self):
        return all(op.has_mel_mask for op in self.ops)

    def mel_mask(self, frames, num_samples):
        masks = [op.mel_mask(frames, num_samples) for op in self.ops]
        if any(m is None for m in masks):
            return None
        return torch.stack(masks).prod(dim=0)

    def describe(self):
        return " -> ".join(op.describe() for op in self.ops)


class PerItem(Degradation):
    """A batch whose rows each have their own localised operator (the gaps of each chunk, `localize`).

    ``A(x)[b] = ops[b](x[b])``; masks are each row's, stacked along the batch: ``(B, 1, frames, 64)``. What lets
    chunks of different clips (different gap positions) share one sampling run, each keeping its own mask.
    """

    def __init__(self, ops: list[Degradation]):
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.name = ops[0].describe() if ops else "per-item"

    def forward(self, x):
        """``x``: ``(B, N)``, ``B = len(ops)``."""
        if x.shape[0] != len(self.ops):
            raise ValueError(f"{len(self.ops)} operators for a batch of {x.shape[0]}")
        return torch.cat([op(x[b:b + 1]) for b, op in enumerate(self.ops)])

    @property
    def has_mel_mask(self):
        return all(op.has_mel_mask for op in self.ops)

    def mel_mask(self, frames, num_samples):
        masks = [op.mel_mask(frames, num_samples) for op in self.ops]
        if any(m is None for m in masks):
            return None
        return torch.cat(masks)

    def describe(self):
        return self.name


def build_degradation(spec: dict | str) -> Degradation:
    """``"lowpass"`` or ``{"name": "lowpass", "cutoff_hz": 4000}`` -> operator."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name is None:
        raise ConfigError(f"degradation needs a name; known: {', '.join(sorted(DEGRADATIONS))}")
    return DEGRADATIONS.build(name, **spec)
