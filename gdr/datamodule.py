"""`RestorationDataModule`: clean audio files -> fixed-length crops -> on-the-fly degradations, for training.

* Files: every audio file under ``root`` (any rate, channels, depth; data/README.md), or with ``root: null`` a
  built-in synthetic set (held in memory). At start only the headers are read (``soundfile.info``: frames,
  rate, channels); a file soundfile cannot open, or one shorter than one analysis frame, stops the run naming
  it. Memory does not grow with the data: per file a name and a header.
* Split (``split_by``): ``file`` holds out a seeded fraction of the files; ``folder`` a seeded fraction of the
  folders (a file's parent relative to root, e.g. a VCTK speaker), so every file of a folder lands on the same
  side. At least one file (folder) on each side. `RestorationDataModule.write_file_lists` writes both lists
  (`gdr.file_lists` format) and `RestorationDataModule.fingerprint` names the training list.
* Epochs: an epoch is ``items_per_epoch`` draws without replacement from the training files (default: as many
  as there are files, i.e. one pass). Draw ``d = epoch * items_per_epoch + position`` takes file
  ``order(d // n)[d % n]``, where ``order(k)`` is a seeded permutation of the ``n`` files for the ``k``-th pass:
  every file once per pass, a new order each pass, and a shorter epoch continues where the last one stopped.
* Items are pure functions of ``(seed, epoch, position)``: their ``key = seed_for("item", seed, epoch,
  position)`` seeds the crop position and the degradation noise (through ``seed_for("crop", key)``) and is in the
  batch for the learner's own per-item noise. The same item gets the same file, crop, noise and key whatever
  the number of processes, the batch size, or a resume. Validation items are fixed: the centre crop of each
  validation file, ``key = seed_for("val", seed, index)``.
* Crops are read lazily: only the crop's frames (plus the resampling filter's margin, `gdr.audio.read_resampled`),
  then mono and 16 kHz as in evaluation, then normalised *per crop* (evaluation's mean removal and peak 0.5,
  `gdr.audio.normalize_loudness`, applied to the crop). A crop that is silent after mean removal is re-drawn
  from the same seeded generator (deterministic; up to `SILENT_REDRAWS` times, then the file is named in the
  error); a crop with NaN or Inf samples stops the run, naming the file. Files shorter than the crop are read
  whole, normalised, and zero-padded at the end.
* Several processes: the train loader's `EpochSampler` yields the epoch's global order; under DDP Lightning
  (``Trainer(use_distributed_sampler=True)``) wraps it in ``DistributedSamplerWrapper``, so rank ``r`` of ``N``
  takes positions ``r, r + N, ...`` and N processes x batch b see at step k the items 1 process x batch N*b sees
  (exactly so when ``items_per_epoch`` is a multiple of N*b; otherwise Lightning pads the last step with the
  epoch's first items). Validation is in plain order (Lightning shards it with a ``DistributedSampler``).
* Batches: ``{"x": (B, n) clean, "y": (B, n) measured, "support": (B, n) gap masks (ones if none),
  "key": (B,) int64}``, n = crop samples at 16 kHz.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gdr import checks
from gdr.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    SILENCE_PEAK,
    AudioInfo,
    audio_info,
    normalize_loudness,
    read_resampled,
)
from gdr.data import Clip, demo_clips, list_audio_files, read_captions
from gdr.degradations import Degradation, build_degradation
from gdr.errors import ConfigError, EmptyAudioError, NonFiniteAudioError, SilentAudioError, TooShortAudioError
from gdr.file_lists import fingerprint, write_file_list
from gdr.module import seed_for

SILENT_REDRAWS = 8  # random crops tried before a file counts as silent (a crop of digital silence is re-drawn)


def synthetic_clips(count: int = 8, seconds: float = 3.0) -> list[Clip]:
    """`count` demo-style clips (tone, drums, chirp, noise bursts, cycling through seeds)."""
    clips = []
    seed = 0
    while len(clips) < count:
        for clip in demo_clips(seconds, seed=seed):
            clips.append(Clip(f"{clip.name}_{seed}", clip.waveform, clip.source))
        seed += 1
    return clips[:count]


class AudioFiles:
    """Audio files under `root`, known by their headers; samples are read per request.

    Args:
        root: the data folder.
        names: paths relative to `root` (POSIX).
        infos: their headers (`gdr.audio.audio_info`).
        mono: ``first`` or ``mean``.
    """

    def __init__(self, root: Path, names: list[str], infos: list[AudioInfo], mono: str,
                 captions: list[str] | None = None):
        self.root, self.names, self.infos, self.mono = root, names, infos, mono
        self.captions = captions  # from manifest.csv's caption column ("" where a file has none), or None

    def __len__(self) -> int:
        return len(self.names)

    def length(self, i: int) -> int:
        """File `i`'s length in 16 kHz samples."""
        return self.infos[i].frames_16k

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        """``(stop - start,)`` float32 16 kHz mono samples of file `i`, not normalised."""
        return read_resampled(self.root / self.names[i], self.infos[i], start, stop, mono=self.mono)

    def subset(self, indices: list[int]) -> "AudioFiles":
        captions = None if self.captions is None else [self.captions[i] for i in indices]
        return AudioFiles(self.root, [self.names[i] for i in indices], [self.infos[i] for i in indices], self.mono,
                          captions)


