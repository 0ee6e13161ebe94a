"""The report's figures, as PNG bytes: the forest plot of each task's primary metric, metric-versus-strength
curves, and the listening grid's small log-mel spectrograms.

Every function returns PNG bytes (or None when there is nothing to draw); where they are written and how they are
shown is the report's business (`gdr.report`, `gdr.run_folder`). matplotlib runs headless (Agg): figures are
built with `matplotlib.figure.Figure`, never through pyplot's global state.

Spectrograms are AudioLDM2's own log-mel (`gdr.audio.log_mel`: 64 bands over 0-8 kHz, natural log of the mel
magnitude, floor 1e-5) on one fixed colour scale (`VMIN`, `VMAX`) for every cell, so cells compare by eye.
"""

from __future__ import annotations

import base64
import io
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from gdr.stats import Comparison, metric_value

# Colour scale shared by every spectrogram, in ln(mel magnitude): the floor ln(1e-5) = -11.5 up to the loudest bins.
VMIN, VMAX = -11.5, 2.0


@dataclass
class Png:
    """A picture of the report: `path` relative to the run folder (where it is written, what Markdown links) and
    its PNG bytes (what the self-contained HTML embeds, `data_uri`)."""

    path: str
    data: bytes

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode()


def _png(fig) -> bytes:
    """`fig` as PNG bytes (90 dpi, tight box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def strength_curves(rows: list[dict], metric: str) -> bytes | None:
    """`metric` (mean over clips and seeds) against the guidance strength ``scale``, one line per (task,
    guidance); None unless some line has at least two strengths."""
    from matplotlib.figure import Figure

    series = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == "method" and r["scale"] != "":
            if (value := metric_value(r, metric)) is not None:
                series[(r["task"], r["guidance"])][float(r["scale"])].append(value)
    if not any(len(v) > 1 for v in series.values()):
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for (task, guidance), points in sorted(series.items()):
        scales = sorted(points)
        ax.plot(scales, [np.mean(points[s]) for s in scales], marker="o", label=f"{guidance} / {task}")
    ax.set_xlabel("guidance strength (scale)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.legend(fontsize=7)
    return _png(fig)


# The forest plot's marker colours: corrected verdict method better / worse / not significant.
BETTER, WORSE, NOT_SIGNIFICANT = "tab:green", "tab:red", "tab:gray"


def verdict_colour(c: Comparison) -> str:
    """The marker colour of `c` in the forest plot: its corrected verdict, not the sign of its mean alone."""
    return (BETTER if c.mean > 0 else WORSE) if c.significant else NOT_SIGNIFICANT


def forest_plot(comps: list[Comparison], primaries: dict[str, str]) -> bytes | None:
    """One panel per task: each method's paired improvement over each reference on that task's primary metric
    (`primaries`: task -> metric), with the interval that goes with its corrected verdict
    (`Comparison.adjusted_interval`); green/red where the verdict is significant (method better / worse), grey
    where it is not, with a legend. None when no task has a comparison. Text is 10-11 pt (12-14 px at 90 dpi)."""
    from matplotlib.figure import Figure

    panels = [(task, metric, [c for c in comps if c.task == task and c.metric == metric])
              for task, metric in primaries.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    from matplotlib.lines import Line2D

    heights = [0.4 * len(chosen) + 1.4 for _, _, chosen in panels]
    fig = Figure(figsize=(10, sum(heights) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (task, metric, chosen) in zip(axes[:, 0], panels):
        for i, c in enumerate(chosen):
            low, high = c.adjusted_interval
            ax.plot([low, high], [i, i], color="k")
            ax.plot([c.mean], [i], "o", color=verdict_colour(c), markersize=7)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(chosen)))
        ax.set_yticklabels([f"{c.method} vs {c.reference_label}" for c in chosen], fontsize=10)
        ax.tick_params(axis="x", labelsize=10)
        ax.invert_yaxis()
        ax.set_title(f"{task}: primary metric {metric}", fontsize=11)
        kind = "t-intervals" if chosen[0].correction == "none" else f"{chosen[0].correction}-adjusted t-intervals"
        ax.set_xlabel(f"improvement in {metric} (positive = method better); bars: {kind}", fontsize=10)
    handles = [Line2D([], [], marker="o", ls="", color=colour, markersize=7, label=label)
               for colour, label in ((BETTER, "method better (significant)"), (WORSE, "reference better (significant)"),
                                     (NOT_SIGNIFICANT, "no significant difference"))]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=10, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (sum(heights) + 0.6)))
    return _png(fig)


class SpectrogramCanvas:
    """One small figure (axes, image, colour bar) reused for every spectrogram: only the image data and the time
    axis change, so each cell costs a PNG encode rather than a figure build."""

    def __init__(self):
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(3.0, 1.6), dpi=80)
        ax = self.fig.add_subplot()
        self.image = ax.imshow(np.zeros((64, 2)), origin="lower", aspect="auto", vmin=VMIN, vmax=VMAX, cmap="magma",
                               extent=(0.0, 1.0, 0, 64))
        ax.set_xlabel("time (s)", fontsize=6, labelpad=1)
        ax.set_ylabel("mel band", fontsize=6, labelpad=1)
        ax.tick_params(labelsize=5, length=2, pad=1)
        bar = self.fig.colorbar(self.image, ax=ax, pad=0.02)
        bar.ax.tick_params(labelsize=5, length=2, pad=1)
        bar.set_label("ln |mel|", fontsize=5, labelpad=1)
        self.fig.tight_layout(pad=0.2)

    def png(self, mel: np.ndarray, seconds: float) -> bytes:
        """`mel`: ``(64, frames)`` ln-magnitudes spanning `seconds` s; the PNG (240 x 128 px)."""
        self.image.set_data(mel)
        self.image.set_extent((0.0, seconds, 0, mel.shape[0]))
        self.image.axes.set_xlim(0.0, seconds)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


MAX_COLUMNS = 1200  # spectrogram columns kept for a 240 px wide picture (10.24 s of 10 ms frames fit whole)
SPECTROGRAM_BLOCK = 512  # log-mel frames computed at once (~5 s of audio, a few MB)


def spectrogram_png(audio: np.ndarray, canvas: SpectrogramCanvas | None = None) -> bytes:
    """A small PNG (240 x 128 px) of the log-mel of `audio` ``(N,)`` at 16 kHz: time in s on x, mel band on y, a
    colour bar in ln(magnitude) on the fixed scale `VMIN`..`VMAX`. `canvas`: a figure to reuse (one is made when
    None)."""
    import torch

    from gdr.audio import N_MELS, SAMPLE_RATE, frame_blocks, log_mel_frames, num_frames

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    # Block by block (the whole-signal STFT of a 10 min file would take ~0.5 GB for one small picture), and at
    # most MAX_COLUMNS columns: longer inputs average k consecutive frames (in ln). Blocks are at most
    # SPECTROGRAM_BLOCK frames whatever k is (a block of 512 k frames, as before, took ~300 MB at 10 min: the
    # job's peak), and each frame is added to its column's running sum, so memory stays flat.
    frames = num_frames(len(x))
    k = max(1, math.ceil(frames / MAX_COLUMNS))
    columns = torch.arange(frames) // k
    sums = torch.zeros(math.ceil(frames / k), N_MELS, dtype=torch.float64)
    for a, b in frame_blocks(frames, SPECTROGRAM_BLOCK):
        sums.index_add_(0, columns[a:b], log_mel_frames(x, a, b).double())  # (b - a, 64)
    mel = (sums / torch.bincount(columns)[:, None]).float().T.numpy()
    return (canvas or SpectrogramCanvas()).png(mel, len(audio) / SAMPLE_RATE)
