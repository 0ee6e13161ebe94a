"""benchmarks/gpu_check.sh: the one-command GPU check, walked through on the CPU with the tiny model (``--dry-run``),
and refused in one line where there is no GPU and no ``--dry-run``."""

import os
import re
import subprocess

import pytest
import torch
from conftest import ROOT

SCRIPT = str(ROOT / "benchmarks" / "gpu_check.sh")


def _run(*args, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_dry_run_prints_every_table_and_the_goals(tiny_dir):
    proc = _run("--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for heading in ("## Precision", "## Speed at batch 1", "## Batch scaling", "## Goals"):
        assert heading in out, heading
    for row in ("| bfloat16 UNet |", "| float16 UNet |", "| eager attention (not SDPA) |", "| latent_pull |",
                "| dps |", "| none + CFG 3.5 |"):
        assert row in out, row
    # Precision: reduced precision differs from float32 a little, eager attention much less (same arithmetic).
    err = {name: float(re.search(rf"\| {re.escape(name)} \| ([0-9.e+-]+) \|", out).group(1))
           for name in ("bfloat16 UNet", "float16 UNet", "eager attention (not SDPA)")}
    assert 0 < err["eager attention (not SDPA)"] < 1e-4 < err["float16 UNet"] < err["bfloat16 UNet"] < 1.0
    scaling = re.findall(r"^\| (latent_pull|dps) \| (\d+) \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| \d+ \|$", out,
                         re.M)
    assert sorted(scaling) == [("dps", "1"), ("dps", "2"), ("latent_pull", "1"), ("latent_pull", "2")]
    assert out.count("not judged (dry run)") == 3 and "DRY RUN" in out.splitlines()[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run for real")
def test_without_a_gpu_it_says_so_in_one_line():
    proc = _run()
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device") and "--dry-run" in lines[0]
