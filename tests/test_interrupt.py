"""Stop when asked: SIGTERM / SIGINT end a run at the next item boundary; what is finished stays; a rerun resumes."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gdr.interrupt import Interrupted, StopSignals

ROOT = Path(__file__).resolve().parents[1]


def test_a_signal_inside_the_block_stops_at_the_next_check():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        stop.check("nothing asked yet")  # no signal: no stop
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
        time.sleep(0.05)
        assert stop.requested
        with pytest.raises(Interrupted) as info:
            stop.check("3 of 8 items done")
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value) and "3 of 8 items done" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_ctrl_c_twice_stops_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def _evaluate(out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--config", "configs/smoke.yaml", "--progress",
            "false", "--output_dir", str(out), "--data.demo_seconds", "1.0", "--sampler.steps", "2",
            "--sampler.seeds", "3", "--logger", "false", "--report.bootstrap", "100", "--report.fad", "false"]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> dict[str, float]:
    folder = out / "items"
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} if folder.is_dir() else {}


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_evaluate_stops_on_a_signal_and_a_rerun_resumes(tmp_path, tiny_dir, sig):
    out = tmp_path / "out"
    proc = _evaluate(out)
    deadline = time.monotonic() + 600
    while not _records(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the first item finished: nothing to interrupt"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=600)  # bounded: an item takes seconds
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped by") and "rerun" in lines[0], stderr
    done = _records(out)
    assert done and not list(out.rglob("*.tmp")) and not (out / "metrics.csv").exists()
    if sig != signal.SIGTERM:
        return
    rerun = _evaluate(out)
    _, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr
    after = _records(out)
    assert {k: after[k] for k in done} == done  # finished items were kept, not redone
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(after) > len(done)


def _train(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "fit", "--config", "configs/train/schedule_smoke.yaml",
            "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "5", "--trainer.enable_progress_bar",
            "false", "--model.init_args.export_dir", str(root / "export"), *extra]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_train_stops_on_sigterm_with_a_checkpoint_and_resumes(tmp_path, tiny_dir):
    import re

    import torch

    root = tmp_path / "run"
    proc = _train(root)
    checkpoints = root / "checkpoints"
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("epoch=0-*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before its first epoch: nothing to interrupt"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped by SIGTERM at step"), stderr
    step = int(re.search(r"at step (\d+)", lines[0]).group(1))
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step > 0
    assert not list(root.rglob("*.tmp")) and not (root / "export").exists()  # nothing partial, no export yet
    kept = {p.name: p.stat().st_mtime_ns for p in checkpoints.glob("epoch=*.ckpt")}

    rerun = _train(root, "--ckpt_path", "last")
    _, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr
    assert {k: (checkpoints / k).stat().st_mtime_ns for k in kept} == kept  # resumed: finished epochs not redone
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 5 - 1 and final["global_step"] > step
    assert (root / "export" / "schedule.safetensors").is_file()


def test_a_run_in_a_log_prints_one_plain_line_per_item(tmp_path, tiny_dir):
    """Not on a terminal (CI, | tee, SLURM): one line per finished item with what, time, left and ETA."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--config", "configs/smoke.yaml",
            "--output_dir", str(tmp_path / "out"), "--data.demo_seconds", "1.0", "--sampler.steps", "1",
            "--logger", "false", "--report.bootstrap", "100", "--report.fad", "false"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if re.match(r"^\[\d+/\d+\] ", line)]
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert len(lines) == len(rows)
    assert lines[0].startswith(f"[1/{len(rows)}] ") and lines[-1].startswith(f"[{len(rows)}/{len(rows)}] ")
    assert re.search(r": \d+\.\d s; \d+ left, about \d+ (s|min \d\d s) to go$", lines[0]), lines[0]
    assert lines[-1].endswith("0 left, about 0 s to go")
    assert "it/s" not in proc.stderr  # no progress bar in a log
