"""Speech metrics against their reference packages on real (espeak-ng) speech, where each applies, clip kinds
from a manifest or folder names, and a speech run end to end through metrics.csv and the report."""

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from gdr import speech_metrics as sm
from gdr.errors import ConfigError

SPEECH = Path(__file__).parent / "data" / "speech_espeak_16k.wav"


@pytest.fixture(scope="module")
def speech():
    """The clean espeak-ng sentence ``(N,)`` float64 at 16 kHz and two degraded versions ``(2, N)``: white noise
    at ~10 dB SNR, and a 2 kHz low-pass."""
    x, sr = sf.read(str(SPEECH), dtype="float64")
    assert sr == 16000 and 3.0 < len(x) / sr < 6.0
    noisy = x + 0.3 * x.std() * np.random.default_rng(0).standard_normal(len(x))
    lowpassed = scipy.signal.sosfiltfilt(scipy.signal.butter(8, 2000, fs=16000, output="sos"), x)
    return x, np.stack([noisy, lowpassed])


def test_pesq_wb_is_pesq_pesq(speech):
    import pesq

    x, degraded = speech
    ours = sm.pesq_wb(torch.from_numpy(degraded), torch.from_numpy(np.stack([x, x])))
    expected = [pesq.pesq(16000, x, d, "wb") for d in degraded]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)
    assert expected[0] != expected[1]  # per item, not a batch mean
    assert sm.pesq_wb(torch.from_numpy(x)[None], torch.from_numpy(x)[None]).item() > 4.5


def test_pesq_without_speech_in_the_output_is_nan():
    x = torch.from_numpy(sf.read(str(SPEECH), dtype="float64")[0])[None]
    assert torch.isnan(sm.pesq_wb(torch.zeros_like(x), x)).all()


@pytest.mark.parametrize("name, extended", [("stoi", False), ("estoi", True)])
def test_stoi_and_estoi_are_pystoi(speech, name, extended):
    from pystoi import stoi

    x, degraded = speech
    ours = getattr(sm, name)(torch.from_numpy(degraded), torch.from_numpy(np.stack([x, x])))
    expected = [stoi(x, d, 16000, extended=extended) for d in degraded]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)


def test_dnsmos_is_speechmos(speech):
    from speechmos import dnsmos

    x, degraded = speech
    ours = sm.dnsmos(torch.from_numpy(np.stack([x, degraded[0]])))
    for i, audio in enumerate((x, degraded[0])):
        expected = dnsmos.run(audio.astype(np.float32), 16000)
        for name, key in (("dnsmos_sig", "sig_mos"), ("dnsmos_bak", "bak_mos"), ("dnsmos_ovrl", "ovrl_mos")):
            assert ours[name][i].item() == pytest.approx(float(expected[key]), rel=1e-6), name
    assert ours["dnsmos_bak"][0] > ours["dnsmos_bak"][1]  # the noisy copy has the worse background


def test_dnsmos_models_ship_in_the_wheel():
    import speechmos

    folder = Path(speechmos.__file__).parent
    assert (folder / "dnsmos_models" / "sig_bak_ovr.onnx").stat().st_size > 1e6
    assert (folder / "plcmos_models" / "plcmos_v2.onnx").stat().st_size > 1e6


def test_plcmos_is_speechmos_with_its_generator_seeded_and_restored(speech):
    from speechmos import plcmos

    x, _ = speech
    gapped = x.copy()
    for start in (8000, 24000, 40000):
        gapped[start:start + 1600] = 0.0  # three 100 ms losses
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = sm.plcmos(torch.from_numpy(np.stack([x, gapped])), seed=7)
    assert (np.random.get_state()[1] == before).all()  # the global stream is untouched
    for i, audio in enumerate((x, gapped)):
        np.random.seed(7)
        assert ours[i].item() == pytest.approx(plcmos.run(audio.astype(np.float32), 16000)["plcmos"], rel=1e-6)
    assert torch.equal(ours, sm.plcmos(torch.from_numpy(np.stack([x, gapped])), seed=7))  # reproducible
    assert ours[0] > ours[1]  # losses are heard


