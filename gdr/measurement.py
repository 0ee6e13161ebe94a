"""What guidance methods know about the measurement ``y``: a residual ``A(G(z)) - y`` and a target latent.

* `DecoderMeasurement`: the real thing. ``G = V o D`` (VAE decoder, vocoder), ``A`` a degradation
  operator. The residual lives in the **mel** domain (default: AudioLDM2's log-mel, where a
  phase-free vocoder can be compared with the input) or the **waveform** domain. When the
  operator is a mask on the mel grid (identity, noise, lowpass, gaps) the mel residual skips the
  vocoder: ``mask * (D(z) - M(y))``; otherwise it is ``M(A(V(D(z)))) - M(y)``.
* `LatentMeasurement`: ``y = mask * z + noise`` directly in latent space. Linear, with a
  closed-form proximal step: the Gaussian oracle tests use it, and it is a cheap surrogate.

The latent posterior samplers (`gdr.methods.latent_posterior`: PSLD's gluing term, ReSample's pixel stage) also
need the "pixel" side of the decoder: ``decode`` (``u = D(z)``, the mel for AudioLDM2), ``residual_from``
(the residual of a pixel estimate), ``glue`` (``u`` made consistent with ``y``: PSLD's
``A^T y + (I - A^T A) u``) and ``encode`` (``E``). ``residual(z) = residual_from(decode(z))``.
"""

from __future__ import annotations

import abc

import torch

from gdr.audio import log_mel
from gdr.backbone import AudioLDM2
from gdr.degradations import Degradation


class Measurement(abc.ABC):
    """Interface. ``z_y``: ``(B, C, L, F)`` target latent; ``latent_mask``: broadcastable to it, or None."""

    z_y: torch.Tensor
    latent_mask: torch.Tensor | None = None

    def residual(self, z0: torch.Tensor) -> torch.Tensor:
        """``A(G(z0)) - y`` (differentiable in `z0`), ``(B, ...)``."""
        return self.residual_from(self.decode(z0))

    @abc.abstractmethod
    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """``u = D(z0)``: the pixel-side estimate the residual is computed from (differentiable)."""

    @abc.abstractmethod
    def residual_from(self, u: torch.Tensor) -> torch.Tensor:
        """``A(V(u)) - y`` (or its mel) for a pixel-side estimate `u` (differentiable), ``(B, ...)``."""

    @abc.abstractmethod
    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """``E(u)``: back to a latent shaped like `z_y` (differentiable)."""

    @abc.abstractmethod
    def glue(self, u: torch.Tensor) -> torch.Tensor:
        """`u` made consistent with ``y``: PSLD's ``A^T y + (I - A^T A) u`` (differentiable in `u`).

        For an orthogonal projection ``A`` (masks, the ideal low-pass, the identity) this is also the point that
        gradient descent on ``|A u - y|^2`` started at `u` converges to (ReSample's pixel-space optimisation).
        """

    def consistent_latent(self, u: torch.Tensor) -> torch.Tensor:
        """``E(glue(u))``: the latent PSLD's gluing term pulls ``z0_hat`` toward, ``(B, C, L, F)``."""
        return self.encode(self.glue(u))

    def prox(self, z0_hat: torch.Tensor, weight: float, rho: float) -> torch.Tensor | None:
        """Closed form of ``argmin_z weight |residual(z)|^2 + rho |z - z0_hat|^2``, or None if there is none."""
        return None


