"""The report: its statistics, its data model (`Report`), and ``report.md`` / ``report.html`` rendered from it.

Reads only the rows of ``metrics.csv`` (plus the wavs they point to): the report never recomputes
a per-row metric (FAD, a set-level metric, is computed here from the wavs when its weights are there,
`gdr.fad`).

Statistics: every comparison (method x metric x task x reference) gets a paired t-test p-value, and the
report's p-values are adjusted together with ``report.correction`` (Holm by default; `gdr.stats.correct`).
The primary metric of each task is fixed in the config (``report.primary``) before the run; the verdicts
section states it and the correction.

Data, then presentation: `report_data` gathers everything a reader sees into one `Report` (text, tables,
pictures, the listening grid of `gdr.listening`); the Jinja2 templates ``gdr/templates/report.md.j2`` and
``report.html.j2`` (package data) lay it out. HTML is auto-escaped, so a clip or method name is always text;
Markdown is not HTML-escaped. The figures are drawn by `gdr.plots`; every path comes from
`gdr.run_folder.RunFolder`. Logging to wandb is `gdr.wandb_log`'s, called beside the report, not from it.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

import numpy as np

from gdr import listening, plots
from gdr.atomic import atomic_path, write_text
from gdr.errors import GdrWarning
from gdr.listening import Listening
from gdr.metric_names import SPEECH_METRICS
from gdr.metrics import PHASE_METRICS, SEED_METRICS
from gdr.plots import Png
from gdr.run_folder import RunFolder
from gdr.stats import CORRECTIONS, Comparison, best_baseline, compare, correct, metric_value
from gdr.sweep import LEARNED, split_strength

PRIMARY = "lsd"
SPECTRAL = ("logmel_l1", "lsd", "lsd_high", "mrstft")
REFERENCE = "vae_roundtrip"
WAVEFORM = PHASE_METRICS  # ("si_sdr", "snr"): the table's last metric columns
# What a table shows instead of a waveform metric of a phase-free output (metrics.csv holds "").
NOT_MEANINGFUL = "—"
# Above this much audio, report.html links the wavs instead of embedding them (it stays openable).
EMBED_LIMIT = 64 * 2**20
BEST_CONSTANT = "best constant strength"  # `Comparison.role` of a learned schedule's constant-strength reference
LEARNED_NOTE = ("Each recipe with a learned schedule (guidance.schedule_path, labelled learned:<file>) is compared "
                "with the best constant strength of the same guidance method on the same task in this sweep (the "
                "recipes that differ from it only by a constant scale: same steps, parameters, sampler settings and "
                "condition), best by the mean of each metric, as for the best baseline. Choosing the best constant "
                "on the same clips favours the constant, so the comparison is conservative for the learned "
                "schedule: this is the claim a learned schedule has to win. These comparisons are in the same "
                "multiple-comparison family as all the others; verdicts below are on each task's primary metric.")
NON_DIFFUSION = ("degraded", "vocoder_roundtrip", "vae_roundtrip", "spectral_subtraction", "lowband_replacement",
                 "ar_interpolation", "consistent_declip")


def _methods(rows: list[dict], task: str) -> list[str]:
    seen = []
    for r in rows:
        if r["task"] == task and r["kind"] == "method" and r["method"] not in seen:
            seen.append(r["method"])
    return seen


def _ordered(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def present(rows: list[dict], names) -> list[str]:
    """The metrics of `names` that at least one row has a value for (speech metrics exist only for speech clips)."""
    return [m for m in names if any(r.get(m, "") not in ("", None) for r in rows)]


def constant_peers(rows: list[dict], task: str, method: str) -> list[str]:
    """If `method` is a recipe with a learned schedule (label ``<guidance> learned:<file> ...``): the recipes of
    `task` that differ from it only by a constant strength (``<guidance> s=<scale> ...`` with the same rest of the
    label: steps, parameters, sampler settings, condition); else ``[]``."""
    guidance = next((r.get("guidance", "") for r in rows if r["task"] == task and r["method"] == method), "")
    learned = split_strength(method, guidance)
    if learned is None or not learned[0].startswith(LEARNED):
        return []
    return [m for m in _methods(rows, task)
            if (peer := split_strength(m, guidance)) is not None and peer[0].startswith("s=") and peer[1] == learned[1]]


def comparisons(rows: list[dict], n_boot: int, confidence: float, correction: str = "none",
                unchanged_tasks: frozenset[str] = frozenset()) -> list[Comparison]:
    """Every method against the VAE round trip and against the best non-diffusion baseline, per task and metric
    (gdr's spectral metrics, the speech metrics where clips are speech, and the seed's own metrics where the rows
    carry them), and every recipe with a learned schedule also against the best constant strength of its method
    (`constant_peers`, best mean per metric as for the best baseline; role `BEST_CONSTANT`), with p-values
    adjusted together by `correction` (`gdr.stats.CORRECTIONS`): the whole list is one family. On
    `unchanged_tasks` (the identity task) the "degraded" output is the clean input itself, so it is no baseline
    to compare with."""
    out = []
    metrics = [*SPECTRAL, *present(rows, SPEECH_METRICS), *(m for m in SEED_METRICS if rows and m in rows[0])]
    for task in _ordered(r["task"] for r in rows):
        methods = _methods(rows, task)
        # Methods that never ran the prior (decoder inversion) are non-diffusion references too.
        no_prior = _ordered(r["method"] for r in rows if r["task"] == task and r["kind"] == "method"
                            and str(r.get("uses_prior", True)) == "False")
        for metric in metrics:
            candidates = [b for b in NON_DIFFUSION if not (task in unchanged_tasks and b == "degraded")]
            best = best_baseline(rows, task, metric, [*candidates, *no_prior])
            for method in methods:
                constant = best_baseline(rows, task, metric, constant_peers(rows, task, method))
                for reference in _ordered([REFERENCE, best, constant]):
                    if reference is None or reference == method:
                        continue
                    c = compare(rows, task, metric, method, reference, n_boot=n_boot, confidence=confidence)
                    if c is not None:
                        c.role = BEST_CONSTANT if reference == constant else ""
                        out.append(c)
    return correct(out, correction)


def primary_metrics(tasks: dict[str, str], primary: dict) -> dict[str, str]:
    """``{task label: primary metric}`` from ``report.primary`` (`tasks`: task label -> degradation name): the
    task label's entry, else the degradation name's, else ``default``, else `PRIMARY`."""
    return {task: primary.get(task, primary.get(name, primary.get("default", PRIMARY))) for task, name in tasks.items()}


# ------------------------------------------------------------------------------------------ text
def environment() -> dict:
    """``{"versions": {package: version}, "machine": text}``: gdr, python, the model and metric packages (read from
    their installed metadata, so nothing heavy is imported), and the machine with its GPU."""
    from importlib import metadata

    import torch
    import torchaudio

    import gdr

    # torch and torchaudio by __version__: it carries the build (+cpu, +cu130) that their metadata may not.
    built = {"torch": torch.__version__, "torchaudio": torchaudio.__version__}
    versions = {"gdr": gdr.__version__, "python": sys.version.split()[0], "torch": built["torch"]}
    for name in ("diffusers", "transformers", "lightning", "torchaudio", "torchmetrics",  # the model's packages
                 "pesq", "pystoi", "speechmos", "onnxruntime", "frechet-audio-distance"):  # the metrics' packages
        try:
            versions[name] = built.get(name) or metadata.version(name)
        except metadata.PackageNotFoundError:  # a missing optional package is reported, not fatal
            versions[name] = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, GPU: {gpu}"
    return {"versions": versions, "machine": machine}


def summary_table(rows: list[dict]) -> list[tuple]:
    """(task, method, n, mean +- sd per metric) in first-appearance order, as text.

    SI-SDR and SNR cells are `NOT_MEANINGFUL` unless every row of the group is phase-coherent
    (`gdr.stats.metric_value`): a waveform metric after the phase-free vocoder is no score. Speech-metric columns
    appear when some clip is speech; their cells average the group's speech clips (`NOT_MEANINGFUL` without one).
    Columns: `header`.
    """
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"])].append(r)
    speech = present(rows, SPEECH_METRICS)
    table = []
    for (task, method), rs in groups.items():
        cells = []
        for metric in (*SPECTRAL, *speech, *WAVEFORM):
            found = [metric_value(r, metric) for r in rs]
            if metric in speech:
                found = [v for v in found if v is not None] or [None]
            if any(v is None for v in found):
                cells.append(NOT_MEANINGFUL)
                continue
            values = np.array(found)
            cells.append(f"{values.mean():.3f} +- {values.std():.3f}" if len(values) > 1 else f"{values.mean():.3f}")
        wall = np.mean([float(r["wall_s"]) for r in rs])
        peak = max(float(r["peak_mem_mb"]) for r in rs)
        table.append((task, method, len(rs), *cells, f"{wall:.2f}", f"{peak:.0f}"))
    return table


HEADER = ("task", "method", "n", *SPECTRAL, *WAVEFORM, "wall_s", "peak_MiB")


def header(rows: list[dict]) -> tuple[str, ...]:
    """`summary_table`'s columns for `rows`: `HEADER` with the speech metrics that have values after the spectral
    ones."""
    return ("task", "method", "n", *SPECTRAL, *present(rows, SPEECH_METRICS), *WAVEFORM, "wall_s", "peak_MiB")


SPEECH_NOTE = ("Speech metrics (PESQ wideband, STOI, ESTOI, DNSMOS P.835 SIG/BAK/OVRL, PLCMOS) are computed only "
               "for clips of kind speech (data/README.md), PLCMOS only on tasks with gaps; their cells average "
               "the speech clips of the group.")
WAVEFORM_NOTE = (f"SI-SDR and SNR are shown only for phase-coherent outputs (the degraded input and the DSP "
                 f"baselines); {NOT_MEANINGFUL} marks outputs that went through the phase-free vocoder, for which "
                 "waveform metrics are not meaningful (metrics.csv leaves them blank).")


SEED_NOTE = ("The seed's own metrics: waveform MSE, SNR (dB) and Pearson correlation of the raw output against "
             "the input, unaligned, as the seed computed them, and the change against `vae_roundtrip` (the seed's "
             "baseline, 'pure VAE reconstruction'). The seed claimed 24.7-26.8 % lower MSE and +1.23-1.35 dB SNR on "
             "one clip. Both outputs went through the phase-free vocoder, so these waveform numbers measure phase "
             "agreement as much as quality: read them beside the spectral metrics above.")


def seed_table(rows: list[dict]) -> list[tuple]:
    """(task, method, n, MSE, MSE change vs vae_roundtrip in %, SNR, SNR change in dB, correlation) per group.

    Changes are of the means over the task's rows (clips x seeds), the form of the seed's claim; the paired
    intervals are in the comparisons table.
    """
    groups = defaultdict(list)
    for r in rows:
        if r.get("seed_mse", "") != "":
            groups[(r["task"], r["method"])].append(r)
    table = []
    for (task, method), rs in groups.items():
        ref = groups.get((task, REFERENCE))
        mean = {m: np.mean([float(r[m]) for r in rs]) for m in SEED_METRICS}
        ref_mean = {m: np.mean([float(r[m]) for r in ref]) for m in SEED_METRICS} if ref else None
        mse_change = f"{100 * (mean['seed_mse'] / ref_mean['seed_mse'] - 1):+.1f} %" if ref_mean else ""
        snr_change = f"{mean['seed_snr'] - ref_mean['seed_snr']:+.2f} dB" if ref_mean else ""
        table.append((task, method, len(rs), f"{mean['seed_mse']:.3g}", mse_change, f"{mean['seed_snr']:.2f}",
                      snr_change, f"{mean['seed_corr']:.3f}"))
    return table


SEED_HEADER = ("task", "method", "n", "MSE", "MSE vs vae_roundtrip", "SNR dB", "SNR vs vae_roundtrip", "corr")


def verdict_lines(comps: list[Comparison], random_weights: bool,
                  primaries: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Per task, the verdict of every comparison on its primary metric (`primaries`: task -> metric; default
    `PRIMARY` for every task), or one line saying why there is none."""
    if primaries is None:
        primaries = {c.task: PRIMARY for c in comps}
    lines = defaultdict(list)
    for task, metric in primaries.items():
        lines[task] = [c.verdict() for c in comps if c.task == task and c.metric == metric]
        if not lines[task]:
            lines[task].append(f"no verdict: the primary metric {metric} has no paired values on this task (speech "
                               "metrics need clips of kind speech, plcmos a task with gaps; see data/README.md)")
    if random_weights:
        for task in lines:
            lines[task].insert(0, "The model has random weights: these numbers say nothing about the methods.")
    return lines


