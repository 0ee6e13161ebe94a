"""Peak memory of the training data module against the number of files (issue 18: data at dataset scale).

    python benchmarks/data_memory.py                      # 10 vs 5,000 files (~3 min on 2 CPUs)
    python benchmarks/data_memory.py --counts 10 1000 --eager

For each count, a folder of generated files (1-3 s each, 16 kHz and 44.1 kHz, mono and stereo, PCM_16) is
written once; then, each in a fresh process, `gdr.datamodule.RestorationDataModule` is built on it (listing and
headers) and the first ~50 training items are read (batch 2, 0.64 s crops, lowpass task). Peak RSS of that
process (``ru_maxrss``), ratio to the smallest count, wall time. Goal (issue 18): 5,000 files <= 1.1x 10 files.
``--eager`` adds what the module did before (decode every file into memory, `gdr.data.load_folder`) for scale.
``--import-only`` adds the bare ``import gdr.datamodule`` for scale.

Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
ITEMS = 50

CHILD = {
    "lazy": f"""
import resource, sys
from gdr.datamodule import RestorationDataModule
data = RestorationDataModule(root=sys.argv[1], degradation={{"name": "lowpass", "cutoff_hz": 4000}},
                             crop_seconds=0.64, batch_size=2, seed=0)
loader, seen, epoch = data.train_dataloader(), 0, 0
while seen < {ITEMS}:  # epochs as Lightning runs them (10 files: 8 items an epoch)
    loader.sampler.set_epoch(epoch)
    for batch in loader:
        seen += len(batch["x"])
        if seen >= {ITEMS}:
            break
    epoch += 1
print(len(data.train_files), seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""",
    "eager": """
import resource, sys
from gdr.data import load_folder
clips = load_folder(sys.argv[1])
print(len(clips), 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""",
    "import": """
import resource, sys
import gdr.datamodule
print(0, 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""",
}


def make_folder(root: Path, count: int) -> float:
    """`count` files of 1-3 s under ``root/spk<k>/``; returns the total seconds of audio."""
    rng = np.random.default_rng(count)
    total = 0.0
    for j in range(count):
        rate = 44100 if j % 3 == 0 else 16000
        channels = 2 if j % 4 == 0 else 1
        seconds = float(rng.uniform(1.0, 3.0))
        t = np.arange(int(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * (200 + 5 * (j % 300)) * t) + 0.01 * rng.standard_normal(t.size)
        path = root / f"spk{j % 50:02d}" / f"utt{j:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype="PCM_16")
        total += seconds
    return total


def measure(kind: str, root: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD[kind], str(root)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{kind} on {root} failed:\n{proc.stderr[-2000:]}")
    files, items, rss_kb = map(int, proc.stdout.split()[-3:])
    return {"kind": kind, "files": files, "items": items, "rss_mb": rss_kb / 1024, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 5000])
    parser.add_argument("--eager", action="store_true", help="also measure decoding every file (the old module)")
    parser.add_argument("--import-only", action="store_true", help="also measure the bare import")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if args.import_only:
            rows.append({**measure("import", Path(work)), "count": 0, "hours": 0.0})
        for count in args.counts:
            root = Path(work) / f"files_{count}"
            hours = make_folder(root, count) / 3600
            for kind in ("lazy", "eager") if args.eager else ("lazy",):
                rows.append({**measure(kind, root), "count": count, "hours": hours})
                print(rows[-1], file=sys.stderr, flush=True)
    base = {r["kind"]: r["rss_mb"] for r in reversed(rows) if r["count"] == min(args.counts)}
    print("| what | files | audio (h) | items read | peak RSS (MB) | x smallest | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        what = {"lazy": "RestorationDataModule + first items", "eager": "decode every file (before)",
                "import": "import gdr.datamodule only"}[r["kind"]]
        ratio = f"{r['rss_mb'] / base[r['kind']]:.2f}" if r["kind"] in base else ""
        print(f"| {what} | {r['count']} | {r['hours']:.2f} | {r['items']} | {r['rss_mb']:.0f} | {ratio} | "
              f"{r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
