"""Process audio of any length in fixed-size, overlapping chunks joined by raised-cosine crossfades.

Model memory depends only on the chunk size (and how many chunks run as one batch), not on the
length of the file. Consecutive chunks overlap; in each overlap the earlier chunk fades out with
``cos^2`` and the later fades in with ``sin^2``; the weighted sum is divided by the summed weights
(which is one wherever only two chunks overlap), so the joined signal is continuous. Chunk starts are spread evenly, so the last chunk is full of real signal rather
than zero padding.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from gdr.errors import ConfigError


def chunk_starts(num_samples: int, chunk: int, overlap: int) -> list[int]:
    """Start samples of the chunks covering ``[0, num_samples)``; one chunk when it fits.

    With ``n = ceil((num_samples - overlap) / (chunk - overlap))`` chunks, starts are spread evenly
    over ``[0, num_samples - chunk]``, so every overlap is at least `overlap` samples.
    """
    if chunk <= 0 or overlap < 0 or overlap >= chunk:
        raise ConfigError(f"need 0 <= overlap < chunk, got chunk={chunk}, overlap={overlap}")
    if num_samples <= chunk:
        return [0]
    n = math.ceil((num_samples - overlap) / (chunk - overlap))
    span = num_samples - chunk
    return [round(i * span / (n - 1)) for i in range(n)]


def _raw_weight(starts: list[int], k: int, length: int) -> torch.Tensor:
    """``(length,)`` float64 crossfade window of chunk `k`: sin^2 fade-in over the overlap with chunk k-1,
    cos^2 fade-out over the overlap with chunk k+1, one elsewhere (half-sample offsets keep it > 0)."""
    w = torch.ones(length, dtype=torch.float64)
    if k > 0 and (ov := starts[k - 1] + length - starts[k]) > 0:
        w[:ov] *= torch.sin((torch.arange(ov, dtype=torch.float64) + 0.5) / ov * (math.pi / 2)) ** 2
    if k + 1 < len(starts) and (ov := starts[k] + length - starts[k + 1]) > 0:
        w[length - ov:] *= torch.cos((torch.arange(ov, dtype=torch.float64) + 0.5) / ov * (math.pi / 2)) ** 2
    return w


def crossfade_weight(starts: list[int], k: int, length: int) -> torch.Tensor:
    """Chunk `k`'s ``(length,)`` weight, normalised by the sum of all windows covering each sample.

    Where two chunks overlap, the windows already sum to one (cos^2 + sin^2); the normalisation only
    matters where three overlap. Only the neighbours of `k` are looked at, so memory stays per chunk.
    """
    start, total = starts[k], torch.zeros(length, dtype=torch.float64)
    for j in range(len(starts)):
        lo, hi = max(start, starts[j]), min(start, starts[j]) + length
        if lo < hi:
            total[lo - start:hi - start] += _raw_weight(starts, j, length)[lo - starts[j]:hi - starts[j]]
        elif starts[j] > start:
            break
    return _raw_weight(starts, k, length) / total


def process_in_chunks(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk: int,
    overlap: int,
    batch_size: int = 1,
    progress: bool = False,
    desc: str = "chunks",
) -> torch.Tensor:
    """Apply `fn` to overlapping chunks of `x` and crossfade the results back together.

    Args:
        x: ``(C, N)`` signal(s); ``C`` is carried through (e.g. several signals of one clip).
        fn: maps ``(K, C, n)`` -> ``(K, C, n)`` for a batch of ``K`` chunks of ``n`` samples
            (``n = min(chunk, N)``); it must not change the length.
        chunk, overlap: chunk length and minimum overlap in samples.
        batch_size: how many chunks go through `fn` at once.

    Returns:
        ``(C, N)`` float32 result. With a single chunk this is exactly ``fn(x[None])[0]``. Besides the
        output, memory is one batch of chunks: no per-sample weight buffers over the whole signal.
    """
    num_samples = x.shape[-1]
    starts = chunk_starts(num_samples, chunk, overlap)
    length = min(chunk, num_samples)
    if len(starts) == 1:
        return fn(x[None, :, :length])[0].float()
    out = torch.zeros(x.shape[0], num_samples, dtype=torch.float32)
    bar = tqdm(total=len(starts), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(starts), batch_size):
        group = starts[b:b + batch_size]
        y = fn(torch.stack([x[:, s:s + length] for s in group])).detach().to("cpu", torch.float64)
        for j, s in enumerate(group):
            out[:, s:s + length] += (y[j] * crossfade_weight(starts, b + j, length)).float()
        bar.update(len(group))
    bar.close()
    return out
