"""Sweeps end to end: grid expansion, the smoke sweep with its report, kill -9 and resume, 2-process DDP,
and bad sweep configs failing before any work."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
import yaml

from conftest import ROOT, run_script
from gdr.errors import ConfigError
from gdr.sweep import expand_grid

TIMING = ("wall_s", "peak_mem_mb")
BASE = {"degradation": {"name": "identity", "params": {}, "seed": 0},
        "guidance": {"name": "dps", "scale": 1.0, "schedule": "constant", "start_scale": None, "params": {}},
        "sampler": {"steps": 10}}


def test_grid_is_the_cartesian_product():
    recipes = expand_grid(BASE, {"guidance.name": ["dps", "mpgd"], "guidance.scale": [0.5, 1, 2],
                                 "degradation": [{"name": "lowpass", "params": {"cutoff_hz": 4000}}]})
    assert len(recipes) == 6
    assert {(r["guidance"]["name"], r["guidance"]["scale"]) for r in recipes} == {
        (n, s) for n in ("dps", "mpgd") for s in (0.5, 1, 2)}
    assert all(r["degradation"] == {"name": "lowpass", "params": {"cutoff_hz": 4000}, "seed": 0} for r in recipes)
    assert expand_grid(BASE, {}) == [BASE]


@pytest.mark.parametrize("grid, needle", [
    ({"guidance.nmae": ["dps"]}, "unknown key"),
    ({"guidance.name": []}, "non-empty list"),
    ({"sampler.steps": 5}, "non-empty list"),
])
def test_bad_grids_raise(grid, needle):
    with pytest.raises(ConfigError, match=needle):
        expand_grid(BASE, grid)


def _write_config(tmp_path, **overrides):
    cfg = {"model": {"pretrained": "gdr-tiny", "device": "cpu"}, "data": {"root": None, "demo_seconds": 1.0},
           "chunk": {"seconds": 1.28, "overlap_seconds": 0.16, "batch_size": 1},
           "sampler": {"steps": 2, "seeds": 2},
           "sweep": {"grid": {"guidance.name": ["dps", "sdedit"],
                              "degradation": [{"name": "noise", "params": {"snr_db": 10}}]}},
           "report": {"bootstrap": 200, "embed_audio": False}, "logger": False, "progress": False}
    for key, value in overrides.items():
        cfg[key] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(path):
    return list(csv.DictReader(path.open()))


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_rows_close(a: list[dict], b: list[dict], tol: float = 1e-5) -> None:
    """metrics.csv rows equal: text columns exactly, numbers within `tol` (batches change float reduction order)."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            try:
                x, y = float(ra[key]), float(rb[key])
            except ValueError:
                assert ra[key] == rb[key], (ra["clip"], ra["method"], key)
                continue
            assert abs(x - y) <= tol, (ra["clip"], ra["method"], key, ra[key], rb[key])


class _Audio(HTMLParser):
    def __init__(self):
        super().__init__()
        self.pairs, self.players = set(), 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-clip" in attrs:  # a cell of the listening grid (rows outputs, columns clips)
            self.pairs.add((attrs["data-clip"], attrs["data-method"]))
        if tag == "audio":
            self.players += 1


