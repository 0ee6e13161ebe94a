"""The evaluation run: clips -> model -> reconstructions -> metrics -> files under ``output_dir``.

Layout written (every file atomically):

    output_dir/
      config.yaml                 resolved config
      metrics.csv                 one row per clip x method (x seed)
      clips/<clip>/input.wav      the clean reference x (normalised 16 kHz input)
      clips/<clip>/degraded.wav   the measurement y = A(x) + n
      clips/<clip>/<baseline>.wav vocoder_roundtrip, vae_roundtrip (of y), oracle_vae_roundtrip (of x)
      clips/<clip>/<method>_seed<k>.wav   the guided reconstruction for each seed

Every row of metrics.csv scores an output against the clean x. ``oracle_vae_roundtrip`` is a ceiling
computed from x itself; it is never an input to a method.
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
from gdr.degradations import Degradation, build_degradation
from gdr.guidance import build_guidance
from gdr.metrics import PER_ITEM
from gdr.module import GuidedReconstructor, seed_for
from gdr.schedules import build_schedule

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

    def timed(self, work: Callable[[], torch.Tensor]) -> tuple:
        """Run `work`; returns ``(its result, wall seconds, peak memory MiB)``."""
        device = self.model.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - start, peak_memory_mb(device)

    def run_chunked(self, fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, desc: str) -> tuple:
        """Apply `fn` ``(K, n) -> (K, n)`` to the chunks of ``y`` ``(N,)``; returns ``(waveform, wall_s, peak_mb)``."""
        device = self.model.device

        def on_device(chunks: torch.Tensor) -> torch.Tensor:  # (K, 1, n)
            return fn(chunks[:, 0].to(device))[:, None].float().cpu()

        return self.timed(lambda: process_in_chunks(y[None], on_device, chunk=self.chunk, overlap=self.overlap,
                                                    batch_size=self.batch_size, progress=self.progress,
                                                    desc=desc)[0])

    def baseline(self, name: str, clip: Clip, y: torch.Tensor) -> Result:
        fn = BASELINES.get_factory(name)
        out, wall, peak = self.run_chunked(lambda c: fn(self.model, c), y, desc=f"{clip.name}/{name}")
        return Result(clip.name, name, out, wall, peak)


def build_recipe(objects) -> tuple:
    """Degradation, guidance and schedule from the config; unknown names and bad values fail here."""
    degradation = build_degradation({"name": objects.degradation.name, **objects.degradation.params})
    guidance = build_guidance(objects.guidance.name, objects.guidance.params)
    schedule = build_schedule(objects.guidance.schedule_spec())
    return degradation, guidance, schedule


def measure(degradation: Degradation, clip: Clip, seed: int) -> torch.Tensor:
    """The clip's measurement ``y = A(x) + n`` ``(N,)``; the noise depends only on (clip, seed)."""
    generator = torch.Generator().manual_seed(seed_for("degradation", clip.name, seed))
    return degradation.measure(clip.waveform[None], generator)[0]


def run(cfg, objects, parser) -> Path:
    """The whole evaluation; returns the output folder.

    Order matters for users: config, recipe, clips (and their fit to the degradation) and the model
    are all checked before the first file is written.
    """
    degradation, guidance, schedule = build_recipe(objects)
    clips = load_clips(objects.data)
    for clip in clips:
        degradation.sample_support(clip.waveform.numel())  # e.g. gaps that do not fit raise here
    model = load_model(objects.model)
    sampler = objects.sampler
    evaluator = Evaluator(model, objects.chunk, progress=objects.progress)
    module = GuidedReconstructor(
        model, degradation, guidance, schedule, steps=sampler.steps, eta=sampler.eta, scheduler=sampler.scheduler,
        domain=sampler.domain, return_denoised=sampler.return_denoised, chunk_samples=evaluator.chunk,
        overlap_samples=evaluator.overlap, chunk_batch=evaluator.batch_size)
    out_dir = Path(objects.output_dir)
    method = objects.guidance.name
    rows = []
    total = len(clips) * (4 + sampler.seeds)
    with tqdm(total=total, desc="reconstructions", disable=not objects.progress) as bar:
        for clip in clips:
            clip_dir = out_dir / "clips" / clip.name
            y = measure(degradation, clip, objects.degradation.seed)
            write_wav(clip_dir / "input.wav", clip.waveform)
            results = [evaluator.baseline(name, clip, y) for name in ("degraded", "vocoder_roundtrip", "vae_roundtrip")]
            oracle = evaluator.baseline("vae_roundtrip", clip, clip.waveform)
            oracle.method = "oracle_vae_roundtrip"
            results.append(oracle)
            bar.update(4)
            for seed in range(sampler.seeds):
                out, wall, peak = evaluator.timed(lambda: module.reconstruct_clip(y, seed_for(clip.name, seed)))
                results.append(Result(clip.name, method, out, wall, peak, seed=seed))
                bar.update(1)
            for result in results:
                name = result.method if result.seed is None else f"{result.method}_seed{result.seed}"
                write_wav(clip_dir / f"{name}.wav", result.waveform)
                row = score(result, clip.waveform)
                row.update(degradation=degradation.describe(), guidance=method, scale=objects.guidance.scale,
                           schedule=objects.guidance.schedule, steps=sampler.steps)
                rows.append(row)
    write_csv(out_dir / "metrics.csv", rows)
    write_text(out_dir / "config.yaml", parser.dump(cfg, skip_none=False))
    return out_dir
