"""`GuidedReconstructor`: the LightningModule around AudioLDM2 and the target-guided sampler.

It owns the pieces of one reconstruction recipe (backbone, degradation operator, guidance method,
strength schedule, sampler settings) and exposes:

* ``reconstruct(y, generator, support)``: a batch of measured chunks ``(B, n)`` -> reconstructions ``(B, n)``;
* ``reconstruct_clip(y, seed)``: a whole clip ``(N,)`` of any length through the overlapping-chunk path;
* ``reconstruct_clips(ys, seeds)``: many clips (and seeds) at once, their chunks packed into batches of latents,
  each chunk with its own random stream, so an output does not depend on what shares its batch;
* ``predict_step``: ``Trainer.predict`` over a dataloader of clips x seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import lightning as L
import torch
from tqdm.auto import tqdm

from gdr.backbone import AudioLDM2
from gdr.batching import BatchSize
from gdr.chunking import ChunkJoiner, chunk_layout, window
from gdr.conditioning import Conditioning
from gdr.degradations import Degradation, PerItem
from gdr.measurement import DecoderMeasurement
from gdr.methods.base import Guidance
from gdr.sampler import sample
from gdr.schedulers import check_sampling, make_scheduler
from gdr.schedules import Schedule


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any printable parts (clip name, seed index, ...)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def chunk_seed(seed: int, index: int) -> int:
    """The seed of chunk `index` of a clip sampled with `seed`: `seed` itself for the first chunk (so a clip that
    fits in one chunk keeps its seed), a hash of both for the others. Every chunk has its own random stream."""
    return seed if index == 0 else seed_for(seed, "chunk", index)


def generators_for(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One freshly seeded generator per batch row: diffusers' `randn_tensor` draws row ``b`` from ``generators[b]``,
    so row ``b`` gets the same numbers in any batch as alone."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def guided_reconstruction(model: AudioLDM2, degradation: Degradation, guidance: Guidance, schedule, y: torch.Tensor, *,
                          support: torch.Tensor | None = None, scheduler=None, steps: int = 50, eta: float = 0.0,
                          domain: str = "mel", return_denoised: bool = True,
                          generator: torch.Generator | list[torch.Generator] | None = None,
                          grad_from: int | None = None, checkpoint: bool = False,
                          progress: bool = False, conditioning: Conditioning | None = None) -> torch.Tensor:
    """Guided reconstruction of a batch of measured chunks (shared by evaluation and training).

    Args:
        y: ``(B, n)`` measured waveforms at 16 kHz (any ``n >= 1024``; padded internally).
        support: ``(B, n)`` slice of ``degradation.sample_support`` (gap masks), or None. Each row gets its own
            localised operator (`PerItem`), so rows of different clips keep their own masks.
        scheduler: defaults to the model's (DDIM). grad_from, checkpoint: see `gdr.sampler.sample`; with
            a `grad_from` the decoding to waveform keeps its graph too (training).
        generator: one generator for the batch, or a list of ``B`` (row ``b`` draws all its noise from
            ``generator[b]``: the output of a row is then the same in any batch).
        conditioning: what the UNet is conditioned on (text, CLAP audio, CFG; `gdr.conditioning`): streams of
            one row for the whole batch or of ``B`` rows (`Conditioning.stack`); None = the model's null condition.

    Returns:
        ``(B, n)`` float32 reconstructions.
    """
    if isinstance(generator, list) and len(generator) != y.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {y.shape[0]}")
    n = y.shape[-1]
    y_pad = model.pad_to_grid(y)
    op = degradation
    if support is not None:  # operators with a position-dependent part (gaps) differ per chunk
        op = PerItem([degradation.localize(model.pad_to_grid(row)) for row in support])
    measurement = DecoderMeasurement(model, op, y_pad, domain=domain)
    z = sample(model.denoiser(conditioning), scheduler or model.scheduler, guidance, schedule, measurement,
               steps=steps, eta=eta, generator=generator, return_denoised=return_denoised, progress=progress,
               grad_from=grad_from, checkpoint=checkpoint)
    with torch.set_grad_enabled(grad_from is not None):
        return model.latent_to_waveform(z, y_pad.shape[-1])[:, :n].float()


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

    def reconstruct(self, y: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None,
                    support: torch.Tensor | None = None, conditioning: Conditioning | None = None) -> torch.Tensor:
        """Reconstruct a batch of measured chunks ``y`` ``(B, n)`` -> ``(B, n)`` (see `guided_reconstruction`);
        `conditioning` overrides the module's (e.g. one stacked per row)."""
        return guided_reconstruction(self.model, self.degradation, self.guidance, self.schedule, y, support=support,
                                     scheduler=self.scheduler, steps=self.steps, eta=self.eta, domain=self.domain,
                                     return_denoised=self.return_denoised, generator=generator,
                                     progress=self.progress, conditioning=conditioning or self.conditioning)

    def reconstruct_clip(self, y: torch.Tensor, seed: int, progress: bool = False, desc: str = "chunks") -> torch.Tensor:
        """A whole measured clip ``(N,)`` through overlapping chunks; deterministic in `seed`. Returns ``(N,)``.

        `progress`: a bar over the chunks (named `desc`) with the time left."""
        return self.reconstruct_clips([y], [seed], progress=progress, desc=desc)[0]

    def reconstruct_clips(self, ys: Sequence[torch.Tensor], seeds: Sequence[int],
                          conditionings: Sequence[Conditioning | None] | None = None, *,
                          batch_size: int | BatchSize | None = None, progress: bool = False, desc: str = "chunks",
                          done: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Many measured clips at once: every chunk of every clip is one latent, packed into sampling batches.

        Chunk ``k`` of clip ``i`` draws all its noise (initial, eta, the method's) from its own generator seeded
        with ``chunk_seed(seeds[i], k)`` and carries its own measurement, mask and loss, so its output is the same
        whatever shares its batch: the batch size changes the speed, not the result.

        Args:
            ys: measured clips ``(N_i,)`` at 16 kHz, any lengths. Chunks of one length run together (a clip that
                fits in one chunk is one window of its own length, padded to the grid).
            seeds: one per clip (e.g. the same clip twice with two seeds).
            conditionings: one per clip (None = the module's): rows of a batch are stacked.
            batch_size: latents per sampling run (CFG doubles the UNet's batch); a `BatchSize` halves itself on a
                CUDA out-of-memory and the batch is rerun. Default: the module's ``chunk_batch``.
            done: called as ``done(i, out)`` as soon as clip ``i``'s last chunk is joined.

        Returns:
            ``(N_i,)`` float32 outputs, in the order of `ys`.
        """
        batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size or self.chunk_batch)
        grid = self.model.samples_multiple
        # 1. Lay every clip out in chunks on the model's grid (each clip with its own gap positions).
        layouts, signals = [], []
        for y in ys:
            support = self.degradation.sample_support(y.shape[-1])
            signals.append(y[None] if support is None else torch.stack([y, support.to(y.dtype)]))
            layouts.append(chunk_layout(y.shape[-1], self.chunk_samples, self.overlap_samples, grid))
        joiners = [ChunkJoiner(layout) for layout in layouts]
        outputs: list[torch.Tensor | None] = [None] * len(ys)

        def window_length(i: int) -> int:  # a chunk's length; one chunk: the clip padded to the grid
            layout = layouts[i]
            return layout.length if len(layout.starts) > 1 else layout.length + (-layout.length) % grid

        # 2. Windows of one length form one queue, in clip and chunk order (so each clip's joiner gets its chunks
        #    in order); batches are cut from the queue.
        queues: dict[int, list[tuple[int, int]]] = {}
        for i, layout in enumerate(layouts):
            queues.setdefault(window_length(i), []).extend((i, k) for k in range(len(layout.starts)))
        bar = tqdm(total=sum(len(q) for q in queues.values()), desc=desc, disable=not progress, leave=False)
        device = self.model.device
        for length, queue in queues.items():
            start = 0
            while start < len(queue):
                rows = queue[start:start + batch.value]
                windows = torch.stack([window(signals[i], layouts[i].starts[k], length) for i, k in rows]).to(device)
                conditioning = None
                if conditionings is not None:
                    conditioning = Conditioning.stack([conditionings[i] or self.conditioning for i, _ in rows])
                try:
                    # 3. One sampling run for the batch; each row's generator is seeded afresh (a rerun after an
                    #    out-of-memory draws the same numbers).
                    out = self.reconstruct(windows[:, 0], generators_for([chunk_seed(seeds[i], k) for i, k in rows],
                                                                         device),
                                           None if windows.shape[1] == 1 else windows[:, 1], conditioning)
                except torch.OutOfMemoryError:
                    if not batch.halve(device):
                        raise
                    continue
                # 4. Join each row into its own clip.
                out = out.detach().cpu()
                for (i, _), piece in zip(rows, out):
                    joiners[i].add(piece[None])
                    if joiners[i].done:
                        outputs[i] = joiners[i].result()[0]
                        joiners[i] = None  # its buffer is the output now
                        if done is not None:
                            done(i, outputs[i])
                start += len(rows)
                bar.update(len(rows))
        bar.close()
        return outputs

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        """``batch``: ``{"name": [str], "y": (1, N), "seed": [int]}`` -> the same with ``"x_hat"`` ``(1, N)``."""
        seed = int(batch["seed"][0])
        x_hat = self.reconstruct_clip(batch["y"][0], seed_for(batch["name"][0], seed))
        return {**batch, "x_hat": x_hat[None]}
