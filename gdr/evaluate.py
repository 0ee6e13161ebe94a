"""The evaluation run: clips -> model -> reconstructions -> metrics -> files under ``output_dir``.

Layout written (every file atomically):

    output_dir/
      config.yaml                 resolved config
      metrics.csv                 one row per clip x method (x seed)
      clips/<clip>/<method>.wav   16 kHz mono reconstructions (and input.wav, the normalised input)
"""

from __future__ import annotations

import csv
import io
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from gdr.atomic import write_text
from gdr.audio import SAMPLE_RATE, write_wav
from gdr.backbone import AudioLDM2
from gdr.baselines import BASELINES
from gdr.chunking import process_in_chunks
from gdr.data import Clip, demo_clips, load_folder
from gdr.metrics import PER_ITEM

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_clips(data) -> list[Clip]:
    """All clips of the run, validated before any model work (`DataConfig`)."""
    if data.root is None:
        return demo_clips(data.demo_seconds)
    return load_folder(data.root, mono=data.mono)


def load_model(model_cfg) -> AudioLDM2:
    return AudioLDM2.from_pretrained(
        model_cfg.pretrained,
        dtype=DTYPES[model_cfg.dtype],
        device=resolve_device(model_cfg.device),
        null_condition=model_cfg.null_condition,
        cache_dir=model_cfg.cache_dir,
    )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max allocated since the last reset, else the process's peak RSS (high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@dataclass
class Result:
    clip: str
    method: str
    waveform: torch.Tensor  # (N,) float32 at 16 kHz
    wall_s: float
    peak_mem_mb: float
    seed: int | None = None
    extra: dict = field(default_factory=dict)


def score(result: Result, reference: torch.Tensor) -> dict:
    """One metrics row: every `PER_ITEM` metric of `result` against `reference` ``(N,)``."""
    row = {"clip": result.clip, "method": result.method, "seed": "" if result.seed is None else result.seed}
    for name, fn in PER_ITEM.items():
        row[name] = float(fn(result.waveform[None].double(), reference[None].double())[0])
    row.update(wall_s=round(result.wall_s, 4), peak_mem_mb=round(result.peak_mem_mb, 1), **result.extra)
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


class Evaluator:
    """Runs per-chunk reconstruction functions over whole clips and scores them."""

    def __init__(self, model: AudioLDM2, chunk_cfg, progress: bool = True):
        self.model = model
        self.chunk = int(round(chunk_cfg.seconds * SAMPLE_RATE))
        self.overlap = int(round(chunk_cfg.overlap_seconds * SAMPLE_RATE))
        self.batch_size = chunk_cfg.batch_size
        self.progress = progress

    def run_chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, desc: str) -> tuple:
        """Apply `fn` ``(K, n) -> (K, n)`` to the chunks of ``y`` ``(N,)``; returns ``(waveform, wall_s, peak_mb)``."""
        device = self.model.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()

        def on_device(chunks: torch.Tensor) -> torch.Tensor:  # (K, 1, n)
            return fn(chunks[:, 0].to(device))[:, None].float().cpu()

        out = process_in_chunks(y[None], on_device, chunk=self.chunk, overlap=self.overlap,
                                batch_size=self.batch_size, progress=self.progress, desc=desc)[0]
        return out, time.perf_counter() - start, peak_memory_mb(device)

    def baseline(self, name: str, clip: Clip, y: torch.Tensor) -> Result:
        fn = BASELINES.get_factory(name)
        out, wall, peak = self.run_chunked(lambda c: fn(self.model, c), y, desc=f"{clip.name}/{name}")
        return Result(clip.name, name, out, wall, peak)


def run(cfg, objects, parser) -> Path:
    """The whole evaluation; returns the output folder. Nothing is written before inputs and model load."""
    clips = load_clips(objects.data)
    model = load_model(objects.model)
    out_dir = Path(objects.output_dir)
    evaluator = Evaluator(model, objects.chunk, progress=objects.progress)
    rows = []
    for clip in tqdm(clips, desc="clips", disable=not objects.progress):
        clip_dir = out_dir / "clips" / clip.name
        write_wav(clip_dir / "input.wav", clip.waveform)
        for name in ("vocoder_roundtrip", "vae_roundtrip"):
            result = evaluator.baseline(name, clip, clip.waveform)
            write_wav(clip_dir / f"{name}.wav", result.waveform)
            rows.append(score(result, clip.waveform))
    write_csv(out_dir / "metrics.csv", rows)
    write_text(out_dir / "config.yaml", parser.dump(cfg, skip_none=False))
    return out_dir
