"""The run folder: every path of a run comes from `gdr.run_folder`, and no two inputs can share one."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf

from gdr.run_folder import RunFolder, folder_names, slug

COLLIDING = [
    ["a b", "a_b"],  # the same readable form
    ["音楽", "声"],  # nothing readable left
    ["Drums", "drums"],  # the same up to case (macOS, Windows)
    ["..", ".", "/", "./x", "../x", ".hidden"],  # path-like names
    ["x" * 200, "x" * 200 + "y"],  # the same after truncation
]


@pytest.mark.parametrize("names", COLLIDING, ids=["space-underscore", "cjk", "case", "dots", "long"])
def test_folder_names_are_distinct_safe_path_components(names):
    out = folder_names(names)
    assert set(out) == set(names)
    folded = [v.casefold() for v in out.values()]
    assert len(set(folded)) == len(names), out  # distinct even on a case-insensitive file system
    for v in out.values():
        assert v and "/" not in v and "\\" not in v and v not in (".", "..") and not v.startswith("."), out
        assert len(v.encode()) <= 120


def test_unique_names_stay_readable_and_the_assignment_is_stable():
    assert folder_names(["tone", "drums", "speech__p225_001"]) == {
        "tone": "tone", "drums": "drums", "speech__p225_001": "speech__p225_001"}
    mixed = ["a b", "a_b", "tone"]
    assert folder_names(mixed) == folder_names(list(reversed(mixed)))  # order does not matter
    assert folder_names(mixed)["tone"] == "tone"
    assert folder_names(mixed)["a b"].startswith("a_b-") and folder_names(mixed)["a_b"].startswith("a_b-")
    assert slug("  .hidden name!") == "hidden_name"


def test_paths_of_two_colliding_clips_never_meet(tmp_path):
    run = RunFolder(tmp_path, ["a b", "a_b"], ["gaps(length_ms=100)", "gaps(length_ms=100) "], ["dps", "dps "])
    paths = {run.input_wav(c) for c in ("a b", "a_b")}
    paths |= {run.output_wav(c, t, o) for c in ("a b", "a_b") for t in ("gaps(length_ms=100)", "gaps(length_ms=100) ")
              for o in ("dps", "dps ")}
    assert len(paths) == 2 + 8
    assert all(run.relative(p).startswith("audio/") for p in paths)
    assert run.spectrogram("audio/x/t/m.wav") == tmp_path / "plots" / "listen" / "audio" / "x" / "t" / "m.png"


def test_records_rows_and_metrics_round_trip(tmp_path):
    run = RunFolder(tmp_path, ["c"], ["t"], ["m"])
    wav = run.output_wav("c", "t", "m")
    run.write_record("k1", {"clip": "c", "lsd": 1.5}, wav)
    assert run.rows(["k0", "k1"]) == [{"clip": "c", "lsd": 1.5, "wav": "audio/c/t/m.wav"}]  # k0 not done
    run.write_metrics([{"a": 1}, {"a": 2, "b": 3}])
    assert list(csv.DictReader(run.metrics_csv.open())) == [{"a": "1", "b": ""}, {"a": "2", "b": "3"}]


def test_colliding_clip_names_get_their_own_outputs_end_to_end(tmp_path, tiny_dir, capsys):
    """`a b.wav` / `a_b.wav` and two all-CJK names through a real run: one folder and one set of wavs per
    clip, and each clip's input.wav is that clip (the report plays the right audio)."""
    from test_evaluate_script import SMOKE, run_in_process

    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(int(1.0 * 16000)) / 16000
    freqs = {"a b": 220, "a_b": 330, "音楽": 440, "声": 550}
    for name, f in freqs.items():
        sf.write(str(data / f"{name}.wav"), (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000)
    out = tmp_path / "out"
    argv = [*SMOKE, "--data.root", str(data), "--output_dir", str(out), "--sampler.steps", "1",
            "--guidance.name", "none", "--logger", "false", "--report.bootstrap", "100", "--report.fad", "false"]
    assert run_in_process(argv, capsys).returncode == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len({r["wav"] for r in rows}) == len(rows)  # every row its own wav
    assert {r["clip"] for r in rows} == set(freqs)
    clip_dirs = {r["clip"]: r["wav"].split("/")[1] for r in rows}
    assert len(set(clip_dirs.values())) == 4 and all(clip_dirs.values())
    for clip, folder in clip_dirs.items():
        x, sr = sf.read(str(out / "audio" / folder / "input.wav"), dtype="float32")
        peak_hz = np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x)
        assert abs(peak_hz - freqs[clip]) < 5, (clip, peak_hz)
    assert not [p for p in (out / "audio").iterdir() if p.is_file()]  # nothing written straight into audio/
    # What the run wrote is what the layout (README, `gdr.run_folder`) says, and nothing else.
    run = RunFolder(out)
    assert {p.name for p in out.iterdir()} == {run.config.name, "items", "audio", run.metrics_csv.name,
                                               run.report_md.name, run.report_html.name, run.plots.name}
    assert all(run.spectrogram(r["wav"]).is_file() for r in rows)


def _layout_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def test_readme_shows_the_layout_the_run_folder_builds():
    """README's output layout block is the one in `gdr.run_folder`'s docstring (the owner of every path)."""
    from pathlib import Path

    import gdr.run_folder

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split("<!-- run-folder-layout -->")[1].split("<!-- /run-folder-layout -->")[0]
    block = block.strip().removeprefix("```").removesuffix("```")
    doc = gdr.run_folder.__doc__.split("::")[1].split("\n\n")[1]
    assert _layout_lines(block) == _layout_lines(doc)
