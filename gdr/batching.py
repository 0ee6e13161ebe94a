"""Packing work into batches: how many latents share one sampling run, which work shares it, and what happens
when the accelerator runs out of memory.

A sampling run costs nearly the same on a GPU for 1 latent as for 16 (the UNet's arithmetic is too small to fill
the device at batch 1), so evaluation packs items that share a recipe (method, parameters, steps, sampler,
condition) across clips, chunks of long clips and seeds into one batch. Each latent keeps its own random stream,
measurement, mask and loss (`gdr.module.GuidedReconstructor.reconstruct_clips`), so the batch changes the speed,
never the result.

Two sizes, on purpose:

* the **pack**: the items one `Trainer.predict` step takes, one rank's unit of work and what a kill can lose. It
  must not depend on the device (every rank cuts the same packs from the same list), so it is the configured
  ``sampler.batch_size``, or `AUTO_CAP` latents for ``auto``;
* the **batch**: the latents of one sampling run, at most the pack, cut down on the device (`auto_batch_size`) and
  halved after a CUDA out-of-memory (`BatchSize.halve`: one ``warning:`` line, the batch is rerun).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Sequence

import torch

from gdr import checks

AUTO_CAP = 16  # latents per pack (and at most per batch) for ``batch_size: auto``
CPU_BATCH = 4  # ``auto`` on a CPU: beyond ~4 the CPU's cores are busy already and the speed-up flattens
# Accelerator memory one 10.24 s latent needs during sampling at float32, a guess until the GPU check
# (`benchmarks/gpu_check.sh`) measures it: UNet activations of the forward pass, x3 where the method backpropagates
# through the UNet and decoder (DPS, PSLD), x2 with classifier-free guidance (the UNet's batch doubles).
AUTO_BYTES_PER_LATENT = 1.5 * 2**30


def pack_size(setting: int | str) -> int:
    """Latents per pack for a ``sampler.batch_size`` setting (device-independent, see the module docstring)."""
    return AUTO_CAP if setting == "auto" else int(setting)


def auto_batch_size(device: torch.device, *, seconds: float = 10.24, heavy: bool = False, cfg: bool = False,
                    dtype_bytes: int = 4, cap: int = AUTO_CAP) -> int:
    """Latents per sampling run on `device` for ``batch_size: auto``.

    CUDA: 80 % of the free memory over the per-latent estimate (`AUTO_BYTES_PER_LATENT`, scaled by the window
    length `seconds`, ``heavy`` = UNet backward, ``cfg`` = doubled UNet batch, the UNet's dtype), between 1 and
    `cap`. Elsewhere `CPU_BATCH`. An estimate: a CUDA out-of-memory halves the batch anyway.
    """
    if device.type != "cuda":
        return min(CPU_BATCH, cap)
    free, _ = torch.cuda.mem_get_info(device)
    per = AUTO_BYTES_PER_LATENT * (seconds / 10.24) * (3 if heavy else 1) * (2 if cfg else 1) * dtype_bytes / 4
    return max(1, min(cap, int(0.8 * free // per)))


class BatchSize:
    """The current batch size of a run, which only shrinks: halved after each CUDA out-of-memory."""

    def __init__(self, value: int):
        self.value = checks.integer("batch size", int(value), low=1)

    def halve(self, device: torch.device | None = None) -> bool:
        """Halve after an out-of-memory and say so in one line; False when the batch is 1 already (re-raise)."""
        if self.value == 1:
            return False
        old, self.value = self.value, self.value // 2
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"warning: out of accelerator memory at {old} latents per batch; retrying at {self.value}",
              file=sys.stderr, flush=True)
        return True


def pack(indices: Sequence[int], key: Callable[[int], Hashable], size: Callable[[int], int], capacity: int,
         ) -> list[list[int]]:
    """Cut `indices` into packs of items that share `key`, each holding at most `capacity` latents.

    Items keep their order within a key and packs are in order of each key's first item, so every rank cuts the
    same packs from the same list. An item with more latents (chunks) than `capacity` is a pack of its own (its
    chunks then run in several batches). ``size(i)``: latents of item `i`.
    """
    packs: list[list[int]] = []
    open_pack: dict[Hashable, tuple[list[int], int]] = {}  # key -> (pack being filled, latents in it)
    for index in indices:
        k, n = key(index), size(index)
        current = open_pack.get(k)
        if current is not None and current[1] + n <= capacity:
            current[0].append(index)
            open_pack[k] = (current[0], current[1] + n)
            continue
        packs.append([index])
        open_pack[k] = (packs[-1], n)
    return packs
