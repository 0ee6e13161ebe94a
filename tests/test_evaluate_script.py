"""scripts/evaluate.py end to end on the tiny model, and every user error as one stderr line with no output."""

import csv

import numpy as np
import pytest
import soundfile as sf
import yaml

from conftest import run_script
from test_audio_io import BAD_CASES, make_bad_input


def _good_folder(root):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(2.0 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.1 * rng.standard_normal(t.size)], axis=1) * 0.3
    sf.write(str(root / "stereo44k.flac"), stereo.astype(np.float32), 44100)
    (root / "sub").mkdir()
    sf.write(str(root / "sub" / "mono16k.wav"), (0.2 * rng.standard_normal(int(3.3 * 16000))).astype(np.float32), 16000)
    (root / "notes.txt").write_text("not audio; ignored because of its extension")
    return root


SMOKE = ["--config", "configs/smoke.yaml", "--progress", "false"]


def test_round_trips_end_to_end(tmp_path, tiny_dir):
    data = _good_folder(tmp_path / "data")
    out = tmp_path / "out"
    proc = run_script("evaluate.py", *SMOKE, "--data.root", str(data), "--output_dir", str(out),
                      "--chunk.seconds", "1.28", "--chunk.overlap_seconds", "0.32", "--sampler.steps", "2",
                      "--logger", "false")
    assert proc.returncode == 0, proc.stderr
    expected = {"stereo44k": 2.0 * 16000, "sub__mono16k": 3.3 * 16000}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    methods = ["degraded", "vocoder_roundtrip", "vae_roundtrip", "oracle_vae_roundtrip", "decoder_inversion s=1 2st",
               "dps s=1 2st"]
    assert [(r["clip"], r["method"]) for r in rows] == [(c, m) for c in expected for m in methods]
    for row in rows:
        assert float(row["logmel_l1"]) >= 0 and float(row["lsd"]) >= 0 and row["task"] == "identity"
        # identity task: the degraded input is the clean clip itself (distance 0); every model output differs.
        for name in ("logmel_l1", "lsd"):
            if row["method"] == "degraded":
                assert float(row[name]) == 0, (row["clip"], name, row[name])
            else:
                assert float(row[name]) > 1e-3, (row["clip"], row["method"], name, row[name])
        audio, sr = sf.read(str(out / row["wav"]))
        assert sr == 16000 and audio.shape == (round(expected[row["clip"]]),) and np.isfinite(audio).all()
    for clip in expected:
        audio, _ = sf.read(str(out / "audio" / clip / "input.wav"))
        assert audio.shape == (round(expected[clip]),) and abs(np.abs(audio).max() - 0.5) < 1e-6
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["pretrained"] == "gdr-tiny" and config["data"]["root"] == str(data)
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert not list(out.rglob("*.tmp"))


def test_demo_clips_need_no_data(tmp_path, tiny_dir):
    out = tmp_path / "out"
    proc = run_script("evaluate.py", *SMOKE, "--output_dir", str(out), "--data.demo_seconds", "1.5",
                      "--sampler.steps", "2", "--logger", "false")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (out / "audio").iterdir()} == {"tone_vibrato", "drums", "chirp", "noise_bursts"}


