"""The report: statistics, plots, ``report.md`` and a self-contained ``report.html``, and wandb logging.

Reads only the rows of ``metrics.csv`` (plus the wavs they point to): the report never recomputes
a per-row metric (FAD, a set-level metric, is computed here from the wavs when its weights are there,
`gdr.fad`). Plots are matplotlib PNGs: the forest plot of each task's primary metric (first in the report),
metric-versus-strength curves, and the listening grid's small spectrograms (`gdr.listening`).

Statistics: every comparison (method x metric x task x reference) gets a paired t-test p-value, and the
report's p-values are adjusted together with ``report.correction`` (Holm by default; `gdr.stats.correct`).
The primary metric of each task is fixed in the config (``report.primary``) before the run; the verdicts
section states it and the correction.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from gdr.atomic import atomic_path, write_text
from gdr.metrics import PHASE_METRICS, SEED_METRICS
from gdr.speech_metrics import SPEECH_METRICS
from gdr.stats import CORRECTIONS, Comparison, best_baseline, compare, correct, metric_value

PRIMARY = "lsd"
SPECTRAL = ("logmel_l1", "lsd", "lsd_high", "mrstft")
REFERENCE = "vae_roundtrip"
WAVEFORM = PHASE_METRICS  # ("si_sdr", "snr"): the table's last metric columns
# What a table shows instead of a waveform metric of a phase-free output (metrics.csv holds "").
NOT_MEANINGFUL = "—"
# Above this much audio, report.html links the wavs instead of embedding them (it stays openable).
EMBED_LIMIT = 64 * 2**20
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


def comparisons(rows: list[dict], n_boot: int, confidence: float, correction: str = "none") -> list[Comparison]:
    """Every method against the VAE round trip and against the best non-diffusion baseline, per task and metric
    (gdr's spectral metrics, the speech metrics where clips are speech, and the seed's own metrics where the rows
    carry them), with p-values adjusted together by `correction` (`gdr.stats.CORRECTIONS`): the whole list is
    one family."""
    out = []
    metrics = [*SPECTRAL, *present(rows, SPEECH_METRICS), *(m for m in SEED_METRICS if rows and m in rows[0])]
    for task in _ordered(r["task"] for r in rows):
        methods = _methods(rows, task)
        inversion = [m for m in methods if m.startswith("decoder_inversion")]
        for metric in metrics:
            best = best_baseline(rows, task, metric, [*NON_DIFFUSION, *inversion])
            for method in methods:
                for reference in _ordered([REFERENCE, best]):
                    if reference is None or reference == method:
                        continue
                    c = compare(rows, task, metric, method, reference, n_boot=n_boot, confidence=confidence)
                    if c is not None:
                        out.append(c)
    return correct(out, correction)


def primary_metrics(tasks: dict[str, str], primary: dict) -> dict[str, str]:
    """``{task label: primary metric}`` from ``report.primary`` (`tasks`: task label -> degradation name): the
    task label's entry, else the degradation name's, else ``default``, else `PRIMARY`."""
    return {task: primary.get(task, primary.get(name, primary.get("default", PRIMARY))) for task, name in tasks.items()}


# ------------------------------------------------------------------------------------------ plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def strength_curves(rows: list[dict], metric: str = PRIMARY) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == "method" and r["scale"] != "":
            if (value := metric_value(r, metric)) is not None:
                series[(r["task"], r["guidance"])][float(r["scale"])].append(value)
    if not any(len(v) > 1 for v in series.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for (task, guidance), points in sorted(series.items()):
        scales = sorted(points)
        ax.plot(scales, [np.mean(points[s]) for s in scales], marker="o", label=f"{guidance} / {task}")
    ax.set_xlabel("guidance strength (scale)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.legend(fontsize=7)
    return _png(fig)


def forest_plot(comps: list[Comparison], primaries: dict[str, str]) -> bytes | None:
    """One panel per task: each method's paired improvement over each reference on that task's primary metric
    (`primaries`: task -> metric), with its bootstrap interval; green/red where the corrected verdict is
    significant (method better / worse), grey where it is not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(task, metric, [c for c in comps if c.task == task and c.metric == metric])
              for task, metric in primaries.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    heights = [0.3 * len(chosen) + 0.9 for _, _, chosen in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (task, metric, chosen) in zip(axes[:, 0], panels):
        for i, c in enumerate(chosen):
            color = ("tab:green" if c.mean > 0 else "tab:red") if c.significant else "tab:gray"
            ax.plot([c.low, c.high], [i, i], color="k")
            ax.plot([c.mean], [i], "o", color=color)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(chosen)))
        ax.set_yticklabels([f"{c.method} vs {c.reference}" for c in chosen], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{task}: primary metric {metric}", fontsize=9)
        ax.set_xlabel(f"improvement in {metric} (positive = method better), {1 - chosen[0].alpha:.0%} bootstrap CI; "
                      "colour = corrected verdict", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _slug(text: str) -> str:
    from gdr.evaluate import slug

    return slug(text)


# ------------------------------------------------------------------------------------------ text
def environment() -> dict:
    import torch

    import gdr

    versions = {"gdr": gdr.__version__, "python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("diffusers", "transformers", "lightning", "torchaudio", "torchmetrics"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing optional package is reported, not fatal
            versions[name] = "not installed"
    from importlib import metadata

    for name in ("pesq", "pystoi", "speechmos", "onnxruntime", "frechet-audio-distance"):  # the metrics' packages
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
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
            "t-tests over clips (seeds averaged per clip); intervals: "
            f"{report_cfg.confidence:.0%} paired bootstrap over clips, not adjusted. A method 'beats' a reference "
            "only where its adjusted p-value is below alpha and its interval excludes zero.")


def fad_results(out_dir: Path, rows: list[dict], plan, report_cfg) -> tuple[list[dict], str]:
    """FAD per task and method (`gdr.fad`) and a one-line note. Without the optional package or the weights,
    or if computing fails, no results, the note says why, and the same line goes to stderr: the run goes on."""
    from gdr import fad

    if not report_cfg.fad:
        return [], "FAD not computed (report.fad is false)."
    folder = fad.weights_folder(report_cfg.fad_weights)
    reason = fad.unavailable(folder)
    if reason is None:
        try:
            results = fad.fad_per_method(out_dir, rows, list(plan.clips), fad.Embedder(folder))
            return results, (f"FAD with {fad.EMBEDDING} embeddings (frechet_audio_distance), reference set: the "
                             f"{len(plan.clips)} clean inputs; lower is better. With fewer than a few hundred clips "
                             "it only ranks the methods of this run.")
        # An optional, set-level metric must not lose a finished run: any failure becomes the one-line note.
        except Exception as exc:  # noqa: BLE001
            reason = f"FAD not computed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    print(reason, file=sys.stderr)
    return [], reason


def build_report(out_dir: Path, rows: list[dict], plan, objects, *, cfg_yaml: str, wall_s: float) -> None:
    """Write report.md, report.html and plots/; log to wandb unless ``objects.logger`` is false."""
    from gdr import listening

    cfg = objects.report
    tasks = task_degradations(plan, rows)
    primaries = primary_metrics(tasks, cfg.primary)
    comps = comparisons(rows, cfg.bootstrap, cfg.confidence, cfg.correction)
    verdicts = verdict_lines(comps, plan.random_weights, primaries)
    statistics = statistics_note(comps, primaries, cfg)
    fads, fad_note = fad_results(out_dir, rows, plan, cfg)
    env = environment()
    plots: dict[str, bytes] = {}
    for name, png in (("forest_plot.png", forest_plot(comps, primaries)),
                      ("strength_curves.png", strength_curves(rows))):
        if png is not None:
            plots[name] = png
    listen_pngs = listening.spectrograms(out_dir, rows, plan.clips, list(tasks), _slug)
    listen_paths = {wav: f"plots/listen/{_slug(wav.removesuffix('.wav'))}.png" for wav in listen_pngs}
    for name, png in [*((f"plots/{n}", b) for n, b in plots.items()),
                      *((listen_paths[w], b) for w, b in listen_pngs.items())]:
        with atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)

    model_note = (f"**Model: `{objects.model.pretrained}` has random weights.** Every number below describes a "
                  "random network; it says nothing about the methods." if plan.random_weights
                  else f"Model: `{objects.model.pretrained}`.")
    conditions = sorted({r.get("condition", "") for r in rows} - {"", "none"})
    if conditions:  # which condition the prior sampled with; labels other than the default are in method names
        model_note += (" Prior conditioned on: " + "; ".join(f"`{c}`" for c in conditions)
                       + " (`metrics.csv` column `condition`; baselines and decoder inversion use no prior).")
    table = summary_table(rows)
    columns = header(rows)
    md = ["# gdr evaluation report", "", model_note, "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}; {len(plan.clips)} clips, "
          f"{len(plan.recipes)} recipes, {len(rows)} rows; wall time {wall_s:.1f} s; "
          f"peak memory {max(float(r['peak_mem_mb']) for r in rows):.0f} MiB.", ""]
    if "forest_plot.png" in plots:
        md += ["## Primary metric per task", "", "![forest_plot.png](plots/forest_plot.png)", ""]
    md += [f"## Verdicts ({cfg.correction} correction; primary metric per task)", "", statistics, ""]
    for task, lines in verdicts.items():
        md += [f"### {task} (primary: {primaries.get(task, PRIMARY)})", ""] + [f"- {line}" for line in lines] + [""]
    md += ["## FAD", "", fad_note, ""]
    if fads:
        md += ["| task | method | FAD | outputs | references |", "|---|---|---|---|---|"]
        md += [f"| {f['task']} | {f['method']} | {f['fad']:.4g} | {f['n_eval']} | {f['n_ref']} |" for f in fads]
        md += [""]
    md += ["## All comparisons", "",
           "| task | metric | method | reference | improvement | CI | clips x seeds | p | adjusted p |",
           "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {c.task} | {c.metric} | {c.method} | {c.reference} | {c.mean:.4g} | [{c.low:.4g}, {c.high:.4g}] | "
           f"{c.clips} x {c.seeds} | {c.p:.3g} | {c.p_used:.3g} |" for c in comps]
    md += ["", "## Means per task and method", "",
           f"{WAVEFORM_NOTE} `oracle_vae_roundtrip` is computed from the clean input (a ceiling). {SPEECH_NOTE}", "",
           "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(map(str, row)) + " |" for row in table]
    seeds = seed_table(rows)
    if seeds:
        md += ["", "## The seed's own metrics", "", SEED_NOTE, "",
               "| " + " | ".join(SEED_HEADER) + " |", "|" + "---|" * len(SEED_HEADER)]
        md += ["| " + " | ".join(map(str, row)) + " |" for row in seeds]
        md += ["", "Paired verdicts on the seed's metrics:", ""]
        md += [f"- {c.verdict()}" for c in comps if c.metric in SEED_METRICS and c.reference == REFERENCE]
    if plan.skipped:
        md += ["", "## Skipped combinations", ""] + [f"- {s}" for s in plan.skipped]
    md += ["", "## Listen", ""] + listening.grid_markdown(rows, list(plan.clips), list(tasks), listen_paths, _slug)
    md += ["", "## Plots", ""] + [f"![{n}](plots/{n})" for n in plots if n != "forest_plot.png"]
    md += ["", "## Environment", "", f"- machine: {env['machine']}"]
    md += [f"- {k}: {v}" for k, v in env["versions"].items()]
    md += ["", "## Resolved config", "", "```yaml", cfg_yaml.rstrip(), "```", ""]
    write_text(out_dir / "report.md", "\n".join(md))
    audio_bytes = sum((out_dir / r["wav"]).stat().st_size for r in rows) // 2  # embedded as 16-bit
    embed = objects.report.embed_audio and audio_bytes < EMBED_LIMIT
    write_text(out_dir / "report.html", render_html(out_dir, rows, plan, table, verdicts, comps, plots, env,
                                                    cfg_yaml, model_note, embed, columns=columns,
                                                    statistics=statistics, fads=fads, fad_note=fad_note,
                                                    listen_pngs=listen_pngs, tasks=list(tasks),
                                                    primaries=primaries))
    if objects.logger:
        log_wandb(out_dir, rows, plots, cfg_yaml, objects.report.wandb_project)


def _audio_src(out_dir: Path, rel: str, embed: bool) -> str:
    if not embed:
        return html.escape(rel)
    import soundfile as sf

    audio, sr = sf.read(str(out_dir / rel), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1), sr, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def render_html(out_dir, rows, plan, table, verdicts, comps, plots, env, cfg_yaml, model_note, embed_audio, *,
                columns=HEADER, statistics: str = "", fads=(), fad_note: str = "", listen_pngs=None, tasks=None,
                primaries=None) -> str:
    """The self-contained page: the primary metric's forest plot first, verdicts, FAD, tables, the listening grid
    (`gdr.listening`), other plots, environment and config."""
    from gdr import listening

    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>gdr report</title>",
             ("<style>body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse;"
              "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}.warn{background:#fee;padding:8px}"
              "table.listen td{vertical-align:top}table.listen audio{width:240px;height:28px}"
              "</style></head><body><h1>gdr evaluation report</h1>"),
             f"<p class='{'warn' if plan.random_weights else ''}'>{esc(model_note).replace('**', '')}</p>"]
    if "forest_plot.png" in plots:
        parts.append("<h2>Primary metric per task</h2><figure id='primary-forest'>"
                     f"{_img(plots['forest_plot.png'], 'forest plot of the primary metric')}<figcaption>Paired "
                     "improvement over each reference on each task's primary metric; colour = corrected verdict"
                     "</figcaption></figure>")
    parts.append(f"<h2>Verdicts</h2><p>{esc(statistics)}</p>")
    for task, lines in verdicts.items():
        primary = f" (primary: {(primaries or {}).get(task, PRIMARY)})"
        parts.append(f"<h3>{esc(task + primary)}</h3><ul>" + "".join(f"<li>{esc(l)}</li>" for l in lines) + "</ul>")
    parts.append(f"<h2>FAD</h2><p>{esc(fad_note)}</p>")
    if fads:
        parts.append("<table><tr><th>task</th><th>method</th><th>FAD</th><th>outputs</th><th>references</th></tr>"
                     + "".join(f"<tr><td>{esc(f['task'])}</td><td>{esc(f['method'])}</td><td>{f['fad']:.4g}</td>"
                               f"<td>{f['n_eval']}</td><td>{f['n_ref']}</td></tr>" for f in fads) + "</table>")
    parts.append(f"<h2>Means per task and method</h2><p>{esc(WAVEFORM_NOTE)} {esc(SPEECH_NOTE)}</p><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in columns) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in table]
    seeds = seed_table(rows)
    if seeds:
        parts.append(f"</table><h2>The seed's own metrics</h2><p>{esc(SEED_NOTE)}</p><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in SEED_HEADER) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in seeds]
    parts.append("</table><h2>Comparisons</h2><table><tr><th>task</th><th>metric</th><th>method</th>"
                 "<th>reference</th><th>improvement</th><th>CI</th><th>p</th><th>adjusted p</th></tr>")
    parts += [f"<tr><td>{esc(c.task)}</td><td>{c.metric}</td><td>{esc(c.method)}</td><td>{esc(c.reference)}</td>"
              f"<td>{c.mean:.4g}</td><td>[{c.low:.4g}, {c.high:.4g}]</td><td>{c.p:.3g}</td><td>{c.p_used:.3g}</td>"
              "</tr>" for c in comps]
    parts.append("</table><h2>Listen</h2>")
    parts.append(listening.grid_html(rows, list(plan.clips), tasks or _ordered(r["task"] for r in rows),
                                     listen_pngs or {}, lambda wav: _audio_src(out_dir, wav, embed_audio), _slug))
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        if name != "forest_plot.png":  # shown first
            parts.append(f"<figure>{_img(png, name)}<figcaption>{esc(name)}</figcaption></figure>")
    if plan.skipped:
        parts.append("<h2>Skipped combinations</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in plan.skipped) + "</ul>")
    parts.append(f"<h2>Environment</h2><p>{esc(env['machine'])}</p><ul>"
                 + "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in env["versions"].items()) + "</ul>")
    parts.append(f"<h2>Resolved config</h2><pre>{esc(cfg_yaml)}</pre></body></html>")
    return "\n".join(parts)


def log_wandb(out_dir: Path, rows: list[dict], plots: dict[str, bytes], cfg_yaml: str, project: str) -> None:
    """Config, the metrics table with audio, and the plots. Offline unless ``WANDB_MODE`` says otherwise."""
    import yaml

    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=project, dir=str(out_dir), mode=mode, config=yaml.safe_load(cfg_yaml),
                     settings=wandb.Settings(silent=True, console="off"))
    from gdr.metrics import PER_ITEM

    columns = [k for k in _ordered(k for r in rows for k in r) if k != "wav"] + ["audio"]  # speech metrics: some rows
    table = wandb.Table(columns=columns)
    numeric = {*PER_ITEM, *SPEECH_METRICS}
    for r in rows:  # metrics as numbers; the rest (mixed "" / numbers) as text so column types stay fixed
        # A waveform metric of a phase-free output, or a metric that does not apply, is missing (None), never a number.
        values = [metric_value(r, k) if k in numeric else str(r.get(k, "")) for k in columns[:-1]]
        table.add_data(*values, wandb.Audio(str(out_dir / r["wav"]), sample_rate=16000))
    images = {}
    for name, png in plots.items():
        from PIL import Image

        images[f"plots/{name}"] = wandb.Image(Image.open(io.BytesIO(png)))
    run.log({"metrics": table, **images})
    run.finish()