def learned_verdicts(comps: list[Comparison], primaries: dict[str, str]) -> list[TaskVerdicts]:
    """Per task with a learned schedule, the verdicts of its comparisons with the best constant strength on the
    task's primary metric (`primaries`: task -> metric); tasks without one are left out."""
    out = [TaskVerdicts(task, metric, [c.verdict() for c in comps
                                       if c.task == task and c.metric == metric and c.role == BEST_CONSTANT])
           for task, metric in primaries.items()]
    return [v for v in out if v.lines]


def task_degradations(plan, rows: list[dict]) -> dict[str, str]:
    """``{task label: degradation name}`` for the tasks of `rows`, in first-appearance order."""
    from gdr.sweep import task_label

    names = {task_label(r["degradation"]): r["degradation"]["name"] for r in plan.recipes}
    return {task: names.get(task, "") for task in _ordered(r["task"] for r in rows)}


def statistics_note(comps: list[Comparison], primaries: dict[str, str], report_cfg) -> str:
    """The sentence that says how verdicts are reached: primary metrics, correction, family size, tests."""
    alpha = 1 - report_cfg.confidence
    named = "; ".join(f"{task}: {metric}" for task, metric in primaries.items())
    return (f"Primary metric per task (report.primary, fixed in the config before the run): {named}. "
            f"Multiple comparisons: {CORRECTIONS[report_cfg.correction]}, over all {len(comps)} comparisons of this "
            f"report (every task, metric, method and reference) at alpha = {alpha:.3g}. p-values: two-sided paired "
            "t-tests over clips (seeds averaged per clip). Intervals beside verdicts and in the forest plot: paired "
            "t-intervals at the level the correction implies (Holm: 1 - alpha p / p_Holm for each comparison; BH: "
            "Benjamini-Yekutieli's 1 - R alpha / m with R discoveries; none: 1 - alpha), so an interval excludes "
            "zero exactly where the verdict is significant. The table of all comparisons also gives each one's "
            f"unadjusted {report_cfg.confidence:.0%} paired bootstrap interval over clips.")


