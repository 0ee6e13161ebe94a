"""The report from one data model through Jinja2 templates: names are text in report.html (auto-escaped) and as
written in report.md, the templates ship with the package, the listening grid holds each task's outputs, audio is
linked above the embedding limit, the plots draw what they claim, and report, plots and listening stay free of the
evaluation, Lightning and the model."""

import csv
import io
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT

NASTY = ("<script>", "a&b")  # clip names that are markup in HTML


class _Page(HTMLParser):
    """What a browser would build: script elements, and the attributes and text of the listening grid's cells."""

    def __init__(self):
        super().__init__()
        self.scripts, self.cells, self.headers, self._th = 0, [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        if tag == "td" and "data-clip" in attrs:
            self.cells.append(attrs)
        self._th = tag == "th"

    def handle_data(self, data):
        if self._th:
            self.headers.append(data)

    def handle_endtag(self, tag):
        self._th = False


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _demo_run(root, clips=("tone", "hum"), tasks=({"name": "noise", "params": {"snr_db": 10}},), seconds=0.5):
    """A finished run without a model: per clip and task a degraded input, the VAE round trip and a method with two
    seeds (the method better on lsd), wavs written through the run folder. Returns (folder, rows, plan, objects)."""
    from gdr.audio import write_wav
    from gdr.config import ReportConfig
    from gdr.run_folder import RunFolder
    from gdr.sweep import task_label

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    labels = [task_label(d) for d in tasks]
    outputs = [("degraded", "baseline", ""), ("vae_roundtrip", "baseline", ""), ("dps s=1 2st", "method", 0),
               ("dps s=1 2st", "method", 1)]
    names = [m if s == "" else f"{m}_seed{s}" for m, _, s in outputs]
    folder = RunFolder(root, clips, labels, names)
    rows = []
    for c, clip in enumerate(clips):
        x = (0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t)).astype(np.float32)
        write_wav(folder.input_wav(clip), x)
        for task in labels:
            for k, ((method, kind, seed), name) in enumerate(zip(outputs, names)):
                wav = folder.output_wav(clip, task, name)
                write_wav(wav, x + (0.05 / (k + 1)) * rng.standard_normal(len(x)).astype(np.float32))
                rows.append({"clip": clip, "clip_kind": "other", "task": task, "method": method, "kind": kind,
                             "seed": seed, "scale": "", "guidance": "dps" if kind == "method" else "",
                             "phase_coherent": k == 0, "lsd": 1.0 - 0.2 * k + 0.01 * rng.normal(),
                             "logmel_l1": 0.5 - 0.1 * k, "lsd_high": 1.0, "mrstft": 1.0, "si_sdr": "", "snr": "",
                             "wall_s": 0.1, "peak_mem_mb": 100.0, "wav": folder.relative(wav)})
    plan = SimpleNamespace(clips={c: None for c in clips}, recipes=[{"degradation": d} for d in tasks], skipped=[],
                           random_weights=True)
    objects = SimpleNamespace(report=ReportConfig(bootstrap=100, fad=False), model=SimpleNamespace(pretrained="demo"),
                              logger=False)
    return folder, rows, plan, objects


def _assert_names_are_text(html: str, markdown: str, names=NASTY):
    """Each name shows as escaped text in the HTML (and reads back as itself), never as markup; Markdown holds it
    as written."""
    page = _parse(html)
    assert page.scripts == 0 and "<script" not in html.lower()
    assert "&lt;script&gt;" in html and "a&amp;b" in html and "a&b" not in html
    for name in names:
        assert name in page.headers  # a column of the listening grid
        assert name in {cell["data-clip"] for cell in page.cells}
        assert name in markdown
    assert "&lt;" not in markdown and "&amp;" not in markdown  # Markdown is not HTML-escaped


def test_clip_names_are_text_in_the_html_and_as_written_in_the_markdown(tmp_path):
    from gdr.report import build_report

    folder, rows, plan, objects = _demo_run(tmp_path, clips=NASTY)
    build_report(folder, rows, plan, objects, cfg_yaml="data: {root: '<script>alert(1)</script>'}\n", wall_s=1.0)
    html, markdown = folder.report_html.read_text(), folder.report_md.read_text()
    _assert_names_are_text(html, markdown)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the resolved config is text too
    assert "| output | <script> | a&b |" in markdown