class DecoderMeasurement(Measurement):
    """Measurement through AudioLDM2's decoder (see the module docstring).

    Args:
        model: the backbone.
        op: the degradation, already localised to this chunk.
        y: ``(B, N)`` measured waveform, ``N`` a multiple of ``model.samples_multiple``.
        domain: ``"mel"`` or ``"waveform"``.
    """

    def __init__(self, model: AudioLDM2, op: Degradation, y: torch.Tensor, domain: str = "mel"):
        self.model, self.op, self.y, self.domain = model, op, y, domain
        self.num_samples = y.shape[-1]
        with torch.no_grad():
            self.target_mel = log_mel(y)  # (B, 1, T, 64)
            self.z_y = model.mel_to_latent(self.target_mel)  # (B, 8, T / 4, 16)
        frames = self.target_mel.shape[2]
        mel_mask = op.mel_mask(frames, self.num_samples)
        self.mel_mask = None if mel_mask is None else mel_mask.to(y.device, y.dtype)
        latent_mask = op.latent_mask(self.z_y.shape[2], self.num_samples, model.vae_scale)
        self.latent_mask = None if latent_mask is None else latent_mask.to(y.device, self.z_y.dtype)
        self._vocoded: tuple[torch.Tensor, torch.Tensor] | None = None  # (mel, V(mel)) of the last vocoder pass

    def _waveform(self, mel: torch.Tensor) -> torch.Tensor:
        """``V(mel)`` ``(B, N)``; the same `mel` object twice (PSLD's residual and glue) costs one vocoder pass."""
        if self._vocoded is None or self._vocoded[0] is not mel:
            self._vocoded = (mel, self.model.mel_to_waveform(mel, self.num_samples).to(self.y.dtype))
        return self._vocoded[1]

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """``(B, 8, L, 16)`` -> ``(B, 1, T, 64)`` log-mel ``D(z0)``, trimmed to the target's frames."""
        return self.model.latent_to_mel(z0)[:, :, : self.target_mel.shape[2]].to(self.y.dtype)

    def residual_from(self, mel: torch.Tensor) -> torch.Tensor:
        if self.domain == "mel" and self.mel_mask is not None:
            return self.mel_mask * (mel - self.target_mel)
        wave = self.op(self._waveform(mel))
        if self.domain == "mel":
            return log_mel(wave) - self.target_mel
        return wave - self.y

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model.mel_to_latent(mel).to(self.z_y.dtype)

    def glue(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel-domain masks: ``m M(y) + (1 - m) mel`` (``A`` = the mask, exactly PSLD's formula). Otherwise in the
        waveform: ``x + (y - A(x))`` with ``x = V(mel)``, then the log-mel. That is ``A^T y + (I - A^T A) x`` for
        the orthogonal projections (gaps, identity, noise; the STFT low-pass up to its redundancy); for clipping
        it sets the reliable samples to ``y`` and clipped ones inside ``(-level, level)`` to ``y``'s clip value."""
        if self.domain == "mel" and self.mel_mask is not None:
            return self.mel_mask * self.target_mel + (1 - self.mel_mask) * mel
        x = self._waveform(mel)
        return log_mel(x + (self.y - self.op(x)))

    def consistent_latent(self, mel: torch.Tensor) -> torch.Tensor:
        if self.domain == "mel" and self.mel_mask is not None and bool(self.mel_mask.all()):
            return self.z_y  # glue(mel) = M(y) whatever mel is: E(M(y)) = z_y, no encoder pass
        return super().consistent_latent(mel)


class LatentMeasurement(Measurement):
    """``y = mask * z + n`` in latent space. ``y``, ``mask``: broadcastable ``(B, C, L, F)``."""

    def __init__(self, y: torch.Tensor, mask: torch.Tensor):
        self.y, self.mask = y, mask.to(y.dtype)
        self.z_y = y
        self.latent_mask = self.mask

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        return z0  # D = E = I: the latent is its own pixel side

    def residual_from(self, u: torch.Tensor) -> torch.Tensor:
        return self.mask * (u - self.y)

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def glue(self, u: torch.Tensor) -> torch.Tensor:
        # A = diag(m), the measured values A y: A^T (A y) + (I - A^T A) u = m^2 y + (1 - m^2) u.
        m2 = self.mask.pow(2)
        return m2 * self.y + (1 - m2) * u

    def prox(self, z0_hat, weight, rho):
        # Per element: minimise weight (m (z - y))^2 + rho (z - z0_hat)^2, the residual being m (z - y): the
        # data weight is m^2 (the same as m for the 0/1 masks the degradations make; any m >= 0 works).
        m2 = self.mask.pow(2) * weight
        return (m2 * self.y + rho * z0_hat) / (m2 + rho)
