"""The report's listening section as data: per task a grid, rows = outputs (clean, degraded, baselines, methods x
seeds), columns = clips; each cell an audio player and a small log-mel spectrogram (`gdr.plots.spectrogram_png`).

This module decides what the grid holds (which rows, which wav in which cell, the spectrogram of each wav, the
player's source); the templates ``gdr/templates/listening.{html,md}.j2`` decide how it looks. Every path comes
from the run folder (`gdr.run_folder.RunFolder`).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np

from gdr.plots import VMAX, VMIN, Png, SpectrogramCanvas, spectrogram_png
from gdr.run_folder import RunFolder


@dataclass
class Cell:
    """One output of one clip: `wav` is its path relative to the run folder (the Markdown link), `audio_src` the
    HTML player's ``src`` (an embedded ``data:`` URI or `wav`), `spectrogram` its log-mel picture (None: none)."""

    clip: str
    method: str
    seed: str  # "" for outputs without a seed (clean input, degraded input, baselines)
    wav: str
    audio_src: str
    spectrogram: Png | None = None


@dataclass
class GridRow:
    """One output of the grid: `label` (the method, and ``(seed k)``) and one cell per clip (None: no output)."""

    label: str
    cells: list[Cell | None]


@dataclass
class Grid:
    """The listening grid of one task: columns `clips`, `rows` in first-appearance order, clean input first."""

    task: str
    clips: list[str]
    rows: list[GridRow]


@dataclass
class Listening:
    """Every task's grid, and the spectrograms' shared colour scale in ln |mel| (`gdr.plots.VMIN`, ``VMAX``)."""

    grids: list[Grid] = field(default_factory=list)
    vmin: float = VMIN
    vmax: float = VMAX


def grid_rows(rows: list[dict], task: str) -> list[tuple[str, str]]:
    """The grid's rows for `task`: ``(method, seed)`` in first-appearance order, ``("clean", "")`` first."""
    out = [("clean", "")]
    for r in rows:
        key = (r["method"], str(r["seed"]))
        if r["task"] == task and key not in out:
            out.append(key)
    return out


def cell_wavs(folder: RunFolder, rows: list[dict], clips, task: str) -> dict[tuple[str, str, str], str]:
    """``{(method, seed, clip): wav path relative to the output folder}`` for the grid of `task`."""
    cells = {("clean", "", clip): folder.relative(folder.input_wav(clip)) for clip in clips}
    for r in rows:
        if r["task"] == task:
            cells[(r["method"], str(r["seed"]), r["clip"])] = r["wav"]
    return cells


def spectrograms(folder: RunFolder, rows: list[dict], clips, tasks: list[str]) -> dict[str, bytes]:
    """``{wav path: PNG}`` for every cell of every task's grid (the clean input once per clip)."""
    import soundfile as sf

    pngs: dict[str, bytes] = {}
    canvas = SpectrogramCanvas()
    for task in tasks:
        for wav in cell_wavs(folder, rows, clips, task).values():
            if wav not in pngs:
                pngs[wav] = spectrogram_png(sf.read(str(folder.root / wav), dtype="float32")[0], canvas)
    return pngs


def audio_src(folder: RunFolder, wav: str, embed: bool) -> str:
    """The player's ``src`` for `wav` (relative to the folder): the wav itself re-encoded as 16-bit PCM in a
    ``data:`` URI when `embed` (the page stays self-contained, at half the size of float wavs), else `wav`."""
    if not embed:
        return wav
    import soundfile as sf

    audio, sr = sf.read(str(folder.root / wav), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1), sr, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def section(folder: RunFolder, rows: list[dict], clips, tasks: list[str], pngs: dict[str, bytes],
            embed_audio: bool) -> Listening:
    """The grids of `tasks` over `clips` (names). `pngs`: `spectrograms`' output (a wav without one gets no
    picture); `embed_audio`: players embed the audio (`audio_src`)."""
    clips = list(clips)
    grids = []
    for task in tasks:
        cells = cell_wavs(folder, rows, clips, task)
        out = []
        for method, seed in grid_rows(rows, task):
            row: list[Cell | None] = []
            for clip in clips:
                wav = cells.get((method, seed, clip))
                if wav is None:
                    row.append(None)
                    continue
                picture = Png(folder.relative(folder.spectrogram(wav)), pngs[wav]) if wav in pngs else None
                row.append(Cell(clip, method, seed, wav, audio_src(folder, wav, embed_audio), picture))
            out.append(GridRow(method if seed == "" else f"{method} (seed {seed})", row))
        grids.append(Grid(task, clips, out))
    return Listening(grids)