def fad_results(folder: RunFolder, rows: list[dict], plan, report_cfg) -> tuple[list[dict], str]:
    """FAD per task and method (`gdr.fad`) and a one-line note. Without the optional package or the weights,
    or if computing fails, no results, the note says why, and the same line goes to stderr: the run goes on."""
    from gdr import fad

    if not report_cfg.fad:
        return [], "FAD not computed (report.fad is false)."
    weights = fad.weights_folder(report_cfg.fad_weights)
    reason = fad.unavailable(weights)
    if reason is None:
        try:
            results = fad.fad_per_method(folder, rows, list(plan.clips), fad.Embedder(weights))
            return results, (f"FAD with {fad.EMBEDDING} embeddings (frechet_audio_distance), reference set: the "
                             f"{len(plan.clips)} clean inputs; lower is better. With fewer than a few hundred clips "
                             "it only ranks the methods of this run.")
        # An optional, set-level metric must not lose a finished run: any failure becomes the one-line note.
        except Exception as exc:  # noqa: BLE001
            reason = f"FAD not computed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    warnings.warn(reason, GdrWarning, stacklevel=2)  # the scripts print it as one "warning: ..." line
    return [], reason




# ------------------------------------------------------------------------------------------ the data model
@dataclass
class Table:
    """A table as text: `columns` and `rows` of already formatted cells."""

    columns: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)