@pytest.mark.slow  # 70 s: runs in .ci/run after README's command (keeps that under 12 minutes)
def test_smoke_sweep_end_to_end(tmp_path, tiny_dir):
    out = tmp_path / "out"
    # One seed: the seed-level statistics are tested in test_stats.py; this test is about the whole grid.
    proc = run_script("evaluate.py", "--config", "configs/sweep_smoke.yaml", "--output_dir", str(out),
                      "--progress", "false", "--sampler.seeds", "1", env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(out / "metrics.csv")
    clips = {"tone_vibrato", "drums", "chirp", "noise_bursts"}
    assert {r["clip"] for r in rows} == clips
    tasks = {r["task"] for r in rows}
    assert tasks == {"lowpass(cutoff_hz=4000)", "gaps(count=2,length_ms=80)"}
    for task in tasks:
        methods = {r["method"] for r in rows if r["task"] == task}
        assert {"degraded", "vocoder_roundtrip", "vae_roundtrip", "oracle_vae_roundtrip"} <= methods
        assert any(m.startswith("decoder_inversion") for m in methods)
        assert {"dps s=0.5 4st", "dps s=1 4st", "latent_pull s=1 4st", "inpaint s=0.5 4st"} <= methods
    assert "lowband_replacement" in {r["method"] for r in rows if r["task"].startswith("lowpass")}
    assert "ar_interpolation" in {r["method"] for r in rows if r["task"].startswith("gaps")}
    # The report: random weights named at the top, a verdict per task, every clip x method playable.
    report = (out / "report.md").read_text()
    assert "random weights" in report.splitlines()[2]
    assert report.count("these numbers say nothing about the methods") == 2  # in each task's verdict
    for task in tasks:
        assert f"### {task}" in report
    parser = _Audio()
    parser.feed((out / "report.html").read_text())
    expected = {(r["clip"], r["method"]) for r in rows} | {(c, "clean") for c in clips}
    assert parser.pairs == expected and parser.players == len(rows) + len(clips) * len(tasks)  # clean in each grid
    html = (out / "report.html").read_text()
    assert html.index("id='primary-forest'") < html.index("<h2>Verdicts</h2>") < html.index("<h2>Listen</h2>")
    assert html.count("alt='log-mel of ") == parser.players  # a spectrogram in every cell
    assert (out / "plots" / "forest_plot.png").stat().st_size > 1000
    assert (out / "plots" / "strength_curves.png").exists()
    assert list((out / "wandb").glob("offline-run-*"))
    assert not list(out.rglob("*.tmp"))


def _start(config, out, extra=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--config", str(config),
                             "--output_dir", str(out), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _finish(proc) -> int:
    """Wait for `proc`, draining its pipes (a full pipe would block it), and return its exit status."""
    proc.communicate()
    return proc.returncode


def test_kill_and_resume_gives_the_same_results(tmp_path, tiny_dir):
    config = _write_config(tmp_path)
    reference = tmp_path / "reference"
    assert _finish(_start(config, reference)) == 0
    out = tmp_path / "out"
    proc = _start(config, out)
    # No wall-clock limit: poll until 8 items are done (the run has more), however loaded the machine is.
    while proc.poll() is None and len(list((out / "items").glob("*.json"))) < 8:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = list((out / "items").glob("*.json"))
    total = len(list((reference / "items").glob("*.json")))
    assert 8 <= len(done) < total and not (out / "metrics.csv").exists()
    for record in done:  # whatever carries a final name is complete
        json.loads(record.read_text())
    before = {r: (r.stat().st_mtime_ns, r.read_bytes()) for r in done}
    assert _finish(_start(config, out)) == 0
    # The resumed run packs the items left into other batches than the uninterrupted one: equal up to float32
    # reduction order (tests/test_batching.py), the other columns exactly.
    assert_rows_close(_without_timing(_rows(out / "metrics.csv")), _without_timing(_rows(reference / "metrics.csv")))
    assert not list(out.rglob("*.tmp"))
    # Finished items were skipped, not recomputed: their records are untouched.
    assert {r: (r.stat().st_mtime_ns, r.read_bytes()) for r in done} == before


def test_two_process_ddp_matches_one_process(tmp_path, tiny_dir):
    config = _write_config(tmp_path)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert _finish(_start(config, single)) == 0
    proc = _start(config, ddp, ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"])
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    a, b = _rows(single / "metrics.csv"), _rows(ddp / "metrics.csv")
    assert [(r["clip"], r["task"], r["method"], r["seed"]) for r in a] == \
           [(r["clip"], r["task"], r["method"], r["seed"]) for r in b]
    for ra, rb in zip(a, b):  # two processes run with other thread counts: equal up to float reduction order
        for metric in ("logmel_l1", "lsd", "lsd_high", "mrstft", "si_sdr", "snr"):
            assert (ra[metric] == "") == (rb[metric] == "")  # SNR/SI-SDR are blank for phase-free outputs
            if ra[metric] != "":
                assert float(ra[metric]) == pytest.approx(float(rb[metric]), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("grid, needle", [
    ({"guidance.name": ["dps", "telepathy"]}, "unknown guidance method 'telepathy'"),
    ({"guidance.name": []}, "non-empty list"),
    ({"sampler.steps": [10, -2]}, "sampler.steps"),
    ({"degradation": [{"name": "lowpass", "params": {"cutoff_hz": 12000}}]}, "cutoff_hz"),
])
def test_bad_sweep_configs_fail_before_work(tmp_path, tiny_dir, capsys, grid, needle):
    from test_evaluate_script import run_in_process

    config = _write_config(tmp_path, sweep={"grid": grid})
    out = tmp_path / "out"
    proc = run_in_process(["--config", str(config), "--output_dir", str(out)], capsys)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("override", [
    ["--model.pretrained", "some/other-model"], ["--model.dtype", "bfloat16"], ["--model.variant", "fp16"],
    ["--condition.unconditional", "diffusers"], ["--condition.text", "rain"],
    ["--condition.cfg_scale", "2.0", "--condition.text", "rain"], ["--condition.audio", "measurement"],
    ["--chunk.seconds", "5.12"], ["--chunk.overlap_seconds", "0.64"],
    ["--sampler.eta", "1.0"], ["--sampler.scheduler", "ddpm"], ["--sampler.domain", "waveform"],
    ["--sampler.steps", "7"], ["--guidance.scale", "0.25"], ["--report.seed_metrics", "true"],
])
def test_resume_keys_change_with_everything_that_changes_a_result(override):
    """A resumed run reuses a record only if nothing that shapes its result changed (model, dtype, variant,
    condition, chunking, sampler settings, strength, extra metrics); otherwise the stale record would be reused."""
    from gdr.config import parse
    from gdr.evaluate import plan_evaluation

    base = ["--config", "configs/smoke.yaml", "--data.demo_seconds", "1.0"]

    def keys(argv):
        plan = plan_evaluation(parse(argv)[2])
        return {(i.clip, i.kind, i.method.split(" ")[0], i.seed): i.key for i in plan.items}

    a, b = keys(base), keys([*base, *override])
    method_keys = [k for k in a if k[1] == "method" and k[2] == "dps"]
    assert method_keys and all(a[k] != b[k] for k in method_keys)
    # Baselines depend on the model and the chunking, not on the sampler or the method: reused only then.
    baseline_keys = [k for k in a if k[1] == "baseline"]
    model_side = override[0].split(".")[0] in ("--model", "--chunk", "--report")
    assert baseline_keys and all((a[k] != b[k]) == model_side for k in baseline_keys)
    assert keys(base) == a  # and the keys are stable when nothing changes


def test_recipes_that_differ_get_different_labels_and_defaults_keep_the_short_one():
    """Labels name wav files and report rows: two recipes of one sweep must never share one."""
    from gdr.sweep import recipe_label

    base = {"guidance": {"name": "dps", "scale": 1.0, "schedule": "constant", "params": {}},
            "sampler": {"steps": 20, "eta": 0.0, "scheduler": "ddim", "domain": "mel"},
            "condition": {"text": "", "negative_text": "", "cfg_scale": 1.0, "audio": "none",
                          "unconditional": "original"}}
    assert recipe_label(base) == "dps s=1 20st"
    variants = [("sampler", "domain", "waveform"), ("sampler", "eta", 1.0), ("sampler", "scheduler", "ddpm"),
                ("condition", "unconditional", "diffusers"), ("condition", "text", "rain"),
                ("condition", "audio", "measurement")]
    labels = set()
    for part, key, value in variants:
        recipe = {**base, part: {**base[part], key: value}}
        labels.add(recipe_label(recipe))
    assert len(labels) == len(variants) and recipe_label(base) not in labels
