"""The honest baseline of a learned schedule: in one report, each recipe with a learned schedule is compared with the
best constant strength of the same method, task, steps and settings in the same sweep, inside the same correction
family, and report.md / report.html say so."""

import csv

import numpy as np
import torch
import yaml

from gdr.report import BEST_CONSTANT, Report, comparisons, learned_verdicts, render_html, render_markdown
from gdr.stats import adjust_p

LEARNED = "latent_pull learned:bwe 2st"
CONSTANTS = {"latent_pull s=0.5 2st": (0.30, 0.10), "latent_pull s=1 2st": (0.10, 0.30)}  # (lsd, logmel_l1) offsets
# Better on both metrics than any constant above, but no constant strength of the learned recipe's setting:
DISTRACTORS = {"latent_pull s=1 cosine 2st": -0.5, "latent_pull s=1 4st": -0.5, "dps s=1 2st": -0.5,
               "latent_pull s=1 2st w=3.0": -0.5}


def _rows(clips=10, seeds=2, learned_gain=0.2):
    """lsd and logmel_l1 rows (lower is better): the best constant is s=1 on lsd and s=0.5 on logmel_l1; the
    learned schedule beats both by `learned_gain`."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(clips):
        level = 3.0 + rng.normal()
        rows.append({"clip": f"c{c}", "task": "lowpass", "method": "vae_roundtrip", "kind": "baseline", "seed": "",
                     "guidance": "vae_roundtrip", "lsd": level + 0.5, "logmel_l1": level + 0.5})
        methods = {LEARNED: (0.1 - learned_gain, 0.1 - learned_gain), **CONSTANTS,
                   **{m: (d, d) for m, d in DISTRACTORS.items()}}
        for method, (d_lsd, d_mel) in methods.items():
            for s in range(seeds):
                rows.append({"clip": f"c{c}", "task": "lowpass", "method": method, "kind": "method", "seed": s,
                             "guidance": method.split()[0], "lsd": level + d_lsd + rng.normal(0, 0.02),
                             "logmel_l1": level + d_mel + rng.normal(0, 0.02)})
    return rows


def _mean(rows, method, metric):
    return np.mean([r[metric] for r in rows if r["method"] == method])


def test_a_learned_schedule_is_compared_with_the_best_constant_strength_of_its_own_setting():
    rows = _rows()
    comps = comparisons(rows, n_boot=200, confidence=0.95, correction="holm")
    learned = [c for c in comps if c.role == BEST_CONSTANT]
    assert {(c.method, c.metric) for c in learned} == {(LEARNED, "lsd"), (LEARNED, "logmel_l1")}
    for c in learned:
        # The best by mean among exactly the constant strengths of the same method, steps and settings (numpy).
        best = min(CONSTANTS, key=lambda m: _mean(rows, m, c.metric))
        assert c.reference == best
        # Paired per clip, every seed of both sides counted (balanced: the difference of the overall means).
        assert abs(c.mean - (_mean(rows, best, c.metric) - _mean(rows, LEARNED, c.metric))) < 1e-9
        assert c.significant and c.verdict().startswith(f"{LEARNED} beats {best} [best constant strength] on ")
    assert {c.reference for c in learned} == set(CONSTANTS)  # s=1 on lsd, s=0.5 on logmel_l1
    # Only the learned recipe gets one; the other references stay as they were.
    assert all(c.method == LEARNED for c in learned)
    assert not any(c.role for c in comps if c.reference in DISTRACTORS)
    # One family: the learned comparisons are Holm-adjusted together with every other comparison of the report.
    expected = adjust_p(np.array([c.p for c in comps]), "holm")
    assert [c.p_adjusted for c in comps] == list(expected)
    without = comparisons([r for r in rows if r["method"] != LEARNED], n_boot=200, confidence=0.95)
    assert len(comps) == len(without) + 2 * 2  # 2 metrics x (learned vs vae_roundtrip, the best baseline here; vs constant)


def test_no_learned_schedule_no_constant_comparison_and_a_lone_learned_recipe_has_none():
    rows = [r for r in _rows() if r["method"] != LEARNED]
    assert not any(c.role for c in comparisons(rows, n_boot=100, confidence=0.95))
    alone = [r for r in _rows() if r["method"] not in CONSTANTS]
    assert not any(c.role for c in comparisons(alone, n_boot=100, confidence=0.95))


def test_report_md_and_html_show_the_comparison_with_its_label_and_say_it_is_conservative():
    comps = comparisons(_rows(learned_gain=0.0), n_boot=200, confidence=0.95, correction="holm")
    primaries = {"lowpass": "lsd"}
    report = Report(comparisons=comps, correction="holm", learned=learned_verdicts(comps, primaries))
    md, html = render_markdown(report), render_html(report)
    for text in (md, html):
        assert "Learned schedules against the best constant strength" in text
        assert "favours the constant" in text and "conservative for the learned schedule" in text
        assert "latent_pull s=1 2st [best constant strength]" in text
    line = next(v for v in report.learned if v.task == "lowpass").lines
    assert len(line) == 1 and line[0].startswith(f"no significant difference between {LEARNED} and latent_pull s=1 "
                                                 "2st [best constant strength] on lsd")
    assert f"| lowpass | logmel_l1 | {LEARNED} | latent_pull s=0.5 2st [best constant strength] |" in md
    assert "Learned schedules" not in render_markdown(Report(comparisons=[c for c in comps if not c.role]))


def test_a_real_tiny_sweep_reports_learned_against_the_best_constant(tmp_path, tiny_dir, capsys):
    import soundfile as sf

    from gdr.schedules import save_schedule
    from test_evaluate_script import run_in_process

    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(16000) / 16000
    sf.write(str(data / "tone.wav"), (0.3 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(6 * t))).astype(np.float32),
             16000)
    schedule = save_schedule(tmp_path / "bwe.safetensors", torch.tensor([0.8, 1.2]), method="latent_pull", steps=2)
    cfg = {"model": {"pretrained": "gdr-tiny", "device": "cpu"}, "data": {"root": str(data)},
           "chunk": {"seconds": 1.28, "overlap_seconds": 0.16, "batch_size": 1}, "sampler": {"steps": 2, "seeds": 1},
           "sweep": {"grid": {"degradation": [{"name": "lowpass", "params": {"cutoff_hz": 4000}}],
                              "guidance": [{"name": "latent_pull", "scale": 0.5}, {"name": "latent_pull", "scale": 1.0},
                                           {"name": "latent_pull", "schedule_path": str(schedule)}]}},
           "report": {"bootstrap": 100, "embed_audio": False, "fad": False}, "logger": False, "progress": False,
           "output_dir": str(tmp_path / "out")}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_in_process(["--config", str(tmp_path / "sweep.yaml")], capsys)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    methods = {r["method"] for r in rows}
    assert {"latent_pull s=0.5 2st", "latent_pull s=1 2st", "latent_pull learned:bwe 2st"} <= methods
    lsd = {m: np.mean([float(r["lsd"]) for r in rows if r["method"] == m])
           for m in ("latent_pull s=0.5 2st", "latent_pull s=1 2st")}
    best = min(lsd, key=lsd.get)
    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "## Learned schedules against the best constant strength" in md
    assert f"latent_pull learned:bwe 2st and {best} [best constant strength] on lsd" in md  # 1 clip: no verdict
    assert f"{best} [best constant strength]" in html