@dataclass
class TaskVerdicts:
    """The verdicts of one task on its `primary` metric (`verdict_lines`)."""

    task: str
    primary: str
    lines: list[str]


@dataclass
class Report:
    """Everything the report shows, in the order of ``report.md``; the templates only lay it out.

    Text fields are plain text (the model note is Markdown: ``**`` and backticks; HTML shows it without ``**``).
    """

    model_note: str = ""
    random_weights: bool = False
    facts: str = ""  # when, how many clips / recipes / rows, wall time, peak memory
    forest: Png | None = None  # the primary metric's forest plot (`gdr.plots.forest_plot`), shown first
    correction: str = "none"
    statistics: str = ""  # how verdicts are reached (`statistics_note`)
    verdicts: list[TaskVerdicts] = field(default_factory=list)
    learned: list[TaskVerdicts] = field(default_factory=list)  # learned schedules vs the best constant strength
    learned_note: str = LEARNED_NOTE
    fad_note: str = ""
    fads: list[dict] = field(default_factory=list)  # `gdr.fad.fad_per_method`'s rows
    comparisons: list[Comparison] = field(default_factory=list)
    means: Table = field(default_factory=lambda: Table(HEADER))  # `summary_table` under `header`
    seeds: Table = field(default_factory=lambda: Table(SEED_HEADER))  # `seed_table` (no rows: no section)
    seed_verdicts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    listening: Listening = field(default_factory=Listening)
    plots: list[Png] = field(default_factory=list)  # the other figures (strength curves)
    environment: dict = field(default_factory=lambda: {"machine": "", "versions": {}})
    config_yaml: str = ""
    waveform_note: str = WAVEFORM_NOTE
    speech_note: str = SPEECH_NOTE
    seed_note: str = SEED_NOTE

    @property
    def figures(self) -> dict[str, bytes]:
        """``{file name: PNG}`` of the report's plots, the forest plot first (what wandb logs)."""
        return {p.name: p.data for p in ([self.forest] if self.forest else []) + self.plots}