def test_a_run_on_clips_named_like_markup_reports_them_as_text(tmp_path, tiny_dir, capsys):
    """The whole evaluation on the tiny model, with clip files named ``<script>.wav`` and ``a&b.wav``."""
    from test_evaluate_script import SMOKE, run_in_process

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name in NASTY:
        sf.write(str(data / f"{name}.wav"), (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000)
    out = tmp_path / "out"
    argv = [*SMOKE, "--data.root", str(data), "--output_dir", str(out), "--sampler.steps", "1",
            "--guidance.name", "none", "--logger", "false", "--report.bootstrap", "100", "--report.fad", "false"]
    proc = run_in_process(argv, capsys)
    assert proc.returncode == 0, proc.stderr
    assert {r["clip"] for r in csv.DictReader((out / "metrics.csv").open())} == set(NASTY)
    _assert_names_are_text((out / "report.html").read_text(), (out / "report.md").read_text())


@pytest.mark.slow
def test_templates_ship_in_the_wheel_and_render_from_the_installed_package(tmp_path):
    """A (non-editable) wheel built from the sources holds the templates, and the report renders from the unpacked
    wheel: PackageLoader finds them inside the installed package, not in the source tree."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "gdr", src / "gdr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("gdr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(n for n in names if n.startswith("gdr/templates/"))
    assert {"gdr/templates/report.md.j2", "gdr/templates/report.html.j2"} <= set(templates), templates
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check = ("import gdr, gdr.report as r; from pathlib import Path; "
             f"assert Path(gdr.__file__).parent == Path({str(site / 'gdr')!r}), gdr.__file__; "
             "print(r.render_html(r.Report(skipped=['<b>'])))")
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "<li>&lt;b&gt;</li>" in proc.stdout and "gdr evaluation report" in proc.stdout


def test_the_listening_grid_holds_each_tasks_outputs_with_the_clean_input_first(tmp_path):
    from gdr import listening

    tasks = ({"name": "noise", "params": {"snr_db": 10}}, {"name": "lowpass", "params": {"cutoff_hz": 2000}})
    folder, rows, plan, _ = _demo_run(tmp_path, tasks=tasks)
    names = list(dict.fromkeys(r["task"] for r in rows))
    pngs = listening.spectrograms(folder, rows, plan.clips, names)
    section = listening.section(folder, rows, plan.clips, names, pngs, embed_audio=False)
    assert [g.task for g in section.grids] == names
    for grid in section.grids:
        assert [r.label for r in grid.rows] == ["clean", "degraded", "vae_roundtrip", "dps s=1 2st (seed 0)",
                                                 "dps s=1 2st (seed 1)"]
        for row in grid.rows:
            assert len(row.cells) == len(grid.clips) and all(row.cells)  # every output of every clip
            for cell in row.cells:
                assert cell.audio_src == cell.wav and cell.spectrogram.data == pngs[cell.wav]
                assert cell.spectrogram.path == folder.relative(folder.spectrogram(cell.wav))
                if row.label == "clean":
                    assert cell.wav == folder.relative(folder.input_wav(cell.clip))
                else:  # this task's own wav, not another task's
                    [source] = [r for r in rows if r["wav"] == cell.wav]
                    assert (source["task"], source["method"], str(source["seed"])) == \
                        (grid.task, cell.method, cell.seed)


def test_the_html_links_audio_by_default_and_embeds_it_only_when_asked_and_small(tmp_path, monkeypatch):
    """By default players link the wavs by relative path (report.html stays small however long the audio);
    report.embed_audio embeds them, below the size limit only."""
    from gdr import report

    folder, rows, plan, objects = _demo_run(tmp_path)
    clean = [folder.relative(folder.input_wav(c)) for c in plan.clips]
    assert objects.report.embed_audio is False
    default = report.render_html(report.report_data(folder, rows, plan, objects, "", 0.0))
    sources = re.findall(r"<audio [^>]*src='([^']*)'", default)
    assert sorted(sources) == sorted({*(r["wav"] for r in rows), *clean}) and "data:audio" not in default
    objects.report.embed_audio = True
    embedded = report.render_html(report.report_data(folder, rows, plan, objects, "", 0.0))
    sources = re.findall(r"<audio [^>]*src='([^']*)'", embedded)
    assert len(sources) == 2 * 5 and all(s.startswith("data:audio/wav;base64,") for s in sources)
    monkeypatch.setattr(report, "EMBED_LIMIT", 1000)  # far less than the run's audio
    linked = report.render_html(report.report_data(folder, rows, plan, objects, "", 0.0))
    sources = re.findall(r"<audio [^>]*src='([^']*)'", linked)
    assert sorted(sources) == sorted({*(r["wav"] for r in rows), *clean})
    assert all((folder.root / s).is_file() for s in sources)


def _colour_pixels(png: bytes, colour: str) -> int:
    from matplotlib.colors import to_rgb
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(to_rgb(colour)) * 255).sum(-1) < 30).sum())


def test_the_forest_plot_colours_only_significant_verdicts(tmp_path):
    from gdr.plots import BETTER, NOT_SIGNIFICANT, WORSE, forest_plot
    from gdr.stats import Comparison

    def comparison(mean, p):
        return Comparison("t", "lsd", f"m{mean}", "vae_roundtrip", mean, mean - 0.1, mean + 0.1, 5, 1, p=p)

    quiet = forest_plot([comparison(0.5, 0.5), comparison(-0.5, 0.5)], {"t": "lsd"})
    loud = forest_plot([comparison(0.5, 0.001), comparison(-0.5, 0.001)], {"t": "lsd"})
    legend = {colour: _colour_pixels(quiet, colour) for colour in (BETTER, WORSE)}
    assert all(n > 5 for n in legend.values())  # the legend shows every colour, whatever the verdicts
    # The markers: grey where not significant, green / red where the corrected verdict says so.
    assert _colour_pixels(quiet, NOT_SIGNIFICANT) > _colour_pixels(loud, NOT_SIGNIFICANT) + 40
    assert _colour_pixels(loud, BETTER) > legend[BETTER] + 40 and _colour_pixels(loud, WORSE) > legend[WORSE] + 40
    assert forest_plot([comparison(0.5, 0.001)], {"t": "pesq_wb"}) is None  # nothing on the primary metric


def test_strength_curves_need_two_strengths():
    from gdr.plots import strength_curves

    row = {"kind": "method", "task": "t", "guidance": "dps", "lsd": 1.0}
    assert strength_curves([{**row, "scale": "0.5"}], "lsd") is None
    assert strength_curves([{**row, "scale": "0.5"}, {**row, "scale": "1.0", "lsd": 0.8}], "lsd")[:4] == b"\x89PNG"


def test_spectrograms_share_one_colour_scale():
    """A clip 20 dB quieter is visibly darker: every cell is drawn on the same scale, not scaled to itself."""
    from PIL import Image

    from gdr.plots import SpectrogramCanvas, spectrogram_png

    rng = np.random.default_rng(0)
    loud = (0.5 * rng.standard_normal(16000)).astype(np.float32)
    canvas = SpectrogramCanvas()

    def brightness(audio):
        image = np.asarray(Image.open(io.BytesIO(spectrogram_png(audio, canvas))).convert("L"))
        assert image.shape == (128, 240)
        return image[20:100, 40:150].mean()  # inside the axes

    assert brightness(loud) > brightness(0.1 * loud) + 15


def test_report_plots_and_listening_import_no_evaluation_lightning_model_or_wandb():
    modules = ("gdr.evaluate", "lightning", "pytorch_lightning", "gdr.backbone", "wandb")
    code = ("import sys, gdr.report, gdr.plots, gdr.listening, gdr.wandb_log; "
            f"print([m for m in {modules!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_long_spectrograms_average_frames_into_a_bounded_number_of_columns(monkeypatch):
    """A long input's picture averages k consecutive log-mel frames (k = ceil(frames / MAX_COLUMNS)), in blocks of
    at most SPECTROGRAM_BLOCK frames whatever k is: the columns equal that average of the whole-signal log-mel, and
    their number stays bounded."""
    import torch

    from gdr import plots
    from gdr.audio import log_mel

    shown = {}
    monkeypatch.setattr(plots.SpectrogramCanvas, "png", lambda self, mel, seconds: shown.update(mel=mel) or b"")
    monkeypatch.setattr(plots, "MAX_COLUMNS", 40)
    monkeypatch.setattr(plots, "SPECTROGRAM_BLOCK", 50)  # not a multiple of k: columns straddle blocks
    x = (0.3 * torch.randn(16000 * 3, generator=torch.Generator().manual_seed(0))).numpy()  # 300 frames -> k = 8
    plots.spectrogram_png(x)
    whole = log_mel(torch.as_tensor(x)[None])[0, 0]  # (300, 64)
    k = 8
    want = torch.cat([whole[: 296].reshape(-1, k, 64).mean(1), whole[296:].mean(0, keepdim=True)]).T.numpy()
    assert shown["mel"].shape == (64, 38) and shown["mel"].shape[1] <= 40
    np.testing.assert_allclose(shown["mel"], want, rtol=1e-4, atol=1e-4)
