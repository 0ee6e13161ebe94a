"""The main job as a user runs it: peak memory and report size against input length, and time to a one-line error.

    python benchmarks/job.py                          # 10 s and 10 min inputs, the error timings (~15 min on 2 CPUs)
    python benchmarks/job.py --lengths 10 60 --errors-only

1. README command 1's job (``configs/smoke.yaml``, here with ``decoder_inversion`` at 1 step so the model's share
   stays small and the job's own buffers show) on one generated clip of each length, each in a fresh process:
   peak RSS of the whole process (``ru_maxrss``), ``report.html`` size, wall time; ratios to the shortest input.
   Goals (issue 19): peak RSS at 10 min <= 1.2x the 10 s one; report.html at 10 min <= 2x.
2. Seconds from start to the one-line error for a bad option and for a missing data folder, next to the start-up
   of a bare ``python -c pass`` in the same run (goal: under 3 s).

Prints markdown tables for benchmarks/README.md.
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
WRAP = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)")


def clip(seconds: float, path: Path) -> None:
    """A tone with vibrato plus a little noise, written block by block (no whole-file buffer here either)."""
    sr, block = 16000, 16000 * 10
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", sr, 1, subtype="PCM_16") as f:
        for start in range(0, int(seconds * sr), block):
            t = (start + np.arange(min(block, int(seconds * sr) - start))) / sr
            f.write(0.3 * np.sin(2 * np.pi * (440 + 20 * np.sin(2 * np.pi * 0.5 * t)) * t)
                    + 0.01 * rng.standard_normal(len(t)))


def job(seconds: float, work: Path) -> dict:
    data, out = work / f"data_{seconds:g}", work / f"out_{seconds:g}"
    data.mkdir()
    clip(seconds, data / "clip.wav")
    args = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--config", "configs/smoke.yaml",
            "--data.root", str(data), "--output_dir", str(out), "--guidance.name", "decoder_inversion",
            "--sampler.steps", "1", "--logger", "false", "--progress", "false", "--report.fad", "false"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    rss_kb, code = proc.stdout.split()[-2:]
    if code != "0":
        raise SystemExit(f"the {seconds:g} s job failed:\n{proc.stderr[-2000:]}")
    return {"seconds": seconds, "rss_mb": int(rss_kb) / 1024, "html_kb": (out / "report.html").stat().st_size / 1024,
            "wall_s": wall}


def error_time(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", nargs="+", type=float, default=[10.0, 600.0])
    parser.add_argument("--errors-only", action="store_true")
    args = parser.parse_args()
    lines = []
    if not args.errors_only:
        with tempfile.TemporaryDirectory() as tmp:
            results = [job(s, Path(tmp)) for s in args.lengths]
        base = results[0]
        lines += ["| input | peak RSS (MB) | x shortest | report.html (kB) | x shortest | wall (s) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['seconds']:g} s | {r['rss_mb']:.0f} | {r['rss_mb'] / base['rss_mb']:.2f} | "
                  f"{r['html_kb']:.0f} | {r['html_kb'] / base['html_kb']:.2f} | {r['wall_s']:.0f} |" for r in results]
        lines.append("")
    script = str(ROOT / "scripts" / "evaluate.py")
    cases = [("python -c pass (interpreter start-up)", ["-c", "pass"]),
             ("bad option (--sampler.steps 0)", [script, "--config", "configs/smoke.yaml", "--sampler.steps", "0"]),
             ("missing data folder", [script, "--config", "configs/smoke.yaml", "--data.root", "/nonexistent"])]
    lines += ["| case | seconds to exit | stderr |", "|---|---|---|"]
    for name, argv in cases:
        seconds = min(error_time(argv)[0] for _ in range(3))
        lines.append(f"| {name} | {seconds:.2f} | {error_time(argv)[1][:90]} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
