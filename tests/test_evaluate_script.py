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
                      "--chunk.seconds", "1.28", "--chunk.overlap_seconds", "0.32")
    assert proc.returncode == 0, proc.stderr
    expected = {"stereo44k": 2.0 * 16000, "sub__mono16k": 3.3 * 16000}
    for clip, n in expected.items():
        for name in ("input", "vae_roundtrip", "vocoder_roundtrip"):
            audio, sr = sf.read(str(out / "clips" / clip / f"{name}.wav"))
            assert sr == 16000 and audio.shape == (round(n),) and np.isfinite(audio).all()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {(r["clip"], r["method"]) for r in rows} == {
        (c, m) for c in expected for m in ("vae_roundtrip", "vocoder_roundtrip")}
    for row in rows:
        assert float(row["logmel_l1"]) > 0 and float(row["lsd"]) > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["pretrained"] == "gdr-tiny" and config["data"]["root"] == str(data)
    assert not list(out.rglob("*.tmp"))


def test_demo_clips_need_no_data(tmp_path, tiny_dir):
    out = tmp_path / "out"
    proc = run_script("evaluate.py", *SMOKE, "--output_dir", str(out), "--data.demo_seconds", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (out / "clips").iterdir()} == {"tone_vibrato", "drums", "chirp", "noise_bursts"}


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
    _assert_one_line_failure(proc, out, "huggingface-cli download cvssp/audioldm2", "configs/smoke.yaml")


@pytest.mark.parametrize("args, needle", [
    (["--chunk.overlap_seconds", "100"], "overlap_seconds"),
    (["--model.dtype", "int8"], "model.dtype"),
    (["--no_such_option", "1"], "no_such_option"),
])
def test_bad_config_values(tmp_path, args, needle):
    out = tmp_path / "out"
    proc = run_script("evaluate.py", *SMOKE, *args, "--output_dir", str(out))
    _assert_one_line_failure(proc, out, needle)