def run_in_process(argv, capsys):
    """The script's main under its error guard, in this process (for the many config-error cases; the
    bad-input and missing-model cases above go through a real subprocess)."""
    import subprocess

    from gdr.cli import main_guard

    capsys.readouterr()
    code = main_guard(lambda: _evaluate_main()(argv))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def _assert_one_line_failure(proc, out, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", BAD_CASES)
def test_one_bad_file_stops_the_run_before_any_output(tmp_path, tiny_dir, case):
    data = _good_folder(tmp_path / "data")
    path, _ = make_bad_input(tmp_path / "data", case)
    out = tmp_path / "out"
    root = path if case == "missing" else data
    proc = run_script("evaluate.py", *SMOKE, "--data.root", str(root), "--output_dir", str(out))
    _assert_one_line_failure(proc, out, path.name)


def test_missing_model_folder(tmp_path):
    out = tmp_path / "out"
    proc = run_script("evaluate.py", *SMOKE, "--model.pretrained", str(tmp_path / "nope"), "--output_dir", str(out))
    _assert_one_line_failure(proc, out, "does not exist", "--model.pretrained")


def test_default_config_without_weights_names_the_smoke_config(tmp_path):
    out = tmp_path / "out"
    proc = run_script("evaluate.py", "--config", "configs/default.yaml", "--output_dir", str(out),
                      env={"HF_HOME": str(tmp_path / "hf")})
    _assert_one_line_failure(proc, out, "hf download cvssp/audioldm2", "configs/smoke.yaml")


@pytest.mark.parametrize("args, needle", [
    (["--chunk.overlap_seconds", "100"], "overlap_seconds"),
    (["--model.dtype", "int8"], "model.dtype"),
    (["--no_such_option", "1"], "no_such_option"),
])
def test_bad_config_values(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    _assert_one_line_failure(run_in_process([*SMOKE, *args, "--output_dir", str(out)], capsys), out, needle)


@pytest.mark.parametrize("section, values, needle", [
    ("ChunkConfig", {"seconds": 2.56, "overlap_seconds": 1.3}, "chunk.overlap_seconds"),
    ("ChunkConfig", {"batch_size": 0}, "chunk.batch_size"),
    ("SamplerConfig", {"eta": 1.01}, "sampler.eta"),
    ("SamplerConfig", {"seeds": 0}, "sampler.seeds"),
    ("SamplerConfig", {"steps": 1001}, "sampler.steps"),
    ("ReportConfig", {"confidence": 1.0}, "report.confidence"),
    ("ReportConfig", {"primary": {"gaps": "plcmoss"}}, "report.primary.gaps"),
])
def test_config_sections_refuse_values_just_outside_their_ranges(section, values, needle):
    from gdr import config
    from gdr.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        getattr(config, section)(**values)
    edge = {"chunk.overlap_seconds": {"seconds": 2.56, "overlap_seconds": 1.28}, "chunk.batch_size": {"batch_size": 1},
            "sampler.eta": {"eta": 1.0}, "sampler.seeds": {"seeds": 1}, "sampler.steps": {"steps": 1000},
            "report.confidence": {"confidence": 0.99}, "report.primary.gaps": {"primary": {"gaps": "lsd"}}}[needle]
    getattr(config, section)(**edge)  # the edge of the range is accepted


def _evaluate_main():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# Every method and every degradation at least once, on clips whose length is no multiple of anything.
METHOD_RUNS = [
    ("none", {"name": "clip", "params": {"level": 0.1}}, {}),
    ("latent_pull", {"name": "identity"}, {"start": "target"}),
    ("sdedit", {"name": "noise", "params": {"snr_db": 5, "color": "pink"}}, {"strength": 0.5}),
    ("inpaint", {"name": "gaps", "params": {"length_ms": 80, "count": 2}}, {}),
    ("dps", {"name": "lowpass", "params": {"cutoff_hz": 2000}}, {"every": 2}),
    ("mpgd", {"name": "clip", "params": {"level": 0.1}}, {}),
    ("diffpir", {"name": "compose", "params": {"ops": [{"name": "lowpass", "cutoff_hz": 4000},
                                                        {"name": "noise", "snr_db": 10}]}}, {"iters": 2}),
    ("decoder_inversion", {"name": "gaps", "params": {"length_ms": 50, "count": 3}}, {}),
]


@pytest.mark.parametrize("method, degradation, params", METHOD_RUNS, ids=[r[0] for r in METHOD_RUNS])
def test_every_method_and_degradation_through_evaluate(tmp_path, tiny_dir, method, degradation, params):
    import json

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    sf.write(str(data / "odd.wav"), (0.2 * rng.standard_normal(int(1.37 * 22050))).astype(np.float32), 22050)
    out = tmp_path / "out"
    argv = [*SMOKE, "--data.root", str(data), "--output_dir", str(out), "--chunk.seconds", "0.64",
            "--chunk.overlap_seconds", "0.16", "--sampler.steps", "3", "--sampler.seeds", "2",
            "--guidance.name", method, "--guidance.params", json.dumps(params),
            "--degradation.name", degradation["name"], "--degradation.params",
            json.dumps(degradation.get("params", {})), "--logger", "false", "--report.bootstrap", "100"]
    import time

    started = time.perf_counter()
    assert _evaluate_main()(argv) == 0
    elapsed = time.perf_counter() - started
    n = round(1.37 * 16000)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    ours = [r for r in rows if r["guidance"] == method and r["kind"] == "method"]
    seeds = ["0"] if method == "decoder_inversion" else ["0", "1"]
    assert [r["seed"] for r in ours] == seeds
    assert {"degraded", "vocoder_roundtrip", "vae_roundtrip", "oracle_vae_roundtrip"} <= {r["method"] for r in rows}
    for row in rows:
        assert float(row["wall_s"]) >= 0 and float(row["peak_mem_mb"]) > 0 and row["logmel_l1"] != ""
        if row["method"] != "degraded":  # the measurement itself takes no time to return; everything else does
            assert float(row["wall_s"]) > 0, row["method"]
        audio, sr = sf.read(str(out / row["wav"]))
        assert sr == 16000 and audio.shape == (n,) and np.isfinite(audio).all()
    # Wall times are each item's own: together at most the whole run; no method beats returning the measurement.
    walls = {r["method"] + r["seed"]: float(r["wall_s"]) for r in rows}
    assert sum(walls.values()) <= elapsed
    assert min(float(r["wall_s"]) for r in ours) >= walls["degraded"]
    if len(ours) == 2:  # seeds change the initial noise of every diffusion method
        a, _ = sf.read(str(out / ours[0]["wav"]))
        b, _ = sf.read(str(out / ours[1]["wav"]))
        assert not np.array_equal(a, b)


def test_help_lists_methods_and_degradations():
    proc = run_script("evaluate.py", "--help")
    assert proc.returncode == 0
    for name in ("latent_pull", "sdedit", "inpaint", "dps", "mpgd", "diffpir", "decoder_inversion",
                 "identity", "noise", "clip", "lowpass", "gaps", "compose"):
        assert name in proc.stdout
    # Every registered method and degradation, in the lines that list them (not just somewhere in the text).
    from gdr.degradations import DEGRADATIONS
    from gdr.methods import GUIDANCE

    out = proc.stdout.splitlines()
    degradations = [line.split(":", 1)[1] for line in out if line.startswith("degradations (--degradation.name):")]
    assert [[name.strip() for name in value.split(",")] for value in degradations] == [list(DEGRADATIONS)]
    # Methods: one per line under their header, each with its capabilities (e.g. "decoder gradients").
    start = out.index("guidance methods (--guidance.name):") + 1
    methods = []
    for line in out[start:]:
        if not line.startswith("  "):
            break
        methods.append(line.split()[0])
    assert methods == list(GUIDANCE)
    assert "no diffusion prior" in out[start + methods.index("decoder_inversion")]
    assert {"seed", "psld", "resample", "daps"} <= set(GUIDANCE)  # the ones the old list left out


@pytest.mark.parametrize("args, needle", [
    (["--guidance.name", "magic"], "unknown guidance method 'magic'; known: "),
    (["--degradation.name", "reverb"], "unknown degradation 'reverb'; known: "),
    (["--guidance.name", "inpaint", "--degradation.name", "clip"], "inpaint needs a degradation with a latent mask"),
    (["--sampler.steps", "-3"], "sampler.steps"),
    (["--degradation.name", "gaps", "--degradation.params", '{"length_ms": 5000}', "--data.demo_seconds", "2"],
     "do not fit"),
])
def test_bad_recipes_fail_in_one_line_before_work(tmp_path, tiny_dir, capsys, args, needle):
    out = tmp_path / "out"
    _assert_one_line_failure(run_in_process([*SMOKE, *args, "--output_dir", str(out)], capsys), out, needle)


@pytest.mark.parametrize("where", ["under_a_file", "read_only_filesystem", "read_only_folder"])
def test_unwritable_output_folder_fails_in_one_line_before_work(tmp_path, tiny_dir, capsys, where, monkeypatch):
    """Root ignores permission bits, so a read-only folder is also simulated by a failing probe; a path under a
    regular file and one on /proc (a read-only file system) fail for real whoever runs the tests."""
    import tempfile

    if where == "under_a_file":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "out"
    elif where == "read_only_filesystem":
        out = __import__("pathlib").Path("/proc/gdr-output")
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o555)

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    proc = run_in_process([*SMOKE, "--output_dir", str(out)], capsys)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "output_dir" in proc.stderr and ("not writable" in proc.stderr or "is a file" in proc.stderr)
    if where == "read_only_folder":
        assert list(out.iterdir()) == []


def test_seed_experiment_config_runs_and_reports_the_seeds_metrics(tmp_path, tiny_dir):
    """configs/seed_experiment.yaml on the tiny model: 4 strengths of the seed method against the VAE round
    trip, the seed's own metrics in metrics.csv (checked against the written wavs) and in the report."""
    out = tmp_path / "out"
    proc = run_script("evaluate.py", "--config", "configs/seed_experiment.yaml", "--model.pretrained", "gdr-tiny",
                      "--model.device", "cpu", "--data.demo_seconds", "1.0", "--chunk.seconds", "1.28",
                      "--chunk.overlap_seconds", "0.32", "--sampler.steps", "3", "--logger", "false",
                      "--progress", "false", "--report.bootstrap", "200", "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    methods = {r["method"] for r in rows}
    assert {f"seed s={s} on=prev_sample 3st" for s in (0.1, 0.3, 0.5, 0.7)} <= methods and "vae_roundtrip" in methods
    for row in rows:
        audio, _ = sf.read(str(out / row["wav"]), dtype="float64")
        clean, _ = sf.read(str(out / "audio" / row["clip"] / "input.wav"), dtype="float64")
        n = min(len(audio), len(clean))
        assert float(row["seed_mse"]) == pytest.approx(np.mean((audio[:n] - clean[:n]) ** 2), rel=1e-4, abs=1e-9)
    report = (out / "report.md").read_text()
    assert "## The seed's own metrics" in report and "MSE vs vae_roundtrip" in report
    assert "24.7-26.8 %" in report and "on seed_mse" in report


def test_baseline_rows_hold_what_their_names_say(tmp_path, tiny_model, capsys):
    """metrics.csv's values and wavs, recomputed here: ``degraded`` = A(x), ``vae_roundtrip`` = G(E(M(A(x)))),
    ``oracle_vae_roundtrip`` = G(E(M(x))) of the *clean* input (a ceiling, never fed the measurement)."""
    import torch

    from gdr.baselines import BASELINES
    from gdr.degradations import build_degradation
    from gdr.metrics import PER_ITEM, align

    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(int(1.5 * 16000)) / 16000
    sf.write(str(data / "tone.wav"), (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 5000 * t))
             .astype(np.float32), 16000)
    out = tmp_path / "out"
    argv = [*SMOKE, "--data.root", str(data), "--output_dir", str(out), "--sampler.steps", "1",
            "--guidance.name", "none", "--degradation.name", "lowpass", "--degradation.params", '{"cutoff_hz": 2000}',
            "--logger", "false", "--report.bootstrap", "100"]
    assert run_in_process(argv, capsys).returncode == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "metrics.csv").open())}
    x = torch.as_tensor(sf.read(str(out / "audio" / "tone" / "input.wav"), dtype="float32")[0])
    op = build_degradation({"name": "lowpass", "cutoff_hz": 2000})
    with torch.no_grad():
        y = op.measure(x[None])  # as the evaluation measures: float32
        expected = {"degraded": y[0],
                    "vae_roundtrip": BASELINES["vae_roundtrip"].fn(tiny_model, y, op)[0],
                    "oracle_vae_roundtrip": BASELINES["vae_roundtrip"].fn(tiny_model, x[None], op)[0]}
    for method, want in expected.items():
        got = torch.as_tensor(sf.read(str(out / rows[method]["wav"]), dtype="float32")[0])
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-5, msg=method)
        value = PER_ITEM["lsd"](align(got, x)[None].double(), x[None].double())[0]
        assert float(rows[method]["lsd"]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), method
    assert float(rows["oracle_vae_roundtrip"]["lsd"]) != float(rows["vae_roundtrip"]["lsd"])
