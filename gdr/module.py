"""`GuidedReconstructor`: the LightningModule around AudioLDM2 and the target-guided sampler.

It owns the pieces of one reconstruction recipe (backbone, degradation operator, guidance method,
strength schedule, sampler settings) and exposes:

* ``reconstruct(y, generator, support)``: a batch of measured chunks ``(B, n)`` -> reconstructions ``(B, n)``;
* ``reconstruct_clip(y, seed)``: a whole clip ``(N,)`` of any length through the overlapping-chunk path;
* ``predict_step``: ``Trainer.predict`` over a dataloader of clips x seeds.
"""

from __future__ import annotations

import hashlib

import lightning as L
import torch

from gdr.backbone import AudioLDM2
from gdr.chunking import process_in_chunks
from gdr.conditioning import Conditioning
from gdr.degradations import Degradation
from gdr.measurement import DecoderMeasurement
from gdr.methods.base import Guidance
from gdr.sampler import sample
from gdr.schedulers import check_sampling, make_scheduler
from gdr.schedules import Schedule


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any printable parts (clip name, seed index, ...)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def guided_reconstruction(model: AudioLDM2, degradation: Degradation, guidance: Guidance, schedule, y: torch.Tensor, *,
                          support: torch.Tensor | None = None, scheduler=None, steps: int = 50, eta: float = 0.0,
                          domain: str = "mel", return_denoised: bool = True,
                          generator: torch.Generator | list[torch.Generator] | None = None,
                          grad_from: int | None = None, checkpoint: bool = False,
                          progress: bool = False, conditioning: Conditioning | None = None) -> torch.Tensor:
    """Guided reconstruction of a batch of measured chunks (shared by evaluation and training).

    Args:
        y: ``(B, n)`` measured waveforms at 16 kHz (any ``n >= 1024``; padded internally).
        support: ``(B, n)`` slice of ``degradation.sample_support`` (gap masks), or None.
        scheduler: defaults to the model's (DDIM). grad_from, checkpoint: see `gdr.sampler.sample`; with
            a `grad_from` the decoding to waveform keeps its graph too (training).
        generator: one generator for the batch, or one per item (each item then has its own stream whatever
            the batch it is in).
        conditioning: what the UNet is conditioned on (text, CLAP audio, CFG; `gdr.conditioning`), one
            condition for the whole batch or per-item streams; None = the model's null condition.

    Returns:
        ``(B, n)`` float32 reconstructions.
    """
    n = y.shape[-1]
    y_pad = model.pad_to_grid(y)
    if support is None:
        groups = [(slice(0, y.shape[0]), degradation)]
    else:  # operators with a position-dependent part (gaps) differ per chunk
        groups = [(slice(b, b + 1), degradation.localize(model.pad_to_grid(support[b])))
                  for b in range(y.shape[0])]
    outs = []
    for items, op in groups:
        measurement = DecoderMeasurement(model, op, y_pad[items], domain=domain)
        condition = None if conditioning is None else conditioning.select(items)
        z = sample(model.denoiser(condition), scheduler or model.scheduler, guidance, schedule, measurement,
                   steps=steps, eta=eta, generator=generator[items] if isinstance(generator, list) else generator,
                   return_denoised=return_denoised, progress=progress, grad_from=grad_from, checkpoint=checkpoint)
        with torch.set_grad_enabled(grad_from is not None):
            outs.append(model.latent_to_waveform(z, y_pad.shape[-1])[:, :n])
    return torch.cat(outs).float()


class GuidedReconstructor(L.LightningModule):
    """Target-guided reconstruction with AudioLDM2.

    Args:
        model: the backbone (frozen).
        degradation: the operator ``A`` the measurement went through (``identity`` for plain reconstruction).
        guidance, schedule: the method and its per-step strength.
        steps: inference steps; eta: DDIM eta; scheduler: ``ddim`` or ``ddpm`` (built from the model's config).
        domain: where the data-consistency residual lives, ``mel`` or ``waveform``.
        chunk_samples, overlap_samples, chunk_batch: the long-audio path.
        conditioning: the UNet's condition for every chunk (None = the model's null condition).
    """

    def __init__(self, model: AudioLDM2, degradation: Degradation, guidance: Guidance, schedule: Schedule, *,
                 steps: int = 50, eta: float = 0.0, scheduler: str = "ddim", domain: str = "mel",
                 return_denoised: bool = True, chunk_samples: int = 163_840, overlap_samples: int = 20_480,
                 chunk_batch: int = 1, progress: bool = False, conditioning: Conditioning | None = None):
        super().__init__()
        check_sampling(steps, eta, scheduler, domain)
        self.model, self.degradation, self.guidance, self.schedule = model, degradation, guidance, schedule
        self.steps, self.eta, self.domain, self.return_denoised = steps, eta, domain, return_denoised
        self.scheduler = make_scheduler(scheduler, self.model.scheduler.config)
        guidance.validate(degradation, self.scheduler)
        self.chunk_samples, self.overlap_samples, self.chunk_batch = chunk_samples, overlap_samples, chunk_batch
        self.progress = progress
        self.conditioning = conditioning

    def reconstruct(self, y: torch.Tensor, generator: torch.Generator | None = None,
                    support: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct a batch of measured chunks ``y`` ``(B, n)`` -> ``(B, n)`` (see `guided_reconstruction`)."""
        return guided_reconstruction(self.model, self.degradation, self.guidance, self.schedule, y, support=support,
                                     scheduler=self.scheduler, steps=self.steps, eta=self.eta, domain=self.domain,
                                     return_denoised=self.return_denoised, generator=generator,
                                     progress=self.progress, conditioning=self.conditioning)

    def reconstruct_clip(self, y: torch.Tensor, seed: int, progress: bool = False, desc: str = "chunks") -> torch.Tensor:
        """A whole measured clip ``(N,)`` through overlapping chunks; deterministic in `seed`. Returns ``(N,)``.

        `progress`: a bar over the chunks (named `desc`) with the time left."""
        generator = torch.Generator(device=self.model.device).manual_seed(seed)
        support = self.degradation.sample_support(y.shape[-1])
        stacked = y[None] if support is None else torch.stack([y, support.to(y.dtype)])
        device = self.model.device

        def fn(chunks: torch.Tensor) -> torch.Tensor:  # (K, C, n) -> (K, C, n)
            chunks = chunks.to(device)
            out = self.reconstruct(chunks[:, 0], generator, None if support is None else chunks[:, 1])
            return out[:, None].expand(-1, chunks.shape[1], -1).cpu()

        return process_in_chunks(stacked, fn, chunk=self.chunk_samples, overlap=self.overlap_samples,
                                 grid=self.model.samples_multiple, batch_size=self.chunk_batch, progress=progress,
                                 desc=desc)[0]

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        """``batch``: ``{"name": [str], "y": (1, N), "seed": [int]}`` -> the same with ``"x_hat"`` ``(1, N)``."""
        seed = int(batch["seed"][0])
        x_hat = self.reconstruct_clip(batch["y"][0], seed_for(batch["name"][0], seed))
        return {**batch, "x_hat": x_hat[None]}
