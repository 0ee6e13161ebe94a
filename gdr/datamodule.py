"""`RestorationDataModule`: clean clips -> fixed-length crops -> on-the-fly degradations, for training.

* Clips: every audio file under ``root`` (through the same loader and checks as evaluation; a bad file
  stops the run, naming it, before training starts) or, with ``root: null``, a built-in synthetic set.
* Split by file: a fixed, seeded fraction of the files is validation (at least one).
* Items are pure functions of ``(seed, epoch, index)``: crop position and degradation noise come from a
  generator seeded with them, so a resumed run sees exactly the batches an uninterrupted run would.
  Validation crops are fixed (the centre of each file).
* Batches: ``{"x": (B, n) clean, "y": (B, n) measured, "support": (B, n) gap masks (ones if none)}``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gdr import checks
from gdr.audio import SAMPLE_RATE
from gdr.data import Clip, demo_clips, load_folder
from gdr.degradations import Degradation, build_degradation
from gdr.errors import ConfigError
from gdr.module import seed_for


def synthetic_clips(count: int = 8, seconds: float = 3.0) -> list[Clip]:
    """`count` demo-style clips (tone, drums, chirp, noise bursts, cycling through seeds)."""
    clips = []
    seed = 0
    while len(clips) < count:
        for clip in demo_clips(seconds, seed=seed):
            clips.append(Clip(f"{clip.name}_{seed}", clip.waveform, clip.source))
        seed += 1
    return clips[:count]


class CropDataset(Dataset):
    """Crops of `crop` samples with the degradation applied; item ``i`` of epoch ``e`` is seeded by (seed, e, i)."""

    def __init__(self, clips: list[Clip], crop: int, degradation: Degradation, seed: int, length: int,
                 random_crops: bool):
        self.clips, self.crop, self.degradation, self.seed = clips, crop, degradation, seed
        self.length, self.random_crops = length, random_crops

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        epoch, i = divmod(index, self.length)  # the sampler hands out epoch * length + i
        g = torch.Generator().manual_seed(seed_for("item", self.seed, epoch, i))
        clip = self.clips[i % len(self.clips)]
        x = clip.waveform
        if x.numel() < self.crop:
            x = torch.nn.functional.pad(x, (0, self.crop - x.numel()))
        span = x.numel() - self.crop
        start = int(torch.randint(0, span + 1, (1,), generator=g)) if self.random_crops else span // 2
        x = x[start:start + self.crop]
        y = self.degradation.measure(x[None], g)[0]
        support = self.degradation.sample_support(self.crop)
        return {"x": x, "y": y.float(), "support": torch.ones(self.crop) if support is None else support.float(),
                "key": seed_for("item", self.seed, epoch, i)}


class EpochSampler(Sampler):
    """Indices ``epoch * n + i`` in order, this rank's share only; Lightning calls `set_epoch` each epoch."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __iter__(self):
        rank, world = self._shard()
        return iter(range(self.epoch * self.n + rank, (self.epoch + 1) * self.n, world))

    def __len__(self) -> int:
        rank, world = self._shard()
        return len(range(rank, self.n, world))


class RestorationDataModule(L.LightningDataModule):
    """Training data: clean audio cut into (clean, degraded) crop pairs.

    Args:
        root: Folder of audio files (any rate and channels; data/README.md); null = the synthetic set.
        degradation: The task, {name: ..., <params>} from the degradation registry, e.g. {name: lowpass,
            cutoff_hz: 4000}.
        crop_seconds: Crop length in seconds, >= 0.1 (rounded to whole 10 ms frames).
        batch_size: Crops per batch and process, an integer >= 1.
        items_per_epoch: Training items per epoch, an integer >= 1 (set it to checkpoint interval x batch size x
            devices for exact resume at every checkpoint).
        val_fraction: Share of files held out for validation, in (0, 1) (at least one file).
        seed: Seed of the split, the crops and the degradation noise, an integer.
        num_workers: DataLoader worker processes, an integer >= 0.
        mono: How several channels become one: first (channel 0) or mean.
        synthetic_count: Synthetic clips when root is null, an integer >= 2.
    """

    def __init__(self, root: str | None = None, degradation: dict | None = None, crop_seconds: float = 2.56,
                 batch_size: int = 2, items_per_epoch: int = 8, val_fraction: float = 0.25, seed: int = 0,
                 num_workers: int = 0, mono: str = "first", synthetic_count: int = 8):
        super().__init__()
        checks.number("data.crop_seconds", crop_seconds, low=0.1)
        for name, value, low in (("batch_size", batch_size, 1), ("items_per_epoch", items_per_epoch, 1),
                                 ("synthetic_count", synthetic_count, 2), ("num_workers", num_workers, 0)):
            checks.integer(f"data.{name}", value, low=low)
        checks.number("data.val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
        self.degradation = build_degradation(degradation or {"name": "identity"})
        self.crop = int(round(crop_seconds * 100)) * (SAMPLE_RATE // 100)
        self.batch_size, self.items_per_epoch, self.seed, self.num_workers = batch_size, items_per_epoch, seed, num_workers
        # Load and check every file now: a bad one stops the run before training, naming it.
        clips = load_folder(root, mono=mono) if root is not None else synthetic_clips(synthetic_count)
        if len(clips) < 2:
            raise ConfigError(f"data.root {root}: need at least 2 audio files (one for validation), found {len(clips)}")
        self.degradation.sample_support(self.crop)  # e.g. gaps that do not fit the crop
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, int(round(val_fraction * len(clips))))
        self.val_clips = [clips[i] for i in sorted(order[:n_val])]
        self.train_clips = [clips[i] for i in sorted(order[n_val:])]

    def train_dataloader(self) -> DataLoader:
        data = CropDataset(self.train_clips, self.crop, self.degradation, self.seed, self.items_per_epoch, True)
        return DataLoader(data, batch_size=self.batch_size, sampler=EpochSampler(len(data)),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        data = CropDataset(self.val_clips, self.crop, self.degradation, self.seed + 1, len(self.val_clips), False)
        return DataLoader(data, batch_size=self.batch_size, num_workers=self.num_workers)