def report_data(folder: RunFolder, rows: list[dict], plan, objects, cfg_yaml: str, wall_s: float) -> Report:
    """The `Report` of a finished run: statistics of `rows` (``metrics.csv``), plots, the listening grid of
    `plan`'s clips and tasks, and the run's facts. `objects`: the built config (``report``, ``model``);
    `wall_s`: the run's wall time in s."""
    cfg = objects.report
    tasks = task_degradations(plan, rows)
    primaries = primary_metrics(tasks, cfg.primary)
    unchanged = frozenset(task for task, name in tasks.items() if name == "identity")
    comps = comparisons(rows, cfg.bootstrap, cfg.confidence, cfg.correction, unchanged_tasks=unchanged)
    verdicts = verdict_lines(comps, plan.random_weights, primaries)
    fads, fad_note = fad_results(folder, rows, plan, cfg)

    def figure(name: str, png: bytes | None) -> Png | None:
        return None if png is None else Png(folder.relative(folder.plot(name)), png)

    others = [figure("strength_curves.png", plots.strength_curves(rows, PRIMARY))]
    pngs = listening.spectrograms(folder, rows, plan.clips, list(tasks))
    audio_bytes = sum((folder.root / r["wav"]).stat().st_size for r in rows) // 2  # embedded as 16-bit
    model_note = (f"**Model: `{objects.model.pretrained}` has random weights.** Every number below describes a "
                  "random network; it says nothing about the methods." if plan.random_weights
                  else f"Model: `{objects.model.pretrained}`.")
    conditions = sorted({r.get("condition", "") for r in rows} - {"", "none"})
    if conditions:  # which condition the prior sampled with; labels other than the default are in method names
        model_note += (" Prior conditioned on: " + "; ".join(f"`{c}`" for c in conditions)
                       + " (`metrics.csv` column `condition`; baselines and decoder inversion use no prior).")
    facts = (f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}; {len(plan.clips)} clips, "
             f"{len(plan.recipes)} recipes, {len(rows)} rows; wall time {wall_s:.1f} s; "
             f"peak memory {max(float(r['peak_mem_mb']) for r in rows):.0f} MiB.")
    return Report(
        model_note=model_note, random_weights=plan.random_weights, facts=facts,
        forest=figure("forest_plot.png", plots.forest_plot(comps, primaries)),
        correction=cfg.correction, statistics=statistics_note(comps, primaries, cfg),
        verdicts=[TaskVerdicts(task, primaries.get(task, PRIMARY), lines) for task, lines in verdicts.items()],
        learned=learned_verdicts(comps, primaries),
        fad_note=fad_note, fads=fads, comparisons=comps,
        means=Table(header(rows), summary_table(rows)), seeds=Table(SEED_HEADER, seed_table(rows)),
        seed_verdicts=[c.verdict() for c in comps if c.metric in SEED_METRICS and c.reference == REFERENCE],
        skipped=list(plan.skipped),
        listening=listening.section(folder, rows, plan.clips, list(tasks), pngs,
                                    embed_audio=cfg.embed_audio and audio_bytes < EMBED_LIMIT),
        plots=[p for p in others if p is not None], environment=environment(), config_yaml=cfg_yaml)


