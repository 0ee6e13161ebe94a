"""Full-size check: the published `cvssp/audioldm2` layout at full size, random weights, through the main job.

    python tests/full_size_check.py [--checkpoint audioldm2|audioldm2-large|audioldm2-music] [--workdir DIR]

Builds the complete published layout (about 4.5 GB of safetensors for base, 6 GB for -large) in a
temporary folder, checks that its safetensors total the published byte count, runs
``scripts/evaluate.py --config configs/default.yaml`` on a 2 s clip with 2 steps end to end, once per
null condition (``original``: Flan-T5 only; ``diffusers``: CLAP, Flan-T5, projection and GPT-2) and, with
``--conditioned``, once with a prompt, CFG 3.5 and the CLAP audio embedding of the input (every part of
the text stack, CLAP's audio branch included, and the doubled CFG batch), checks the outputs, and
deletes everything. `.ci/run` runs it after the tests: it is the one check that
loads what a real user downloads (the tiny layout differs only in sizes). Exit status 0 = passed.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Sum of the published *.safetensors of each snapshot (shared/audioldm2-hub/SOURCES.md); -music has no
# published total.
PUBLISHED_SAFETENSORS_BYTES = {"audioldm2": 4_474_362_800, "audioldm2-large": 5_958_866_688}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="audioldm2", choices=["audioldm2", "audioldm2-large", "audioldm2-music"])
    parser.add_argument("--null-conditions", default="original,diffusers",
                        help="comma-separated null conditions to run the main job with")
    parser.add_argument("--conditioned", action=argparse.BooleanOptionalAction, default=True,
                        help="also run with a prompt, CFG 3.5 and condition.audio: measurement")
    parser.add_argument("--workdir", default=None, help="where the temporary folder goes (needs ~5-7 GB)")
    args = parser.parse_args()
    from gdr.builders import save_published_layout

    work = Path(tempfile.mkdtemp(prefix="gdr-full-size-", dir=args.workdir))
    try:
        start = time.perf_counter()
        model = save_published_layout(work / args.checkpoint, args.checkpoint, "full", progress=True)
        built = time.perf_counter() - start
        total = sum(f.stat().st_size for f in model.rglob("*.safetensors"))
        print(f"built {model} in {built:.0f} s: {total:,} bytes of safetensors", flush=True)
        expected = PUBLISHED_SAFETENSORS_BYTES.get(args.checkpoint)
        if expected is not None and total != expected:
            print(f"FAIL: the published {args.checkpoint} safetensors total {expected:,} bytes, ours {total:,}")
            return 1

        clips = work / "clips"
        clips.mkdir()
        t = np.arange(32000) / 16000
        tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
        sf.write(str(clips / "tone.wav"), tone + 0.01 * np.random.default_rng(0).standard_normal(t.size), 16000)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GDR_CACHE": str(work / "cache"), "WANDB_MODE": "offline"}
        timings = []
        # The default null ("original") needs only Flan-T5; "diffusers" runs CLAP (float64 config) and the
        # published GPT2Model: the two parts that crashed on the published layout.
        runs = {f"{null} null": ["--condition.unconditional", null] for null in args.null_conditions.split(",")}
        if args.conditioned:
            runs["prompt + CFG + CLAP audio"] = ["--condition.text", "a steady tone", "--condition.cfg_scale", "3.5",
                                                 "--condition.audio", "measurement"]
        for index, (name, extra) in enumerate(runs.items()):
            out = work / f"out-{index}"
            cmd = [sys.executable, "scripts/evaluate.py", "--config", "configs/default.yaml", "--model.pretrained",
                   str(model), "--data.root", str(clips), "--output_dir", str(out), "--sampler.steps", "2",
                   "--sampler.seeds", "1", "--model.device", "cpu", *extra]
            print("running:", " ".join(cmd), flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=1800)
            timings.append(f"evaluate ({name}) {time.perf_counter() - start:.0f} s")
            if proc.returncode != 0:
                print(f"FAIL: evaluate.py exited with {proc.returncode}")
                return 1
            problems = check_outputs(out)
            if problems:
                print("FAIL: " + "; ".join(problems))
                return 1
        print(f"PASS: {args.checkpoint} full size, build {built:.0f} s, {', '.join(timings)}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_outputs(out: Path) -> list[str]:
    """What is wrong with one evaluation's outputs (empty list = nothing)."""
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    methods = {row["method"] for row in rows}
    needed = {"degraded", "vocoder_roundtrip", "vae_roundtrip", "oracle_vae_roundtrip"}
    guided = [row for row in rows if row["kind"] == "method" and row["guidance"] == "dps"]
    bad = [(row["method"], k) for row in rows for k in ("logmel_l1", "lsd", "mrstft")
           if not math.isfinite(float(row[k]))]
    silent = [row["wav"] for row in rows if np.abs(sf.read(str(out / row["wav"]))[0]).max() == 0]
    report = (out / "report.md").read_text()
    problems = [f"missing baselines {sorted(needed - methods)}" if needed - methods else "",
                "no dps row" if not guided else "", f"non-finite metrics {bad}" if bad else "",
                f"all-zero outputs {silent}" if silent else "",
                "report does not say the weights are random" if "random weights" not in report else ""]
    return [p for p in problems if p]


if __name__ == "__main__":
    sys.exit(main())
