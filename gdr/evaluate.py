"""The evaluation: clips x recipes x seeds (a sweep; a plain run is a grid of one) -> items -> report.

Flow: config -> plan (clips, grid, items; everything validated before any work) -> model -> the pending
items packed into batches (`gdr.batching`: items of one recipe across clips, chunks and seeds share a sampling
run) -> `Trainer.predict` over the packs (whole packs per rank, on every node) -> rank 0 collects every item's
record, writes ``metrics.csv``, the statistics and the report, and logs to wandb (`gdr.wandb_log`).

The output folder's layout (``config.yaml``, ``items/``, ``audio/``, ``metrics.csv``, the report) is
`gdr.run_folder`'s; everything here writes through it.

A restarted run (same command) skips items whose record exists; records hold the item's metrics and
timing, so the rebuilt metrics.csv equals that of an uninterrupted run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from gdr.atomic import write_text
from gdr.audio import SAMPLE_RATE, write_wav
from gdr.backbone import AudioLDM2
from gdr.baselines import BASELINES
from gdr.batching import AUTO_CAP, BatchSize, auto_batch_size, pack, pack_size
from gdr.builders import is_random_weights
from gdr.chunking import chunk_layout, process_in_chunks
from gdr.cli import quiet_lightning
from gdr.condition_cache import ConditionCache
from gdr.conditioning import Conditioning, ConditionSpec
from gdr.data import Clip, demo_clips, load_folder
from gdr.degradations import Degradation, build_degradation
from gdr.errors import ConfigError, GdrWarning
from gdr.interrupt import StopSignals
from gdr.methods import GUIDANCE, build_guidance
from gdr.metrics import PER_ITEM, PHASE_METRICS, SEED_METRICS, align, score
from gdr.module import GuidedReconstructor, seed_for
from gdr.run_folder import RunFolder
from gdr.schedulers import check_sampling, make_scheduler
from gdr.schedules import schedule_for, schedule_warnings
from gdr.speech_metrics import applicable, speech_scores
from gdr.sweep import Item, condition_label, expand_grid, recipe_label, task_label
from gdr.text_stack import check_audio_branch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_BASELINES = ("degraded", "vocoder_roundtrip", "vae_roundtrip")
ORACLE = "oracle_vae_roundtrip"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_clips(data) -> list[Clip]:
    """All clips of the run, validated before any model work (`DataConfig`)."""
    if data.root is None and data.files is None:
        return demo_clips(data.demo_seconds)
    return load_folder(data.root, mono=data.mono, kind=data.kind, files=data.files)


def load_model(model_cfg, device: torch.device | None = None, null_condition: str = "original") -> AudioLDM2:
    return AudioLDM2.from_pretrained(
        model_cfg.pretrained,
        dtype=DTYPES[model_cfg.dtype],
        device=device or resolve_device(model_cfg.device),
        null_condition=null_condition,
        cache_dir=model_cfg.cache_dir,
        lora_path=model_cfg.lora_path,
        attention=model_cfg.attention,
        compile=model_cfg.compile,
        variant=model_cfg.variant,
    )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory: CUDA max allocated since the last reset, else the process's peak RSS (high-water mark)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def check_writable(out_dir: Path) -> None:
    """Raise a one-line `ConfigError` unless `out_dir` (or the folder it would be created in) accepts files.

    Probes by creating and deleting a temporary file in the nearest existing folder, so that a
    read-only folder, a read-only file system or a path through a regular file stops the run before any
    work (permission bits alone would say yes to root).
    """
    import tempfile

    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"output_dir {out_dir} cannot be created: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"output_dir {out_dir} is not writable ({probe}: {exc.strerror or exc})") from None


# ------------------------------------------------------------------------------------------ plan
@dataclass
class Plan:
    """Everything decided before any work: clips, recipes, items, skipped combinations."""

    clips: dict[str, Clip]
    clip_hashes: dict[str, str]
    recipes: list[dict]
    items: list[Item]
    skipped: list[str]
    random_weights: bool


def _recipe_objects(recipe: dict) -> tuple:
    degradation = build_degradation({"name": recipe["degradation"]["name"], **(recipe["degradation"]["params"] or {})})
    guidance = build_guidance(recipe["guidance"]["name"], recipe["guidance"]["params"])
    return degradation, guidance, schedule_for(recipe["guidance"])


def plan_evaluation(objects) -> Plan:
    """Expand the grid and build every item; bad names, values and combinations raise `ConfigError` here."""
    base = {
        "degradation": dataclasses.asdict(objects.degradation),
        "guidance": dataclasses.asdict(objects.guidance),
        # Seeds make items; the batch size changes the speed, never a result: neither is part of a recipe.
        "sampler": {k: v for k, v in dataclasses.asdict(objects.sampler).items() if k not in ("seeds", "batch_size")},
        "condition": dataclasses.asdict(objects.condition),
    }
    recipes = expand_grid(base, objects.sweep.grid)
    lora = objects.model.lora_path
    # Content hashes, not paths, so that a retrained adapter or schedule at the same path is not "done".
    context = {"model": objects.model.pretrained, "lora": file_hash(Path(lora) / "lora.safetensors") if lora else None,
               "lora_name": Path(lora).resolve().name if lora else None,
               "dtype": objects.model.dtype, "variant": objects.model.variant,
               "seed_metrics": objects.report.seed_metrics,
               "chunk": {k: v for k, v in dataclasses.asdict(objects.chunk).items() if k != "batch_size"}}
    kept, skipped = [], []
    for recipe in recipes:
        s = recipe["sampler"]  # sweep values skip the dataclass checks
        check_sampling(s["steps"], s["eta"], s["scheduler"], s["domain"])
        degradation, guidance, schedule = _recipe_objects(recipe)
        ConditionSpec.from_dict(recipe["condition"])
        scheduler = make_scheduler(s["scheduler"])
        try:
            guidance.validate(degradation, scheduler)
        except ConfigError as exc:
            if not objects.sweep.skip_incompatible or len(recipes) == 1:
                raise
            skipped.append(f"{recipe_label(recipe)} on {task_label(recipe['degradation'])}: {exc}")
            continue
        # A method that never calls the UNet is not changed by a LoRA: its label does not name one.
        recipe["context"] = context if guidance.uses_prior else {**context, "lora_name": None}
        if recipe["guidance"].get("schedule_path"):
            recipe["context"] = {**recipe["context"], "schedule": file_hash(Path(recipe["guidance"]["schedule_path"]))}
            for message in schedule_warnings(schedule, recipe["guidance"]["schedule_path"], recipe["degradation"],
                                             s["steps"]):
                warnings.warn(message, GdrWarning, stacklevel=2)
        kept.append(recipe)
    if not kept:
        raise ConfigError("the sweep grid is empty after removing incompatible combinations")

    clips = {clip.name: clip for clip in load_clips(objects.data)}
    # The kind is part of the key: it decides which metrics a record holds (re-marking a clip recomputes it).
    hashes = {name: hash_bytes(clip.waveform)[:16] + ("" if clip.kind == "other" else f"-{clip.kind}")
              for name, clip in clips.items()}
    tasks = {}
    for recipe in kept:
        tasks.setdefault(json.dumps(recipe["degradation"], sort_keys=True), recipe)
    for clip in clips.values():  # clip-dependent checks (gaps that do not fit) before any work
        for recipe in tasks.values():
            _recipe_objects(recipe)[0].sample_support(clip.waveform.numel())

    def seeds_of(method: str):  # a method without the prior draws nothing: one seed says all
        return range(objects.sampler.seeds) if GUIDANCE[method].uses_prior else [0]

    items: list[Item] = []
    for name in clips:
        for task_recipe in tasks.values():
            task = task_label(task_recipe["degradation"])
            degradation_name = task_recipe["degradation"]["name"]
            baselines = [b for b in BASELINES if b not in MODEL_BASELINES and BASELINES[b].applies_to(degradation_name)]
            for baseline in (*MODEL_BASELINES, ORACLE, *baselines):
                items.append(Item("baseline", name, hashes[name], task, baseline, task_recipe))
            for method in reference_methods(kept, task_recipe):
                reference = copy.deepcopy(task_recipe)
                reference["guidance"] = {"name": method, "scale": 1.0, "schedule": "constant",
                                         "start_scale": None, "params": {}, "schedule_path": None}
                if not GUIDANCE[method].uses_prior:  # it never calls the UNet
                    reference["condition"] = dataclasses.asdict(ConditionSpec())
                    reference["context"] = {**reference["context"], "lora_name": None}
                for seed in seeds_of(method):
                    items.append(Item("method", name, hashes[name], task, recipe_label(reference), reference,
                                      seed=seed))
        for recipe in kept:
            task = task_label(recipe["degradation"])
            for seed in seeds_of(recipe["guidance"]["name"]):
                items.append(Item("method", name, hashes[name], task, recipe_label(recipe), recipe, seed=seed))
    # Known for sure once the model folder is resolved (`run` sets it from the folder's marker).
    return Plan(clips, hashes, kept, items, skipped, random_weights=str(objects.model.pretrained) == "gdr-tiny")


def reference_methods(recipes: list[dict], task_recipe: dict) -> list[str]:
    """The reference methods (`Guidance.reference`) that no recipe of `task_recipe`'s task already runs."""
    ran = {r["guidance"]["name"] for r in recipes if r["degradation"] == task_recipe["degradation"]}
    return [name for name, cls in GUIDANCE.items() if cls.reference and name not in ran]


