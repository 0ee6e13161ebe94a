"""Paired bootstrap intervals on synthetic data with a known difference, and the verdict wording."""

import re

import numpy as np
import pytest

from gdr.stats import best_baseline, bootstrap_ci, compare


def test_bootstrap_ci_contains_a_known_difference_and_excludes_zero():
    rng = np.random.default_rng(0)
    per_clip = rng.normal(0.3, 0.1, size=40)
    mean, low, high = bootstrap_ci(per_clip, n_boot=4000)
    assert low < 0.3 < high and low > 0
    se = per_clip.std(ddof=1) / np.sqrt(40)  # the percentile interval is close to mean +- 1.96 se
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_coverage_is_close_to_nominal_when_there_is_no_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for rep in range(300):
        _, low, high = bootstrap_ci(rng.normal(0.0, 1.0, size=30), n_boot=1000, seed=rep)
        covered += low <= 0.0 <= high
    assert 0.88 <= covered / 300 <= 0.99


def _rows(effect, clips=12, seeds=3, noise=0.05, seed=0):
    """LSD rows (lower is better): the method is better than the baseline by `effect` on average."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(clips):
        base = 5 + rng.normal()
        rows.append({"clip": f"c{c}", "task": "t", "method": "vae_roundtrip", "lsd": base, "seed": ""})
        for s in range(seeds):
            rows.append({"clip": f"c{c}", "task": "t", "method": "dps", "lsd": base - effect + rng.normal(0, noise),
                         "seed": s})
    return rows


def test_compare_finds_a_known_improvement_and_words_it():
    c = compare(_rows(0.3), "t", "lsd", "dps", "vae_roundtrip")
    assert c.low < 0.3 < c.high and c.significant and (c.clips, c.seeds) == (12, 3)
    assert re.match(r"dps beats vae_roundtrip on lsd by 0\.\d+ \[0\.\d+, 0\.\d+\] over", c.verdict())
    assert c.verdict().endswith("over 12 clips x 3 seeds")
    worse = compare(_rows(-0.3), "t", "lsd", "dps", "vae_roundtrip")
    assert worse.verdict().startswith("vae_roundtrip beats dps on lsd by 0.")


def test_no_difference_and_rounding_noise_are_not_significant():
    assert compare(_rows(0.0, noise=0.2), "t", "lsd", "dps", "vae_roundtrip").verdict().startswith(
        "no significant difference")
    tiny = compare(_rows(1e-7, noise=0.0), "t", "lsd", "dps", "vae_roundtrip")
    assert not tiny.significant


def test_best_baseline_respects_the_metric_direction():
    rows = [{"task": "t", "method": "a", "lsd": 1.0, "snr": 5.0}, {"task": "t", "method": "b", "lsd": 2.0, "snr": 9.0}]
    assert best_baseline(rows, "t", "lsd", ["a", "b"]) == "a"
    assert best_baseline(rows, "t", "snr", ["a", "b"]) == "b"


def test_the_bootstrap_unit_is_the_clip_and_seeds_are_averaged_first():
    """Clip A (two seeds: 3 and 1, mean 2) and clip B (one seed: 0): the mean improvement is the mean of the
    clip means, 1, and resampling the two clips gives the interval [0, 2]. Pooling the three seeds as
    independent units would give 4/3."""
    rows = []
    for clip, seeds in (("A", [3.0, 1.0]), ("B", [0.0])):
        rows.append({"task": "t", "method": "ref", "clip": clip, "seed": "", "lsd": "10.0"})
        for k, gain in enumerate(seeds):
            rows.append({"task": "t", "method": "m", "clip": clip, "seed": str(k), "lsd": str(10.0 - gain)})
    c = compare(rows, "t", "lsd", "m", "ref", n_boot=2000)
    assert c.mean == pytest.approx(1.0) and c.clips == 2 and c.seeds == 2
    assert c.low == pytest.approx(0.0) and c.high == pytest.approx(2.0)
