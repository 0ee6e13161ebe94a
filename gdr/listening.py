"""The report's listening section: per task a grid, rows = outputs (clean, degraded, baselines, methods x seeds),
columns = clips; each cell an audio player and a small log-mel spectrogram with axes and a colour bar.

Spectrograms are AudioLDM2's own log-mel (`gdr.audio.log_mel`: 64 bands over 0-8 kHz, natural log of the mel
magnitude, floor 1e-5) on one fixed colour scale for every cell, so cells compare by eye.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

# Colour scale shared by every cell, in ln(mel magnitude): the floor ln(1e-5) = -11.5 up to the loudest bins.
VMIN, VMAX = -11.5, 2.0


class _Canvas:
    """One small figure (axes, image, colour bar) reused for every cell: only the image data and the time axis
    change, so each cell costs a PNG encode rather than a figure build."""

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
        self.image.set_data(mel)
        self.image.set_extent((0.0, seconds, 0, mel.shape[0]))
        self.image.axes.set_xlim(0.0, seconds)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png")
        return buf.getvalue()


def spectrogram_png(audio: np.ndarray, canvas: _Canvas | None = None) -> bytes:
    """A small PNG (240 x 128 px) of the log-mel of `audio` ``(N,)`` at 16 kHz: time in s on x, mel band on y, a
    colour bar in ln(magnitude). `canvas`: a figure to reuse (one is made when None)."""
    import torch

    from gdr.audio import SAMPLE_RATE, log_mel

    mel = log_mel(torch.as_tensor(np.asarray(audio, dtype=np.float32))[None])[0, 0].T.numpy()  # (64, frames)
    return (canvas or _Canvas()).png(mel, len(audio) / SAMPLE_RATE)


def grid_rows(rows: list[dict], task: str) -> list[tuple[str, str]]:
    """The grid's rows for `task`: ``(method, seed)`` in first-appearance order, ``("clean", "")`` first."""
    out = [("clean", "")]
    for r in rows:
        key = (r["method"], str(r["seed"]))
        if r["task"] == task and key not in out:
            out.append(key)
    return out


def cell_wavs(rows: list[dict], clips, task: str, slug) -> dict[tuple[str, str, str], str]:
    """``{(method, seed, clip): wav path relative to the output folder}`` for the grid of `task`."""
    cells = {("clean", "", clip): f"audio/{slug(clip)}/input.wav" for clip in clips}
    for r in rows:
        if r["task"] == task:
            cells[(r["method"], str(r["seed"]), r["clip"])] = r["wav"]
    return cells


def spectrograms(out_dir: Path, rows: list[dict], clips, tasks: list[str], slug) -> dict[str, bytes]:
    """``{wav path: PNG}`` for every cell of every task's grid (the clean input once per clip)."""
    import soundfile as sf

    pngs: dict[str, bytes] = {}
    canvas = _Canvas()
    for task in tasks:
        for wav in cell_wavs(rows, clips, task, slug).values():
            if wav not in pngs:
                pngs[wav] = spectrogram_png(sf.read(str(out_dir / wav), dtype="float32")[0], canvas)
    return pngs


def grid_html(rows: list[dict], clips, tasks: list[str], pngs: dict[str, bytes], audio_src, slug) -> str:
    """The HTML of the listening section. `audio_src`: wav path -> the player's ``src`` (embedded or linked);
    `pngs`: `spectrograms`' output. Each cell carries ``data-clip`` and ``data-method`` (and ``data-seed``)."""
    esc = html.escape
    parts = [("<p>Rows: outputs (seed shown after the method); columns: clips. Spectrograms: AudioLDM2's log-mel "
              f"(64 bands, 0-8 kHz), one colour scale for all cells ({VMIN} to {VMAX} ln |mel|).</p>")]
    for task in tasks:
        cells = cell_wavs(rows, clips, task, slug)
        parts.append(f"<h3>{esc(task)}</h3><table class='listen'><tr><th>output</th>"
                     + "".join(f"<th>{esc(c)}</th>" for c in clips) + "</tr>")
        for method, seed in grid_rows(rows, task):
            label = method if seed == "" else f"{method} (seed {seed})"
            parts.append(f"<tr><th>{esc(label)}</th>")
            for clip in clips:
                wav = cells.get((method, seed, clip))
                if wav is None:
                    parts.append("<td></td>")
                    continue
                img = (f"<br><img alt='log-mel of {esc(clip)} / {esc(label)}' "
                       f"src='data:image/png;base64,{base64.b64encode(pngs[wav]).decode()}'>" if wav in pngs else "")
                parts.append(f"<td data-clip='{esc(clip)}' data-method='{esc(method)}' data-seed='{esc(seed)}'>"
                             f"<audio controls preload='none' src='{audio_src(wav)}'></audio>{img}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    return "\n".join(parts)


def grid_markdown(rows: list[dict], clips, tasks: list[str], png_paths: dict[str, str], slug) -> list[str]:
    """The same grid as Markdown tables: each cell links the wav and shows the spectrogram file."""
    md = []
    for task in tasks:
        cells = cell_wavs(rows, clips, task, slug)
        md += [f"### {task}", "", "| output | " + " | ".join(clips) + " |", "|---" * (len(clips) + 1) + "|"]
        for method, seed in grid_rows(rows, task):
            label = method if seed == "" else f"{method} (seed {seed})"
            row = []
            for clip in clips:
                wav = cells.get((method, seed, clip))
                row.append("" if wav is None else f"[wav]({wav}) ![]({png_paths.get(wav, '')})")
            md.append(f"| {label} | " + " | ".join(row) + " |")
        md.append("")
    return md