class MemoryClips:
    """The synthetic set: clips held in memory, with the interface of `AudioFiles`."""

    def __init__(self, clips: list[Clip]):
        self.clips = clips
        self.names = [f"synthetic/{clip.name}" for clip in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def length(self, i: int) -> int:
        return self.clips[i].waveform.numel()

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        return self.clips[i].waveform[start:stop]

    def subset(self, indices: list[int]) -> "MemoryClips":
        return MemoryClips([self.clips[i] for i in indices])


def read_headers(root: Path, paths: list[Path]) -> tuple[list[str], list[AudioInfo], list[int]]:
    """Names relative to `root`, headers and sizes in bytes of `paths`; the first unusable file raises, naming it."""
    names, infos, sizes = [], [], []
    for path in paths:
        info = audio_info(path)
        if info.frames == 0 or info.channels == 0:
            raise EmptyAudioError(f"{path}: the audio is empty (0 samples)")
        if info.frames_16k < MIN_SAMPLES:
            raise TooShortAudioError(f"{path}: {info.frames_16k} samples at 16 kHz is shorter than one frame "
                                     f"({MIN_SAMPLES} samples, 64 ms)")
        names.append(path.relative_to(root).as_posix())
        infos.append(info)
        sizes.append(path.stat().st_size)
    return names, infos, sizes


def split_files(names: list[str], split_by: str, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train / validation split of `names` (relative paths): ``(train indices, val indices)``, each sorted.

    ``split_by="file"``: a fraction `val_fraction` of the files (rounded, at least one, at most all but one);
    ``"folder"``: the same of the folders (a name's parent), every file of a folder on one side.
    """
    groups = sorted({str(Path(name).parent) if split_by == "folder" else name for name in names})
    what = "folders" if split_by == "folder" else "files"
    if len(groups) < 2:
        raise ConfigError(f"data.split_by {split_by}: need at least 2 {what} (one for validation), found "
                          f"{len(groups)}")
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(1, int(round(val_fraction * len(groups)))), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    in_val = [(str(Path(name).parent) if split_by == "folder" else name) in val_groups for name in names]
    return [i for i, v in enumerate(in_val) if not v], [i for i, v in enumerate(in_val) if v]


@functools.lru_cache(maxsize=4)
def pass_order(seed: int, k: int, n: int) -> tuple[int, ...]:
    """The order of the `n` training files in pass `k` over them: a permutation seeded by ``(seed, k)``."""
    return tuple(torch.randperm(n, generator=torch.Generator().manual_seed(seed_for("pass", seed, k))).tolist())


def file_for_draw(draw: int, n: int, seed: int) -> int:
    """The file of draw `draw` (counted from the start of training): without replacement within each pass."""
    k, offset = divmod(draw, n)
    return pass_order(seed, k, n)[offset]


class CropDataset(Dataset):
    """Crops of `crop` samples with the degradation applied.

    Training (``train=True``): index ``epoch * items_per_epoch + position`` (as `EpochSampler` hands them out)
    is draw number `index` of the run (module docstring). Validation: index ``i`` is the centre crop of file ``i``.
    """

    def __init__(self, files: AudioFiles | MemoryClips, crop: int, degradation: Degradation, seed: int,
                 items_per_epoch: int, train: bool):
        self.files, self.crop, self.degradation, self.seed = files, crop, degradation, seed
        self.items_per_epoch, self.train = items_per_epoch, train

    def __len__(self) -> int:
        return self.items_per_epoch if self.train else len(self.files)

    def item(self, index: int) -> tuple[int, int]:
        """``(file, key)`` of item `index`."""
        if not self.train:
            return index, seed_for("val", self.seed, index)
        epoch, position = divmod(index, self.items_per_epoch)
        return file_for_draw(index, len(self.files), self.seed), seed_for("item", self.seed, epoch, position)

    def __getitem__(self, index: int) -> dict:
        i, key = self.item(index)
        g = torch.Generator().manual_seed(seed_for("crop", key))  # the learner seeds its own noise with `key`
        x = self.read_crop(i, g)
        y = self.degradation.measure(x[None], g)[0]
        support = self.degradation.sample_support(self.crop)
        item = {"x": x, "y": y.float(), "support": torch.ones(self.crop) if support is None else support.float(),
                "key": torch.tensor(key, dtype=torch.int64)}
        if getattr(self.files, "captions", None) is not None:
            item["caption"] = self.files.captions[i]
        return item

    def read_crop(self, i: int, g: torch.Generator) -> torch.Tensor:
        """``(crop,)`` normalised crop of file `i`: random (training) or centred (validation, first try)."""
        n, name = self.files.length(i), self.files.names[i]
        span = max(n - self.crop, 0)
        for attempt in range(SILENT_REDRAWS):
            if self.train or attempt > 0:
                start = int(torch.randint(0, span + 1, (1,), generator=g))
            else:
                start = span // 2
            x = self.files.read(i, start, min(start + self.crop, n))
            if not torch.isfinite(x).all():
                raise NonFiniteAudioError(f"{name}: NaN or Inf samples in 16 kHz samples {start}..{start + x.numel()}")
            if (x - x.mean()).abs().max() >= SILENCE_PEAK:
                return torch.nn.functional.pad(normalize_loudness(x), (0, self.crop - x.numel()))
            if span == 0:
                break  # the whole file is the crop: another draw cannot differ
        raise SilentAudioError(f"{name}: {SILENT_REDRAWS if span else 1} crop(s) of {self.crop} samples were silent "
                               "(peak below -100 dBFS after mean removal); trim the file's silence or remove it")


class EpochSampler(Sampler):
    """The epoch's global order: indices ``epoch * n + position`` for ``position`` in ``0 .. n - 1``.

    Not sharded here: under DDP Lightning wraps it in ``DistributedSamplerWrapper`` (``use_distributed_sampler``
    must be true) and forwards `set_epoch`, which it calls every epoch."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


class RestorationDataModule(L.LightningDataModule):
    """Training data: clean audio cut into (clean, degraded) crop pairs (module docstring).

    Args:
        root: Folder of audio files (any rate and channels; data/README.md); null = the synthetic set.
        degradation: The task, {name: ..., <params>} from the degradation registry, e.g. {name: lowpass,
            cutoff_hz: 4000}.
        crop_seconds: Crop length in seconds, >= 0.1 (rounded to whole 10 ms frames).
        batch_size: Crops per batch and process, an integer >= 1.
        items_per_epoch: Training items per epoch, an integer >= 1, drawn without replacement across epochs; null
            = the number of training files (one pass per epoch). A multiple of batch size x devices keeps
            several processes exactly equal to one.
        val_fraction: Share of files (or folders) held out for validation, in (0, 1) (at least one).
        split_by: What the split keeps whole: file, or folder (the file's parent folder relative to root, e.g. a
            speaker).
        seed: Seed of the split, the file order, the crops and the degradation noise, an integer.
        num_workers: DataLoader worker processes, an integer >= 0.
        mono: How several channels become one: first (channel 0) or mean.
        synthetic_count: Synthetic clips when root is null, an integer >= 2.
    """

    def __init__(self, root: str | None = None, degradation: dict | None = None, crop_seconds: float = 2.56,
                 batch_size: int = 2, items_per_epoch: int | None = None, val_fraction: float = 0.25,
                 split_by: Literal["file", "folder"] = "file", seed: int = 0, num_workers: int = 0,
                 mono: Literal["first", "mean"] = "first", synthetic_count: int = 8):
        super().__init__()
        checks.number("data.crop_seconds", crop_seconds, low=0.1)
        for name, value, low in (("batch_size", batch_size, 1), ("synthetic_count", synthetic_count, 2),
                                 ("num_workers", num_workers, 0)):
            checks.integer(f"data.{name}", value, low=low)
        if items_per_epoch is not None:
            checks.integer("data.items_per_epoch", items_per_epoch, low=1)
        checks.number("data.val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
        checks.choice("data.split_by", split_by, ("file", "folder"))
        checks.choice("data.mono", mono, ("first", "mean"))
        self.degradation = build_degradation(degradation or {"name": "identity"})
        self.crop = int(round(crop_seconds * 100)) * (SAMPLE_RATE // 100)
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.root = Path(root).absolute() if root is not None else None
        self.degradation.sample_support(self.crop)  # e.g. gaps that do not fit the crop
        # Headers only: a bad file stops the run before training, naming it; samples are read per item.
        if root is not None:
            if self.root.is_file():
                raise ConfigError(f"data.root {root}: is a file; give the folder of the training audio")
            names, infos, sizes = read_headers(self.root, list_audio_files(self.root))
            captions = read_captions(self.root)
            files = AudioFiles(self.root, names, infos, mono,
                               [captions.get((self.root / name).resolve(), "") for name in names] if captions else None)
        else:
            files = MemoryClips(synthetic_clips(synthetic_count))
            sizes = [clip.waveform.numel() * 4 for clip in files.clips]
        if split_by == "folder" and root is None:
            raise ConfigError("data.split_by folder needs data.root (the synthetic set has no folders)")
        train, val = split_files(files.names, split_by, val_fraction, seed)
        self.train_files, self.val_files = files.subset(train), files.subset(val)
        self._fingerprint = fingerprint((files.names[i], sizes[i]) for i in train)
        self.items_per_epoch = items_per_epoch if items_per_epoch is not None else len(train)

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the sorted training list (paths relative to root, sizes in bytes)."""
        return self._fingerprint

    def write_file_lists(self, folder: str | Path) -> dict:
        """Write ``train.txt`` and ``val.txt`` into `folder` (`gdr.file_lists` format: one path per line,
        relative to the data root; ``synthetic/<clip>`` for the synthetic set).

        Returns:
            ``{"train": path, "val": path, "root": absolute data root or None, "fingerprint": str,
            "train_files": int, "val_files": int}`` (paths as strings), for the run's metadata.
        """
        folder = Path(folder)
        return {"train": str(write_file_list(folder / "train.txt", self.train_files.names)),
                "val": str(write_file_list(folder / "val.txt", self.val_files.names)),
                "root": None if self.root is None else str(self.root), "fingerprint": self.fingerprint,
                "train_files": len(self.train_files), "val_files": len(self.val_files)}

    def _check_sharding(self) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and not trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError("trainer.use_distributed_sampler must be true with several processes: the data "
                              "module's sampler yields the whole epoch and Lightning shards it")

    def train_dataloader(self) -> DataLoader:
        self._check_sharding()
        data = CropDataset(self.train_files, self.crop, self.degradation, self.seed, self.items_per_epoch, True)
        return DataLoader(data, batch_size=self.batch_size, sampler=EpochSampler(len(data)),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        data = CropDataset(self.val_files, self.crop, self.degradation, self.seed, 0, False)
        return DataLoader(data, batch_size=self.batch_size, num_workers=self.num_workers)