# ------------------------------------------------------------------------------------------ presentation
@lru_cache(maxsize=1)
def templates():
    """The Jinja2 environment over ``gdr/templates`` (package data): ``*.html.j2`` auto-escaped, ``*.md.j2`` not."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("gdr", "templates"), undefined=StrictUndefined,
                       autoescape=select_autoescape(enabled_extensions=("html.j2",), disabled_extensions=("md.j2",)),
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_markdown(report: Report) -> str:
    """``report.md``: forest plot, verdicts, FAD, comparisons, tables, listening grid, plots, environment, config."""
    return templates().get_template("report.md.j2").render(report=report)


def render_html(report: Report) -> str:
    """The self-contained ``report.html``: the primary metric's forest plot first, verdicts, FAD, tables, the
    listening grid (audio and pictures embedded), other plots, environment and config."""
    return templates().get_template("report.html.j2").render(report=report)


def write_report(folder: RunFolder, report: Report) -> None:
    """Write the report's pictures (plots and spectrograms), ``report.md`` and ``report.html`` into `folder`."""
    cells = [c.spectrogram for g in report.listening.grids for r in g.rows for c in r.cells if c and c.spectrogram]
    pictures = {p.path: p for p in [*([report.forest] if report.forest else []), *report.plots, *cells]}
    for png in pictures.values():  # a clean input's spectrogram sits in every task's grid: written once
        with atomic_path(folder.root / png.path) as tmp:
            tmp.write_bytes(png.data)
    write_text(folder.report_md, render_markdown(report))
    write_text(folder.report_html, render_html(report))


def build_report(folder: RunFolder, rows: list[dict], plan, objects, *, cfg_yaml: str, wall_s: float) -> Report:
    """Write report.md, report.html and plots/ of a finished run (`report_data`, `write_report`); returns the
    `Report` (its `Report.figures` are what `gdr.wandb_log.log_run` logs)."""
    report = report_data(folder, rows, plan, objects, cfg_yaml, wall_s)
    write_report(folder, report)
    return report