def test_which_metrics_apply_where():
    gaps = {"name": "gaps", "params": {"length_ms": 100, "count": 3}}
    compose = {"name": "compose", "params": {"ops": [{"name": "lowpass"}, {"name": "gaps"}]}}
    assert sm.applicable("speech", {"name": "noise"}) == ("pesq_wb", "stoi", "estoi", "dnsmos_sig", "dnsmos_bak",
                                                          "dnsmos_ovrl")
    assert sm.applicable("speech", gaps)[-1] == "plcmos" and sm.applicable("speech", compose)[-1] == "plcmos"
    for kind in ("music", "sound", "other"):
        assert sm.applicable(kind, gaps) == ()


def _speech_row(tmp_path, kind, degradation, out):
    """One row as `EvaluationRunner.finish` writes it, for the espeak clip marked `kind`."""
    from test_metrics import _finish

    x = torch.from_numpy(sf.read(str(SPEECH), dtype="float32")[0])
    return _finish(tmp_path, f"{kind}_{degradation['name']}", True, out, clip=x, clip_kind=kind,
                   degradation=degradation)


def test_rows_carry_speech_metrics_only_where_they_apply(tmp_path):
    import pesq
    from speechmos import dnsmos

    x = torch.from_numpy(sf.read(str(SPEECH), dtype="float32")[0])
    noise = 0.02 * torch.from_numpy(np.random.default_rng(1).standard_normal(len(x))).float()

    def late(v):  # 40 samples late: the intrusive metrics see it aligned
        return torch.roll(v + noise, 40)

    row = _speech_row(tmp_path, "speech", {"name": "noise"}, late)
    assert row["clip_kind"] == "speech" and "plcmos" not in row
    # align() shifts the late copy back by 40 and zero-pads its end (the wrapped start is dropped).
    aligned = np.concatenate([(x + noise).double().numpy()[:-40], np.zeros(40)])
    assert float(row["pesq_wb"]) == pytest.approx(pesq.pesq(16000, x.double().numpy(), aligned, "wb"), abs=1e-5)
    expected = dnsmos.run(np.clip(late(x).numpy(), -1, 1), 16000)  # non-intrusive: the output as written
    assert float(row["dnsmos_ovrl"]) == pytest.approx(float(expected["ovrl_mos"]), abs=1e-5)
    gaps = _speech_row(tmp_path, "speech", {"name": "gaps", "params": {"count": 2}}, lambda v: v)
    assert float(gaps["plcmos"]) > 1
    music = _speech_row(tmp_path, "music", {"name": "gaps"}, lambda v: v)
    assert not set(sm.SPEECH_METRICS) & set(music) and music["clip_kind"] == "music" and music["lsd"] != ""


