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
    assert re.search(r"over 12 clips x 3 seeds \(95 % interval\), p = \S+$", c.verdict())
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


# ------------------------------------------------------------------------------ many comparisons
def test_holm_and_bh_equal_a_hand_worked_example():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03,
    0.06, 0.04, running maximum 0.02, 0.03, 0.06, 0.06. BH: times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04,
    running minimum from the top: unchanged."""
    from gdr.stats import adjust_p

    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjust_p(p, "holm"), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(adjust_p(p, "bh"), [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    np.testing.assert_array_equal(adjust_p(p, "none"), p)
    assert adjust_p(np.array([0.6, 0.9]), "holm").max() == 1.0  # capped at 1


def test_bh_equals_scipy_and_holm_dominates_it():
    import scipy.stats

    from gdr.errors import ConfigError
    from gdr.stats import adjust_p

    rng = np.random.default_rng(3)
    for m in (1, 7, 50, 400):
        p = np.concatenate([rng.uniform(size=m - m // 5), rng.uniform(0, 1e-3, size=m // 5)])
        p[: m // 10] = p[0]  # ties
        np.testing.assert_allclose(adjust_p(p, "bh"), scipy.stats.false_discovery_control(p, method="bh"),
                                   rtol=1e-12)
        holm = adjust_p(p, "holm")
        assert (holm >= adjust_p(p, "bh") - 1e-15).all() and (holm >= p).all()
        assert (np.diff(holm[np.argsort(p)]) >= 0).all()  # order-preserving
    with pytest.raises(ConfigError, match="unknown multiple-comparison correction 'bonferoni'"):
        adjust_p(np.array([0.1]), "bonferoni")


def test_verdicts_use_the_adjusted_p_value():
    from gdr.stats import correct, paired_p_value

    c = compare(_rows(0.02, noise=0.05, clips=12, seed=4), "t", "lsd", "dps", "vae_roundtrip")
    import scipy.stats

    per_clip = [np.mean(v) for v in __import__("gdr.stats").stats.paired_improvement(
        _rows(0.02, noise=0.05, clips=12, seed=4), "t", "lsd", "dps", "vae_roundtrip").values()]
    assert c.p == pytest.approx(scipy.stats.ttest_1samp(per_clip, 0.0).pvalue, rel=1e-12)
    assert c.p < 0.05 and c.significant  # on its own: a win
    others = [compare(_rows(0.0, noise=0.05, seed=s), "t", "lsd", "dps", "vae_roundtrip") for s in range(9)]
    correct([c, *others], "holm")  # one of ten: the threshold is now 0.005
    assert c.p_adjusted == pytest.approx(min(1.0, 10 * c.p)) or c.p_adjusted > c.p
    # Holm by hand: c's p is the third smallest of the ten, so it is multiplied by 10 - 2 = 8, and the running
    # maximum over the two smaller ones (10 p_(1), 9 p_(2)) is below that.
    family = sorted(x.p for x in [c, *others])
    assert family.index(c.p) == 2 and max(10 * family[0], 9 * family[1]) < 8 * c.p
    assert c.p_adjusted == pytest.approx(8 * c.p, rel=1e-12)
    assert c.p_adjusted >= 0.05  # so the win on its own is no longer one
    if c.p_adjusted >= 0.05:
        assert not c.significant and c.verdict().startswith("no significant difference")
        assert "holm-adjusted p = " in c.verdict()
    assert paired_p_value(np.array([0.5])) == 1.0 and paired_p_value(np.zeros(5)) == 1.0


def _identical_methods(rep: int, methods: int = 20, clips: int = 12, effect: float = 0.0) -> list[dict]:
    """`methods` methods and the VAE round trip, identical up to noise: per clip, every output's metric is the
    clip's level plus its own noise (the first method better by `effect`). Two correlated metrics."""
    rng = np.random.default_rng(1000 + rep)
    rows = []
    for c in range(clips):
        level = 2.0 + rng.normal()
        for m, name in enumerate(["vae_roundtrip", *(f"m{k} s=1 10st" for k in range(methods))]):
            lsd = level + rng.normal(0, 0.1) - (effect if m == 1 else 0.0)
            rows.append({"clip": f"c{c}", "task": "t", "method": name, "kind": "method" if m else "baseline",
                         "seed": 0 if m else "", "lsd": lsd, "logmel_l1": 0.5 * lsd + rng.normal(0, 0.05)})
    return rows


def test_twenty_identical_methods_give_no_winner_in_95_percent_of_repetitions():
    """The report's comparisons (20 methods x 2 metrics against the VAE round trip = 40) under the null: with Holm
    or BH across the report no method is declared better or worse in >= 95 % of 200 seeded repetitions; without
    a correction a false winner is the rule, which is what the correction is for."""
    from gdr.report import comparisons
    from gdr.stats import adjust_p, correct

    reps = 200
    no_winner = {"holm": 0, "bh": 0, "none": 0}
    for rep in range(reps):
        comps = comparisons(_identical_methods(rep), n_boot=200, confidence=0.95)
        assert len(comps) == 40
        for method in no_winner:
            no_winner[method] += not any(c.significant for c in correct(comps, method))
    assert no_winner["holm"] / reps >= 0.95 and no_winner["bh"] / reps >= 0.95, no_winner
    assert no_winner["none"] / reps < 0.5, no_winner
    # The report's own path applies the configured correction to the whole list.
    comps = comparisons(_identical_methods(0), n_boot=200, confidence=0.95, correction="bh")
    expected = adjust_p(np.array([c.p for c in comps]), "bh")
    assert [c.correction for c in comps] == ["bh"] * 40 and [c.p_adjusted for c in comps] == list(expected)


