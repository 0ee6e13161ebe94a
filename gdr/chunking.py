"""Process audio of any length in fixed-size, overlapping chunks on the model's grid, joined without seams.

Model memory depends only on the chunk size (and how many chunks run as one batch), not on the
length of the file.

The grid. Every chunk starts on a multiple of `grid` samples and is a whole number of grids long;
gdr passes the model's grid (hop 160 x VAE 4 x 2 ** (UNet levels - 1) = 5120 samples for AudioLDM2).
So each chunk's mel frames are the whole clip's frames and its latent cells the whole clip's cells: a
local operation (the vocoder round trip) gives the same samples chunked or whole away from the chunk
edges. Chunks advance by ``hop = chunk - overlap`` (overlap rounded up to the grid, at most half a
chunk, so no sample is in more than two chunks); the last chunk runs past the end on zero padding,
so any input length works.

The join. In each overlap the earlier chunk fades out and the later fades in with the
correlation-adaptive crossfade ``w_out = g cos(theta)``, ``w_in = g sin(theta)``, ``theta`` from 0 to
pi/2, ``g = 1 / sqrt(1 + rho sin(2 theta))``, where ``rho`` (clamped to [0, 1]) is the normalised
correlation of the two chunks' outputs over the overlap. It keeps the expected power of the sum
constant: identical outputs (``rho = 1``, e.g. a local operation) are joined with weights that sum to
one, so they are reproduced exactly; independent outputs (``rho = 0``, e.g. two generated
continuations) are joined with the equal-power ``cos``/``sin`` pair, so the overlap centre does not dip
by 3 dB as an amplitude crossfade of incoherent signals does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from gdr.errors import ConfigError


@dataclass(frozen=True)
class ChunkLayout:
    """Where the chunks of a signal of `num_samples` samples lie.

    Attributes:
        starts: first sample of each chunk (multiples of the grid).
        length: samples per chunk (a multiple of the grid; the signal itself if it fits in one).
        overlap: samples shared by consecutive chunks (a multiple of the grid, <= length / 2).
    """

    starts: tuple[int, ...]
    length: int
    overlap: int
    num_samples: int

    @property
    def padded(self) -> int:
        """Length of the zero-padded signal that the last chunk reads."""
        return self.starts[-1] + self.length


def chunk_layout(num_samples: int, chunk: int, overlap: int, grid: int = 1) -> ChunkLayout:
    """The chunks covering ``[0, num_samples)``: length `chunk` and overlap `overlap` moved onto `grid`.

    The chunk length is rounded to the nearest multiple of `grid` (at least one grid), the overlap up to
    a multiple of it; a signal that fits in one chunk is one chunk of its own length.
    """
    if chunk <= 0 or overlap < 0 or grid < 1:
        raise ConfigError(f"need chunk > 0, overlap >= 0 and grid >= 1, got chunk={chunk}, overlap={overlap}, "
                          f"grid={grid}")
    length = max(grid, int(round(chunk / grid)) * grid)
    ov = int(math.ceil(overlap / grid)) * grid
    if 2 * ov > length:
        raise ConfigError(f"the overlap ({overlap} samples, {ov} on the {grid}-sample grid) must be at most half a "
                          f"chunk ({length} samples on the grid)")
    if num_samples <= length:
        return ChunkLayout((0,), num_samples, 0, num_samples)
    hop = length - ov
    count = 1 + math.ceil((num_samples - length) / hop)
    return ChunkLayout(tuple(k * hop for k in range(count)), length, ov, num_samples)


def crossfade(prev_tail: torch.Tensor, next_head: torch.Tensor) -> torch.Tensor:
    """Join the overlapping parts of two chunks' outputs with the correlation-adaptive crossfade.

    Args:
        prev_tail: ``(C, L)`` the earlier chunk's last ``L`` samples.
        next_head: ``(C, L)`` the later chunk's first ``L`` samples (the same stretch of time).

    Returns:
        ``(C, L)`` float64 joined samples (module docstring: ``rho`` is measured per channel).
    """
    a, b = prev_tail.double(), next_head.double()
    length = a.shape[-1]
    rho = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp_min(1e-30)
    rho = rho.clamp(0.0, 1.0)  # anti-correlated outputs are joined as independent ones rather than boosted
    theta = (torch.arange(length, dtype=torch.float64) + 0.5) / length * (math.pi / 2)
    gain = 1.0 / torch.sqrt(1.0 + rho * torch.sin(2 * theta))
    return gain * (torch.cos(theta) * a + torch.sin(theta) * b)


def process_in_chunks(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk: int,
    overlap: int,
    grid: int = 1,
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "chunks",
) -> torch.Tensor:
    """Apply `fn` to overlapping chunks of `x` on `grid` and join the results (module docstring).

    Args:
        x: ``(C, N)`` signal(s); ``C`` is carried through (e.g. several signals of one clip).
        fn: maps ``(K, C, n)`` -> ``(K, C, n)`` for a batch of ``K`` chunks of ``n`` samples; it must not
            change the length.
        chunk, overlap: chunk length and minimum overlap in samples (moved onto `grid`).
        grid: chunk starts and lengths are multiples of this (the model's ``samples_multiple``).
        batch_size: how many chunks go through `fn` at once.

    Returns:
        ``(C, N)`` float32 result. With a single chunk this is exactly ``fn(x[None])[0]``. Besides the
        output, memory is one batch of chunks and one overlap: nothing grows with ``N`` but the output.
    """
    num_samples = x.shape[-1]
    layout = chunk_layout(num_samples, chunk, overlap, grid)
    if len(layout.starts) == 1:
        return fn(x[None]).float()[0]
    joiner = ChunkJoiner(layout, x.shape[0])
    bar = tqdm(total=len(layout.starts), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(layout.starts), batch_size):
        group = layout.starts[b:b + batch_size]
        y = fn(torch.stack([window(x, s, layout.length) for s in group]))
        for piece in y:
            joiner.add(piece)
        bar.update(len(group))
    bar.close()
    return joiner.result()


class ChunkJoiner:
    """Joins the outputs of a layout's chunks, given one at a time in order, into the whole signal.

    What `process_in_chunks` does after `fn`, kept separate so that chunks of many clips can go through a
    model in one batch (`gdr.module.GuidedReconstructor.reconstruct_clips`) and still be joined per clip.
    Besides the output, memory is one overlap.

    Args:
        layout: where the chunks lie (`chunk_layout`).
        channels: ``C`` of the ``(C, n)`` chunk outputs.
    """

    def __init__(self, layout: ChunkLayout, channels: int = 1):
        self.layout = layout
        self.out = torch.zeros(channels, layout.num_samples, dtype=torch.float32)
        self.tail: torch.Tensor | None = None  # (C, ov) float64: the previous chunk's output over the next overlap
        self.count = 0  # chunks added so far

    @property
    def done(self) -> bool:
        return self.count == len(self.layout.starts)

    def add(self, piece: torch.Tensor) -> None:
        """The next chunk's output ``(C, length)`` (any float dtype, any device)."""
        layout, k = self.layout, self.count
        if k >= len(layout.starts):
            raise ValueError(f"the layout has {len(layout.starts)} chunks; got one more")
        length, ov, s = layout.length, layout.overlap, layout.starts[k]
        piece = piece.detach().to("cpu", torch.float64)
        if self.tail is not None:
            piece = torch.cat([crossfade(self.tail, piece[:, :ov]), piece[:, ov:]], dim=1)
        last = k == len(layout.starts) - 1
        keep = length if last else length - ov  # the final `ov` samples wait for the next chunk
        end = min(s + keep, layout.num_samples)
        if end > s:
            self.out[:, s:end] = piece[:, :end - s].float()
        self.tail = None if last else piece[:, length - ov:]
        self.count += 1

    def result(self) -> torch.Tensor:
        """``(C, N)`` float32 joined output, once every chunk was added."""
        if not self.done:
            raise ValueError(f"{self.count} of {len(self.layout.starts)} chunks were added")
        return self.out


def window(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``x[:, start:start + length]``, zero-padded past the end of `x`."""
    piece = x[:, start:start + length]
    return torch.nn.functional.pad(piece, (0, length - piece.shape[-1]))