def file_hash(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def hash_bytes(x: torch.Tensor) -> str:
    import hashlib

    # The array's buffer itself (C-contiguous), not a ``tobytes`` copy of it: the same bytes, the same hash.
    return hashlib.sha256(np.ascontiguousarray(x.detach().cpu().float().numpy())).hexdigest()


# ------------------------------------------------------------------------------------------ work
class EvaluationRunner(L.LightningModule):
    """Executes items in `Trainer.predict`: each ``predict_step`` runs one pack (`packs`) and writes the wav and
    record of each of its items.

    A pack of method items shares a recipe and runs as one `GuidedReconstructor.reconstruct_clips` call: every
    chunk of every item is one latent of a batch, with its own generator, measurement and mask, so an item's output
    is the same in any pack (``sampler.batch_size: 1`` runs them one at a time). A baseline item is a pack of its own.
    """

    def __init__(self, model: AudioLDM2, plan: Plan, folder: RunFolder, chunk_cfg, seed_metrics: bool = False,
                 batch_size: int | str = "auto"):
        super().__init__()
        self.model, self.plan, self.folder = model, plan, folder
        self.seed_metrics = seed_metrics
        self.chunk = int(round(chunk_cfg.seconds * SAMPLE_RATE))
        self.overlap = int(round(chunk_cfg.overlap_seconds * SAMPLE_RATE))
        self.chunk_batch = chunk_cfg.batch_size
        self.batch_size = batch_size  # sampler.batch_size: an integer or "auto"
        self.batch_limit: int | None = None  # set when an out-of-memory halved a batch: later packs stay below it
        self.conditionings: dict[str, Conditioning] = {}  # condition_key -> conditioning (`prepare_conditionings`)
        self.stop = StopSignals()  # `run` installs it; packs start only while no stop was asked for
        self.log_lines: ProgressLines | None = None  # plain progress lines when stderr is not a terminal

    def measurement(self, item: Item, degradation: Degradation) -> torch.Tensor:
        clip = self.plan.clips[item.clip]
        seed = item.recipe["degradation"].get("seed", 0)
        generator = torch.Generator().manual_seed(seed_for("degradation", clip.name, seed))
        return degradation.measure(clip.waveform[None], generator)[0]

    # -------------------------------------------------------------- packing
    def window(self, item: Item) -> tuple[int, int]:
        """``(chunks, samples per chunk)`` of an item's clip on the model's grid (`gdr.chunking.chunk_layout`)."""
        grid = self.model.samples_multiple
        layout = chunk_layout(self.plan.clips[item.clip].waveform.numel(), self.chunk, self.overlap, grid)
        if len(layout.starts) == 1:
            return 1, layout.length + (-layout.length) % grid
        return len(layout.starts), layout.length

    def packs(self, indices: list[int]) -> list[list[int]]:
        """The items `indices` (plan indices) cut into packs: method items of one recipe and one chunk length share
        a pack of up to `gdr.batching.pack_size` latents; baselines go alone."""
        def key(i: int):
            item = self.plan.items[i]
            if item.kind != "method":
                return ("baseline", i)
            return json.dumps(item.recipe, sort_keys=True), self.window(item)[1]

        def size(i: int) -> int:
            item = self.plan.items[i]
            return self.window(item)[0] if item.kind == "method" else 1

        return pack(indices, key, size, pack_size(self.batch_size))

    def batch_for(self, item: Item, guidance) -> BatchSize:
        """Latents per sampling run for a pack of `item`'s recipe: the configured size, or ``auto`` from the
        device's free memory; never above a size that ran out of memory before."""
        if self.batch_size == "auto":
            heavy = guidance.decoder_gradients
            cfg = ConditionSpec.from_dict(item.recipe.get("condition")).cfg_scale != 1.0
            value = auto_batch_size(self.model.device, seconds=self.window(item)[1] / SAMPLE_RATE, heavy=heavy,
                                    cfg=cfg, dtype_bytes=next(self.model.unet.parameters()).element_size(),
                                    cap=AUTO_CAP)
        else:
            value = int(self.batch_size)
        return BatchSize(min(value, self.batch_limit or value))

    # -------------------------------------------------------------- work
    def run_methods(self, items: list[Item]) -> list[torch.Tensor]:
        """The output waveforms ``(N_i,)`` of method items that share a recipe, sampled together."""
        recipe = items[0].recipe
        degradation, guidance, schedule = _recipe_objects(recipe)
        s = recipe["sampler"]
        module = GuidedReconstructor(self.model, degradation, guidance, schedule, steps=s["steps"], eta=s["eta"],
                                     scheduler=s["scheduler"], domain=s["domain"],
                                     return_denoised=s["return_denoised"], chunk_samples=self.chunk,
                                     overlap_samples=self.overlap)
        dtype = next(self.model.unet.parameters()).dtype
        moved: dict[str, Conditioning | None] = {}  # one object per condition, so identical rows broadcast
        for item in items:
            key = condition_key(item)
            if key not in moved:
                conditioning = self.conditionings.get(key)
                moved[key] = None if conditioning is None else conditioning.to(self.model.device, dtype)
        conditionings = [moved[condition_key(item)] for item in items]
        batch = self.batch_for(items[0], guidance)
        before = batch.value
        outs = module.reconstruct_clips([self.measurement(item, degradation) for item in items],
                                        [seed_for(item.clip, item.seed) for item in items],
                                        None if all(c is None for c in conditionings) else conditionings,
                                        batch_size=batch)
        if batch.value < before:
            self.batch_limit = batch.value
        return outs

    def run_baseline(self, item: Item) -> tuple[torch.Tensor, bool]:
        """A baseline item's output waveform ``(N,)`` and whether it keeps the input's phase."""
        degradation = _recipe_objects(item.recipe)[0]
        x = self.plan.clips[item.clip].waveform
        y = self.measurement(item, degradation)
        baseline = BASELINES["vae_roundtrip" if item.method == ORACLE else item.method]
        source = x if item.method == ORACLE else y
        if not baseline.chunked:
            return baseline.fn(self.model, source[None], degradation)[0].float(), baseline.phase_coherent
        device = self.model.device

        def fn(chunks):  # (K, 1, n)
            return baseline.fn(self.model, chunks[:, 0].to(device), degradation)[:, None].float().cpu()

        out = process_in_chunks(source[None], fn, chunk=self.chunk, overlap=self.overlap,
                                grid=self.model.samples_multiple, batch_size=self.chunk_batch)[0]
        return out, baseline.phase_coherent

    def predict_step(self, batch: list[int], batch_idx: int = 0) -> None:
        """`batch`: one pack (plan indices, `packs`)."""
        # Another rank (the sampler's padding) or an earlier run may have done some.
        items = [self.plan.items[i] for i in batch if not self.folder.record(self.plan.items[i].key).exists()]
        if not items:
            return
        self.stop.check(f"{sum(self.folder.record(i.key).exists() for i in self.plan.items)} of "
                        f"{len(self.plan.items)} items done")
        device = self.model.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        if items[0].kind == "method":
            outs = self.run_methods(items)
            phases = [False] * len(items)
        else:
            outs, phases = map(list, zip(*(self.run_baseline(item) for item in items)))
        wall = time.perf_counter() - start
        peak = peak_memory_mb(device)
        # Each item's share of the pack's time, by its latents (chunks): the sum over a run is its sampling time.
        latents = [self.window(item)[0] if item.kind == "method" else 1 for item in items]
        for item, out, phase, n in zip(items, outs, phases, latents):
            self.finish(item, out, phase, wall * n / sum(latents), peak)
            if self.log_lines is not None:
                self.log_lines.finished(f"{item.clip} | {item.task} | {item.output}", wall * n / sum(latents))

    def finish(self, item: Item, out: torch.Tensor, phase: bool, wall: float, peak: float) -> None:
        clip = self.plan.clips[item.clip]
        aligned = align(out.detach().cpu(), clip.waveform)
        # Block by block (memory flat in the length); the seed's metrics see the raw output, not the aligned one.
        raw = out.detach().cpu()
        scores = score(aligned, clip.waveform, seed_metrics_of=raw if self.seed_metrics else None)
        row = {"clip": item.clip, "clip_kind": clip.kind, "task": item.task, "method": item.method, "kind": item.kind,
               "guidance": item.recipe["guidance"]["name"] if item.kind == "method" else item.method,
               "scale": item.recipe["guidance"]["scale"] if item.kind == "method" else "",
               "steps": item.recipe["sampler"]["steps"] if item.kind == "method" else "",
               # Which condition the prior sampled with; "none" where no UNet ran (baselines, decoder inversion).
               "condition": condition_label(item.recipe) if uses_prior(item) else "none",
               "uses_prior": uses_prior(item),
               "seed": "" if item.seed is None else item.seed, "phase_coherent": phase}
        for name in PER_ITEM:
            if name in PHASE_METRICS and not phase:
                row[name] = ""  # a waveform metric of a phase-free output would read like a score: blank
                continue
            row[name] = round(scores[name], 6)
        # Speech metrics only where they mean something (speech clips; PLCMOS on gaps): absent elsewhere.
        names = applicable(clip.kind, item.recipe["degradation"])
        for name, value in speech_scores(out.detach().cpu(), aligned, clip.waveform, names).items():
            row[name] = round(value, 6) if math.isfinite(value) else ""  # NaN: PESQ found no speech in the output
        if self.seed_metrics:  # the seed's own numbers: the raw output, not aligned, against the input
            for name in SEED_METRICS:
                row[name] = round(scores[name], 6)
        row.update(wall_s=round(wall, 3), peak_mem_mb=round(peak, 1), key=item.key)
        wav = self.folder.output_wav(item.clip, item.task, item.output)
        write_wav(wav, out)
        self.folder.write_record(item.key, row, wav)


def uses_prior(item: Item) -> bool:
    """Whether the item runs the diffusion prior (and so has a condition)."""
    return item.kind == "method" and GUIDANCE[item.recipe["guidance"]["name"]].uses_prior


def condition_key(item: Item) -> str:
    """What an item's conditioning depends on: the spec, and for ``audio: measurement`` the measured clip."""
    spec = ConditionSpec.from_dict(item.recipe.get("condition"))
    if spec.conditioned and spec.audio == "measurement":
        return json.dumps([dataclasses.asdict(spec), item.clip_hash, item.clip, item.recipe["degradation"]],
                          sort_keys=True)
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def prepare_conditionings(runner: "EvaluationRunner", items: list[Item], cache_dir, progress: bool = False) -> None:
    """Compute (or read from the cache) every conditioning `items` need, then free the text stack.

    Runs before any item, so a folder without what a condition needs (e.g. CLAP's audio branch) stops
    the run before anything is written.
    """
    from tqdm.auto import tqdm

    from gdr.backbone import default_cache_dir

    needed = {}
    for item in items:
        if uses_prior(item):
            needed.setdefault(condition_key(item), item)
    cache = ConditionCache(runner.model.source, cache_dir or default_cache_dir())
    work = []
    for key, item in needed.items():
        spec = ConditionSpec.from_dict(item.recipe.get("condition"))
        audio = None
        if spec.conditioned and spec.audio == "measurement":
            audio = runner.measurement(item, _recipe_objects(item.recipe)[0])
        work.append((key, spec, audio))
    if any(audio is not None and not cache.path(spec, audio).exists() for _, spec, audio in work):
        check_audio_branch(runner.model.source)  # before the progress bar: one line, nothing else
    try:
        for key, spec, audio in tqdm(work, desc="conditions", disable=not progress or len(work) < 2, leave=False):
            runner.conditionings[key] = cache.get(spec, audio)
    finally:
        cache.close()


class _Packs(torch.utils.data.Dataset):
    def __init__(self, packs: list[list[int]]):
        self.packs = packs

    def __len__(self):
        return len(self.packs)

    def __getitem__(self, i):
        return self.packs[i]


def run_folder(out_dir: Path, plan: Plan) -> RunFolder:
    """The run folder of `plan`: folder names assigned over all of its clips, tasks and outputs at once."""
    return RunFolder(out_dir, plan.clips, {item.task for item in plan.items}, {item.output for item in plan.items})


class ProgressLines:
    """One plain line per finished item on stderr: what, how long, how many left, estimated time left."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def finished(self, what: str, seconds: float) -> None:
        self.done += 1
        left = max(self.total - self.done, 0)
        eta = (time.perf_counter() - self.started) / self.done * left
        rank = os.environ.get("LOCAL_RANK")
        print(f"{'' if rank in (None, '0') else f'[rank {rank}] '}[{self.done}/{self.total}] {what}: "
              f"{seconds:.1f} s; {left} left, about {format_seconds(eta)} to go", file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def predict(runner: EvaluationRunner, pending: list[int], accelerator: str, trainer_cfg, progress: bool) -> bool:
    """Run the `pending` items (plan indices) with `Trainer.predict`, whole packs per rank (every rank cuts the same
    packs from the same list; Lightning's sampler deals them out over ``num_nodes x devices`` processes); returns
    whether this process is rank 0 (which then writes the tables and the report, once every rank's records are on
    disk: the barrier)."""
    quiet_lightning()  # also when called from Python rather than the script
    # A bar on a terminal; in a log (CI, | tee, SLURM) a bar is one line rewritten in place, so one line per item.
    terminal = sys.stderr.isatty()
    packs = runner.packs(pending)
    share = math.ceil(len(pending) / trainer_cfg.world_size)
    runner.log_lines = ProgressLines(share) if progress and not terminal else None
    trainer = L.Trainer(accelerator=accelerator, devices=trainer_cfg.devices, num_nodes=trainer_cfg.num_nodes,
                        strategy=trainer_cfg.strategy, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress and terminal, enable_model_summary=False, inference_mode=False)
    loader = DataLoader(_Packs(packs), batch_size=None)  # one pack per step
    trainer.predict(runner, dataloaders=loader, return_predictions=False)
    trainer.strategy.barrier()
    return trainer.is_global_zero


def run(cfg, objects, parser) -> Path | None:
    """The whole evaluation; returns the output folder on rank 0 (None on other ranks).

    Nothing is written before the plan and the model load.
    """
    started = time.time()
    out_dir = Path(objects.output_dir)
    check_writable(out_dir)
    plan = plan_evaluation(objects)
    trainer_cfg = objects.trainer
    device = resolve_device(objects.model.device)
    accelerator = trainer_cfg.accelerator if trainer_cfg.accelerator != "auto" else device.type
    model = load_model(objects.model, device=torch.device("cpu") if trainer_cfg.world_size > 1 else device,
                       null_condition=objects.condition.unconditional)
    plan.random_weights = plan.random_weights or is_random_weights(model.source)
    # The chunk length and overlap on this model's grid (a ConfigError here is still before any work).
    chunk_layout(1, round(objects.chunk.seconds * SAMPLE_RATE), round(objects.chunk.overlap_seconds * SAMPLE_RATE),
                 model.samples_multiple)
    folder = run_folder(out_dir, plan)
    runner = EvaluationRunner(model, plan, folder, objects.chunk, seed_metrics=objects.report.seed_metrics,
                              batch_size=objects.sampler.batch_size)
    if int(os.environ.get("RANK", "0")) == 0:
        folder.remove_stale_temporaries(older_than=started)
    pending = [i for i, item in enumerate(plan.items) if not folder.record(item.key).exists()]
    with runner.stop:  # SIGTERM / Ctrl-C: finish the item at hand, then stop (`gdr.interrupt`)
        prepare_conditionings(runner, [plan.items[i] for i in pending], objects.model.cache_dir, objects.progress)
        start = time.perf_counter()
        if pending and not predict(runner, pending, accelerator, trainer_cfg, objects.progress):
            return None
    missing = [item for item in plan.items if not folder.record(item.key).exists()]
    if missing:  # every rank passed the barrier, so their records are written: this rank cannot see them
        raise ConfigError(f"{len(missing)} of {len(plan.items)} items have no record in {out_dir} after every rank "
                          "finished: with several nodes, output_dir must be a folder every node sees (a shared disk)")
    for name, clip in plan.clips.items():
        if not folder.input_wav(name).exists():
            write_wav(folder.input_wav(name), clip.waveform)
    rows = folder.rows(item.key for item in plan.items)
    folder.write_metrics(rows)
    write_text(folder.config, parser.dump(cfg, skip_none=False))
    from gdr.report import build_report

    cfg_yaml = parser.dump(cfg, skip_none=False)
    report = build_report(folder, rows, plan, objects, cfg_yaml=cfg_yaml, wall_s=time.perf_counter() - start)
    if objects.logger:  # beside the report, not inside it: the report never needs wandb
        from gdr.wandb_log import log_run

        log_run(folder, rows, report.figures, cfg_yaml, objects.report.wandb_project)
    return out_dir
