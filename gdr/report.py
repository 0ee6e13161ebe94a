"""The report: statistics, plots, ``report.md`` and a self-contained ``report.html``, and wandb logging.

Reads only the rows of ``metrics.csv`` (plus the wavs they point to): the report never recomputes
a metric. Plots are matplotlib PNGs: a log-mel spectrogram grid per clip and task, metric-versus-
strength curves, and a forest plot of the bootstrap intervals.
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
from gdr.stats import Comparison, best_baseline, compare, metric_value

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


def comparisons(rows: list[dict], n_boot: int, confidence: float) -> list[Comparison]:
    """Every method against the VAE round trip and against the best non-diffusion baseline, per task and metric
    (gdr's spectral metrics, and the seed's own metrics where the rows carry them)."""
    out = []
    metrics = [*SPECTRAL, *(m for m in SEED_METRICS if rows and m in rows[0])]
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
    return out


# ------------------------------------------------------------------------------------------ plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def spectrogram_grid(out_dir: Path, rows: list[dict], clip: str, task: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf
    import torch

    from gdr.audio import log_mel

    panels = [("clean", f"audio/{_slug(clip)}/input.wav")]
    for r in rows:
        if r["clip"] == clip and r["task"] == task and str(r["seed"]) in ("", "0"):
            panels.append((r["method"], r["wav"]))
    cols = 3
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(12, 2.4 * ((len(panels) + 2) // 3)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, rel) in zip(axes.flat, panels):
        audio, _ = sf.read(str(out_dir / rel), dtype="float32")
        mel = log_mel(torch.from_numpy(audio)[None])[0, 0].T.numpy()
        ax.imshow(mel, origin="lower", aspect="auto", vmin=-11.5, vmax=2, cmap="magma")
        ax.set_title(name, fontsize=8)
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{clip} - {task} (log-mel, time ->)", fontsize=10)
    return _png(fig)


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


def forest_plot(comps: list[Comparison], metric: str = PRIMARY) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [c for c in comps if c.metric == metric]
    if not chosen:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(chosen) + 1))
    for i, c in enumerate(chosen):
        ax.plot([c.low, c.high], [i, i], color="k")
        ax.plot([c.mean], [i], "o", color="tab:green" if c.low > 0 else "tab:red" if c.high < 0 else "tab:gray")
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yticks(range(len(chosen)))
    ax.set_yticklabels([f"{c.task}: {c.method} vs {c.reference}" for c in chosen], fontsize=7)
    ax.set_xlabel(f"improvement in {metric} (positive = method better), 95% CI")
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
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs, GPU: {gpu}"
    return {"versions": versions, "machine": machine}


def summary_table(rows: list[dict]) -> list[tuple]:
    """(task, method, n, mean +- sd per metric) in first-appearance order, as text.

    SI-SDR and SNR cells are `NOT_MEANINGFUL` unless every row of the group is phase-coherent
    (`gdr.stats.metric_value`): a waveform metric after the phase-free vocoder is no score.
    """
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"])].append(r)
    table = []
    for (task, method), rs in groups.items():
        cells = []
        for metric in (*SPECTRAL, *WAVEFORM):
            found = [metric_value(r, metric) for r in rs]
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


def verdict_lines(comps: list[Comparison], random_weights: bool) -> dict[str, list[str]]:
    lines = defaultdict(list)
    for c in comps:
        if c.metric == PRIMARY:
            lines[c.task].append(c.verdict())
    if random_weights:
        for task in lines:
            lines[task].insert(0, "The model has random weights: these numbers say nothing about the methods.")
    return lines


def build_report(out_dir: Path, rows: list[dict], plan, objects, *, cfg_yaml: str, wall_s: float) -> None:
    """Write report.md, report.html and plots/; log to wandb unless ``objects.logger`` is false."""
    comps = comparisons(rows, objects.report.bootstrap, objects.report.confidence)
    verdicts = verdict_lines(comps, plan.random_weights)
    env = environment()
    plots: dict[str, bytes] = {}
    for clip in plan.clips:
        for task in _ordered(r["task"] for r in rows):
            plots[f"spectrogram_{_slug(clip)}_{_slug(task)}.png"] = spectrogram_grid(out_dir, rows, clip, task)
    for name, png in (("strength_curves.png", strength_curves(rows)), ("forest_plot.png", forest_plot(comps))):
        if png is not None:
            plots[name] = png
    for name, png in plots.items():
        with atomic_path(out_dir / "plots" / name) as tmp:
            tmp.write_bytes(png)

    model_note = (f"**Model: `{objects.model.pretrained}` has random weights.** Every number below describes a "
                  "random network; it says nothing about the methods." if plan.random_weights
                  else f"Model: `{objects.model.pretrained}`.")
    table = summary_table(rows)
    md = ["# gdr evaluation report", "", model_note, "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}; {len(plan.clips)} clips, "
          f"{len(plan.recipes)} recipes, {len(rows)} rows; wall time {wall_s:.1f} s; "
          f"peak memory {max(float(r['peak_mem_mb']) for r in rows):.0f} MiB.", "",
          "## Verdicts (primary metric: LSD; paired bootstrap over clips, "
          f"{objects.report.confidence:.0%} CI)", ""]
    for task, lines in verdicts.items():
        md += [f"### {task}", ""] + [f"- {line}" for line in lines] + [""]
    md += ["## All comparisons", "", "| task | metric | method | reference | improvement | CI | clips x seeds |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {c.task} | {c.metric} | {c.method} | {c.reference} | {c.mean:.4g} | [{c.low:.4g}, {c.high:.4g}] | "
           f"{c.clips} x {c.seeds} |" for c in comps]
    md += ["", "## Means per task and method", "",
           f"{WAVEFORM_NOTE} `oracle_vae_roundtrip` is computed from the clean input (a ceiling).", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
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
    md += ["", "## Plots", ""] + [f"![{n}](plots/{n})" for n in plots]
    md += ["", "## Environment", "", f"- machine: {env['machine']}"]
    md += [f"- {k}: {v}" for k, v in env["versions"].items()]
    md += ["", "## Resolved config", "", "```yaml", cfg_yaml.rstrip(), "```", ""]
    write_text(out_dir / "report.md", "\n".join(md))
    audio_bytes = sum((out_dir / r["wav"]).stat().st_size for r in rows) // 2  # embedded as 16-bit
    embed = objects.report.embed_audio and audio_bytes < EMBED_LIMIT
    write_text(out_dir / "report.html", render_html(out_dir, rows, plan, table, verdicts, comps, plots, env,
                                                    cfg_yaml, model_note, embed))
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


def render_html(out_dir, rows, plan, table, verdicts, comps, plots, env, cfg_yaml, model_note, embed_audio) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>gdr report</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}.warn{background:#fee;padding:8px}"
             "</style></head><body><h1>gdr evaluation report</h1>",
             f"<p class='{'warn' if plan.random_weights else ''}'>{esc(model_note).replace('**', '')}</p>",
             "<h2>Verdicts</h2>"]
    for task, lines in verdicts.items():
        parts.append(f"<h3>{esc(task)}</h3><ul>" + "".join(f"<li>{esc(l)}</li>" for l in lines) + "</ul>")
    parts.append(f"<h2>Means per task and method</h2><p>{esc(WAVEFORM_NOTE)}</p><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in HEADER) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in table]
    seeds = seed_table(rows)
    if seeds:
        parts.append(f"</table><h2>The seed's own metrics</h2><p>{esc(SEED_NOTE)}</p><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in SEED_HEADER) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in seeds]
    parts.append("</table><h2>Comparisons</h2><table><tr><th>task</th><th>metric</th><th>method</th>"
                 "<th>reference</th><th>improvement</th><th>CI</th></tr>")
    parts += [f"<tr><td>{esc(c.task)}</td><td>{c.metric}</td><td>{esc(c.method)}</td><td>{esc(c.reference)}</td>"
              f"<td>{c.mean:.4g}</td><td>[{c.low:.4g}, {c.high:.4g}]</td></tr>" for c in comps]
    parts.append("</table><h2>Listen</h2>")
    for clip in plan.clips:
        parts.append(f"<h3>{esc(clip)}</h3><table class='audio'><tr><th>task</th><th>method</th><th>seed</th>"
                     "<th>audio</th></tr>")
        clean = f"audio/{_slug(clip)}/input.wav"
        parts.append(f"<tr data-clip='{esc(clip)}' data-method='clean'><td></td><td>clean</td><td></td>"
                     f"<td><audio controls preload='none' src='{_audio_src(out_dir, clean, embed_audio)}'></audio>"
                     "</td></tr>")
        for r in rows:
            if r["clip"] == clip:
                parts.append(f"<tr data-clip='{esc(clip)}' data-method='{esc(r['method'])}'><td>{esc(r['task'])}</td>"
                             f"<td>{esc(r['method'])}</td><td>{r['seed']}</td><td><audio controls preload='none' "
                             f"src='{_audio_src(out_dir, r['wav'], embed_audio)}'></audio></td></tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        parts.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     f"<figcaption>{esc(name)}</figcaption></figure>")
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

    columns = [k for k in rows[0] if k != "wav"] + ["audio"]
    table = wandb.Table(columns=columns)
    for r in rows:  # metrics as numbers; the rest (mixed "" / numbers) as text so column types stay fixed
        # A waveform metric of a phase-free output is missing (None), never a number.
        values = [metric_value(r, k) if k in PER_ITEM else str(r[k]) for k in columns[:-1]]
        table.add_data(*values, wandb.Audio(str(out_dir / r["wav"]), sample_rate=16000))
    images = {}
    for name, png in plots.items():
        from PIL import Image

        images[f"plots/{name}"] = wandb.Image(Image.open(io.BytesIO(png)))
    run.log({"metrics": table, **images})
    run.finish()