def test_a_real_improvement_still_wins_among_twenty():
    from gdr.report import comparisons

    found = 0
    for rep in range(20):
        comps = comparisons(_identical_methods(rep, effect=0.3), n_boot=200, confidence=0.95, correction="holm")
        winners = {(c.method, c.metric) for c in comps if c.significant}
        found += ("m0 s=1 10st", "lsd") in winners and {m for m, _ in winners} == {"m0 s=1 10st"}
    assert found >= 18


def _family(seed: int, m: int = 24):
    """`m` comparisons of dps vs the VAE round trip with effects from none to clear, 8 clips each."""
    rng = np.random.default_rng(seed)
    effects = rng.choice([0.0, 0.0, 0.01, 0.02, 0.05, 0.2], size=m)
    return [compare(_rows(e, clips=8, seeds=1, noise=0.05, seed=int(rng.integers(1 << 30))), "t", "lsd", "dps",
                    "vae_roundtrip", n_boot=200) for e in effects]


@pytest.mark.parametrize("method", ["holm", "bh", "none"])
def test_the_interval_beside_a_verdict_agrees_with_it(method):
    """After any correction, a verdict is "significant" exactly when its interval excludes zero: "no
    significant difference" never sits beside an interval that excludes zero, nor a win beside one that does not."""
    from gdr.stats import correct

    disagreements, seen = [], set()
    for seed in range(20):
        for c in correct(_family(seed), method):
            low, high = c.adjusted_interval
            excludes = low > 0 or high < 0
            seen.add(c.significant)
            if c.significant != excludes:
                disagreements.append((c.p, c.p_used, low, high))
            bracket = re.search(r"\[(\S+), (\S+)\]", c.verdict()).groups()
            shown = sorted(map(float, bracket))
            want = sorted((abs(low), abs(high))) if c.significant else [low, high]
            assert shown == pytest.approx(want, rel=6e-3, abs=1e-12)  # shown with 3 significant digits
    assert disagreements == [] and seen == {True, False}  # both kinds of verdict were tested


def test_the_adjusted_intervals_are_the_t_intervals_at_the_corrected_levels():
    """Against scipy's own paired t-interval (``TtestResult.confidence_interval``) at the level each correction
    implies: Holm 1 - alpha p / p_Holm, BH (Benjamini-Yekutieli) 1 - R alpha / m, none 1 - alpha."""
    from scipy import stats as scipy_stats

    from gdr.stats import adjust_p, correct, paired_improvement

    rows_list = [_rows(e, clips=8, seeds=1, noise=0.05, seed=k) for k, e in enumerate([0.0, 0.02, 0.05, 0.3])]
    for method in ("holm", "bh", "none"):
        comps = correct([compare(r, "t", "lsd", "dps", "vae_roundtrip", n_boot=200) for r in rows_list], method)
        p = np.array([c.p for c in comps])
        adjusted = adjust_p(p, method)
        discoveries = int((adjusted < 0.05).sum())
        for rows, c, p_raw, p_adj in zip(rows_list, comps, p, adjusted):
            level = {"holm": 1 - 0.05 * p_raw / p_adj, "bh": 1 - max(discoveries, 1) * 0.05 / len(comps),
                     "none": 0.95}[method]
            per_clip = [np.mean(v) for v in paired_improvement(rows, "t", "lsd", "dps", "vae_roundtrip").values()]
            want = scipy_stats.ttest_1samp(per_clip, 0.0).confidence_interval(level)
            assert c.adjusted_interval == pytest.approx((want.low, want.high), rel=1e-9, abs=1e-12)


def test_the_identity_task_is_not_compared_with_its_degraded_input():
    """On identity, "degraded" is the clean input itself: the best non-diffusion reference is another baseline."""
    from gdr.report import comparisons

    rows = []
    for c in range(6):
        rows += [{"clip": f"c{c}", "task": "identity", "method": "degraded", "kind": "baseline", "lsd": 0.0, "seed": ""},
                 {"clip": f"c{c}", "task": "identity", "method": "vae_roundtrip", "kind": "baseline", "lsd": 2.0 + c,
                  "seed": ""},
                 {"clip": f"c{c}", "task": "identity", "method": "dps", "kind": "method", "lsd": 1.5 + c, "seed": 0}]
    kept = comparisons(rows, n_boot=100, confidence=0.95, unchanged_tasks=frozenset({"identity"}))
    assert {c.reference for c in kept if c.metric == "lsd"} == {"vae_roundtrip"}
    naive = comparisons(rows, n_boot=100, confidence=0.95)
    assert "degraded" in {c.reference for c in naive if c.metric == "lsd"}  # what the option prevents
