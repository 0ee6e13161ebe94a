"""The run folder: every path an evaluation run writes or reads is built here, and only here.

Layout under the run's ``output_dir`` (every file written atomically, `gdr.atomic`)::

    config.yaml                              resolved config
    items/<key>.json                         one record per finished item (what makes runs resumable)
    audio/<clip>/input.wav                   the clean reference x
    audio/<clip>/<task>/<output>.wav         degraded input, baselines, oracle, methods (``_seed<k>``)
    metrics.csv                              one row per clip x task x method x seed
    report.md, report.html                   the report (`gdr.report`)
    plots/*.png, plots/listen/audio/...png   its figures; one spectrogram per wav, mirroring ``audio/``

``<clip>``, ``<task>`` and ``<output>`` are folder names made from the clip names and labels (`folder_names`):
readable where the readable form is unique, with a short stable hash of the full name where it is not (two
names that read the same, that differ only in case, or that leave nothing readable), so that two inputs can never
share an output path. A record stores its wav's path relative to the folder, so readers (report, FAD, listening
grid) find every output through the records, and the clean inputs through `RunFolder.input_wav`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from gdr.atomic import write_text

MAX_READABLE = 80  # characters of a name kept readable in a folder or file name (many file systems allow 255 bytes)


def slug(text: str) -> str:
    """The readable part of a path component: runs of anything outside ``[A-Za-z0-9_.=,+-]`` become ``_``.

    Leading dots are dropped too, so that no output is hidden or named ``.``/``..``."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", text).strip("_").lstrip(".")


def _stable_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]


def folder_names(names: Iterable[str]) -> dict[str, str]:
    """``{name: path component}``, distinct even on case-insensitive file systems.

    A name keeps its readable form (`slug`) when no other name of the set has the same readable form up to case,
    and when the form is non-empty and short; otherwise ``<readable>-<8 hex of sha256(name)>`` (or the hash
    alone when nothing readable is left). The result depends only on the set of names, not on their order.
    """
    names = list(dict.fromkeys(names))
    readable = {n: slug(n)[:MAX_READABLE] for n in names}
    counts = Counter(r.casefold() for r in readable.values())
    out = {}
    for name, r in readable.items():
        if not r or counts[r.casefold()] > 1 or r != slug(name):
            r = f"{r}-{_stable_hash(name)}" if r else _stable_hash(name)
        out[name] = r
    taken = Counter(v.casefold() for v in out.values())
    clashes = [n for n, v in out.items() if taken[v.casefold()] > 1]
    if clashes:  # only when a hashed name equals another name's readable form, or two sha256 prefixes collide
        for name in clashes:
            out[name] = f"{slug(name)[:MAX_READABLE]}-{hashlib.sha256(name.encode()).hexdigest()[:24]}".lstrip("-")
    return out


class RunFolder:
    """Paths of one run. `clips`, `tasks` and `outputs` are every clip name, task label and output name
    (``<method>`` or ``<method>_seed<k>``) of the run: their folder names are assigned together, so they
    never collide."""

    def __init__(self, root: str | Path, clips: Iterable[str] = (), tasks: Iterable[str] = (),
                 outputs: Iterable[str] = ()):
        self.root = Path(root)
        self._clips = folder_names(clips)
        self._tasks = folder_names(tasks)
        self._outputs = folder_names(outputs)

    # ------------------------------------------------------------------ fixed files
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        """A figure of the report, ``plots/<name>`` (`name` is chosen by the report, e.g. ``forest_plot.png``)."""
        return self.plots / name

    def spectrogram(self, wav: str) -> Path:
        """The listening grid's spectrogram of the wav at `wav` (relative to the folder), mirroring ``audio/``."""
        return self.plots / "listen" / Path(wav).with_suffix(".png")

    # ------------------------------------------------------------------ per item
    def record(self, key: str) -> Path:
        return self.root / "items" / f"{key}.json"

    def clip_dir(self, clip: str) -> Path:
        return self.root / "audio" / self._clips[clip]

    def input_wav(self, clip: str) -> Path:
        return self.clip_dir(clip) / "input.wav"

    def output_wav(self, clip: str, task: str, output: str) -> Path:
        return self.clip_dir(clip) / self._tasks[task] / f"{self._outputs[output]}.wav"

    def relative(self, path: Path) -> str:
        """`path` relative to the folder, with ``/`` separators (what records, reports and links hold)."""
        return Path(path).relative_to(self.root).as_posix()

    # ------------------------------------------------------------------ reading and writing
    def write_record(self, key: str, row: dict, wav: Path) -> None:
        write_text(self.record(key), json.dumps({"row": row, "wav": self.relative(wav)}))

    def rows(self, keys: Iterable[str]) -> list[dict]:
        """The rows of the finished items among `keys`, in that order, each with its ``wav`` path."""
        rows = []
        for key in keys:
            path = self.record(key)
            if path.exists():
                record = json.loads(path.read_text())
                rows.append({**record["row"], "wav": record["wav"]})
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        """``metrics.csv``: one line per row, columns in first-appearance order."""
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_csv, buf.getvalue())

    def remove_stale_temporaries(self, older_than: float) -> None:
        """Delete temporary files (``.<name>.<random>.tmp``) left by a killed run.

        Final names only ever hold complete files (`gdr.atomic`); a kill -9 can leave a temporary behind,
        which the next run removes. Only files older than this run's start are touched, so shards of the
        current run that already write are safe.
        """
        if self.root.exists():
            for path in self.root.rglob(".*.tmp"):
                if path.is_file() and path.stat().st_mtime < older_than:
                    path.unlink(missing_ok=True)