# ------------------------------------------------------------------------------ clip kinds
def _folder(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / name), (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
    return root


def test_clip_kind_from_manifest_then_folder_then_default(tmp_path):
    from gdr.data import load_folder

    root = _folder(tmp_path / "d", ["speech/a.wav", "speech/deep/b.wav", "music/c.wav", "d.wav", "e.wav"])
    (root / "manifest.csv").write_text("path,kind,note\nmusic/c.wav,speech,sung\ne.wav,sound,\n")
    kinds = {c.name: c.kind for c in load_folder(root)}
    assert kinds == {"speech__a": "speech", "speech__deep__b": "speech", "music__c": "speech", "d": "other",
                     "e": "sound"}
    assert {c.name: c.kind for c in load_folder(root, kind="music")}["d"] == "music"
    assert {c.kind for c in load_folder(root / "speech")} == {"speech"}  # the data folder's own name counts


def test_folders_above_the_data_folder_do_not_mark_its_clips(tmp_path):
    from gdr.data import load_folder

    root = _folder(tmp_path / "music" / "set", ["a.wav", "speech/b.wav"])
    assert {c.name: c.kind for c in load_folder(root)} == {"a": "other", "speech__b": "speech"}


@pytest.mark.parametrize("manifest, needle", [
    ("path,kind\nd.wav,podcast\n", "unknown clip kind 'podcast'"),
    ("path,kind\nnope.wav,speech\n", "'nope.wav' is not a file"),
    ("file,type\nd.wav,speech\n", "needs the columns path and kind"),
])
def test_bad_manifest_is_one_line(tmp_path, manifest, needle):
    from gdr.data import load_folder

    root = _folder(tmp_path / "d", ["d.wav"])
    (root / "manifest.csv").write_text(manifest)
    with pytest.raises(ConfigError, match=needle) as info:
        load_folder(root)
    assert "manifest.csv" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ end to end
def test_a_speech_run_reports_speech_metrics_and_fad_status(tmp_path, tiny_dir, capsys):
    """The tiny model on the espeak clip under ``speech/``, low-pass task: speech metrics but no PLCMOS (no gaps) in
    metrics.csv and the report tables (non-speech clips and PLCMOS on gaps: the row tests above); the primary metric
    (estoi, from the config) named with the correction; without FAD weights one stderr line, and the run finishes.
    The clip is 2.3 s: DNSMOS repeats it to 9.2 s, one 9.01 s window (the test stays fast)."""
    from test_evaluate_script import SMOKE, run_in_process

    data = tmp_path / "data"
    (data / "speech").mkdir(parents=True)
    x, _ = sf.read(str(SPEECH), dtype="float32")
    sf.write(str(data / "speech" / "harvard.wav"), x[:36800], 16000)
    out = tmp_path / "out"
    argv = [*SMOKE, "--data.root", str(data), "--output_dir", str(out), "--sampler.steps", "1",
            "--chunk.seconds", "1.28", "--chunk.overlap_seconds", "0.32", "--guidance.name", "none",
            "--degradation.name", "lowpass", "--degradation.params", '{"cutoff_hz": 3000}',
            "--report.primary", '{"lowpass": "estoi"}', "--report.correction", "bh", "--report.bootstrap", "100",
            "--report.fad_weights", str(tmp_path / "no_weights"), "--logger", "false"]
    import warnings

    from gdr.errors import GdrWarning

    with pytest.warns(GdrWarning) as caught:  # the script prints each as one "warning: ..." line (main_guard)
        proc = run_in_process(argv, capsys)
    assert proc.returncode == 0, proc.stderr
    lines = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught]
    fad_lines = [line.strip() for line in lines if line.startswith("warning: FAD not computed")]
    assert len(fad_lines) == 1 and "\n" not in fad_lines[0] and "no_weights" in fad_lines[0]
    # Both lines name the folder; which one depends on whether the optional package is installed.
    import importlib.util

    assert "no_weights" in fad_lines[0]
    has_package = importlib.util.find_spec("frechet_audio_distance") is not None
    assert ("no PANN Cnn14 16 kHz weights" if has_package else "pip install -e '.[fad]'") in fad_lines[0], fad_lines
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) >= 6
    for row in rows:
        has = {m for m in sm.SPEECH_METRICS if row.get(m, "") != ""}
        assert row["clip_kind"] == "speech" and {"stoi", "estoi", "dnsmos_ovrl"} <= has and "plcmos" not in has
    report = (out / "report.md").read_text()
    assert "Benjamini-Hochberg" in report and "lowpass(cutoff_hz=3000) (primary: estoi)" in report
    assert report.index("## Primary metric per task") < report.index("## Verdicts")
    assert "FAD not computed" in report
    means = report.split("## Means per task and method")[1]
    assert "| pesq_wb | stoi | estoi | dnsmos_sig | dnsmos_bak | dnsmos_ovrl | si_sdr |" in means


@pytest.mark.parametrize("args, needle", [
    (["--report.primary", '{"gaps": "plcmoss"}'], "report.primary.gaps: unknown metric 'plcmoss'"),
    (["--report.correction", "bonferroni"], "report.correction"),
    (["--data.kind", "podcast"], "data.kind"),
])
def test_bad_statistics_and_kind_options_are_one_line(args, needle):
    from gdr.config import parse

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as info:
        parse(["--config", "configs/smoke.yaml", *args])
    assert "\n" not in str(info.value)


def test_default_primary_and_correction_are_in_the_resolved_config():
    from gdr.config import parse

    parser, cfg, objects = parse(["--config", "configs/smoke.yaml"])
    assert objects.report.primary == {"default": "lsd"} and objects.report.correction == "holm"
    assert "correction: holm" in parser.dump(cfg) and "default: lsd" in parser.dump(cfg)
