"""Paired bootstrap confidence intervals and plain-language verdicts.

Unit of analysis: a clip. A method's rows (clip x seed) are paired with the reference's row for the
same clip (baselines are deterministic), the per-clip mean improvement is taken over seeds, and clips
are resampled with replacement (a cluster bootstrap, since seeds of one clip are not independent).
Improvement is signed so that positive means "the method is better" for that metric. Waveform metrics
(SI-SDR, SNR) of rows that are not phase-coherent are blank and never enter a statistic (`metric_value`).

Verdicts over many comparisons. A report compares many methods x metrics x tasks x references; at a 5 %
level each, 20 methods identical to the baseline would produce a "winner" most of the time. Each comparison
therefore gets a p-value, and the report's p-values are adjusted together (`correct`): Holm's step-down
(family-wise error rate) or Benjamini-Hochberg's step-up (false discovery rate). The p-value is that of a
two-sided paired t-test on the per-clip mean improvements (``scipy.stats.ttest_1samp``), not a bootstrap
p-value: one from B resamples cannot go below 1 / (B + 1), so a Holm threshold of 0.05 / m would be out
of reach for a few hundred comparisons. A comparison is significant when its adjusted p-value is below
``alpha = 1 - confidence``.

Intervals that agree with the verdicts. The interval shown next to a verdict is the paired t-interval (the
test's own dual, so it excludes zero exactly when the p-value it stands beside is below its level) at the level
the correction implies (`Comparison.adjusted_interval`): Holm: ``1 - alpha p / p_Holm`` per comparison (it
excludes zero exactly when the Holm-adjusted p < alpha); Benjamini-Hochberg: Benjamini & Yekutieli's (2005)
false-coverage-rate level ``1 - R alpha / m`` for every comparison (``R`` discoveries of ``m``), which excludes
zero exactly for the BH discoveries; none: ``1 - alpha``. So "no significant difference" never sits beside an
interval that excludes zero. Each comparison's unadjusted bootstrap interval (``low``, ``high``) is kept for the
table of all comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from gdr.metric_names import HIGHER_IS_BETTER, PHASE_METRICS


@dataclass
class Comparison:
    task: str
    metric: str
    method: str
    reference: str
    mean: float  # mean improvement (positive = method better)
    low: float
    high: float
    clips: int
    seeds: int
    tolerance: float = 0.0  # differences within +-tolerance are numerical noise, not effects
    p: float = 1.0  # two-sided paired t-test over clips, unadjusted
    p_adjusted: float | None = None  # after `correct` (None: not adjusted yet, `p` is used)
    correction: str = "none"  # the key of `CORRECTIONS` that produced `p_adjusted`
    alpha: float = 0.05  # 1 - confidence
    se: float = 0.0  # standard error of the mean per-clip improvement
    level: float | None = None  # confidence level of the adjusted interval (`correct` sets it; None: 1 - alpha)
    role: str = ""  # why this reference, where it is no fixed one (e.g. "best constant strength"); shown beside it

    @property
    def reference_label(self) -> str:
        """The reference as the report names it: its label, and its role in brackets if it has one."""
        return f"{self.reference} [{self.role}]" if self.role else self.reference

    @property
    def p_used(self) -> float:
        return self.p if self.p_adjusted is None else self.p_adjusted

    @property
    def interval_level(self) -> float:
        return 1.0 - self.alpha if self.level is None else self.level

    @property
    def adjusted_interval(self) -> tuple[float, float]:
        """The paired t-interval at `interval_level` (the dual of the t-test: it excludes zero exactly when
        the p-value at that level is below it). Fewer than two clips: unbounded."""
        if self.clips < 2:
            return -np.inf, np.inf
        half = scipy_stats.t.ppf(0.5 + self.interval_level / 2, self.clips - 1) * self.se
        return self.mean - half, self.mean + half

    @property
    def significant(self) -> bool:
        low, high = self.adjusted_interval
        return self.p_used < self.alpha and (low > self.tolerance or high < -self.tolerance)

    def verdict(self) -> str:
        low, high = self.adjusted_interval
        level = f"{100 * self.interval_level:.3g} % interval"
        if self.correction != "none":
            level = f"{self.correction}-adjusted {level}"
        over = f"over {self.clips} clips x {self.seeds} seeds ({level})"
        p = f"{'' if self.correction == 'none' else self.correction + '-adjusted '}p = {self.p_used:.2g}"
        if self.significant:
            winner, loser = (self.method, self.reference_label) if self.mean > 0 else (self.reference_label, self.method)
            low, high = sorted((abs(low), abs(high)))
            return (f"{winner} beats {loser} on {self.metric} by {abs(self.mean):.3g} [{low:.3g}, {high:.3g}] "
                    f"{over}, {p}")
        return (f"no significant difference between {self.method} and {self.reference_label} on {self.metric} "
                f"(improvement {self.mean:.3g} [{low:.3g}, {high:.3g}] {over}, {p})")


# report.correction -> how the report names it.
CORRECTIONS = {"holm": "Holm step-down (family-wise error rate)",
               "bh": "Benjamini-Hochberg step-up (false discovery rate)",
               "none": "none (each comparison at its own level; expect false winners among many comparisons)"}


def adjust_p(p: np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values ``(m,)`` for raw p-values `p` ``(m,)``, in the input order.

    ``holm``: sort ascending, ``p_(i) (m - i + 1)`` for rank ``i = 1..m``, running maximum, capped at 1 (Holm 1979;
    rejecting adjusted p < alpha controls the family-wise error rate under any dependence).
    ``bh``: sort ascending, ``p_(i) m / i``, running minimum from the largest down, capped at 1 (Benjamini &
    Hochberg 1995; controls the false discovery rate for independent or positively dependent tests; equals
    ``scipy.stats.false_discovery_control(p, method="bh")``). ``none``: `p` unchanged.
    """
    p = np.asarray(p, dtype=np.float64)
    if method not in CORRECTIONS:
        from gdr.errors import ConfigError

        raise ConfigError(f"unknown multiple-comparison correction {method!r}; known: {', '.join(CORRECTIONS)}")
    if method == "none" or p.size == 0:
        return p.copy()
    m = p.size
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    else:
        adjusted = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def correct(comps: list[Comparison], method: str) -> list[Comparison]:
    """Adjust the p-values of `comps` together (one family: every comparison of a report), in place, and set
    the level of each one's interval to match (module docstring); returns `comps`. Verdicts
    (`Comparison.significant`) then use the adjusted p-values and intervals."""
    adjusted = adjust_p(np.array([c.p for c in comps]), method)
    discoveries = sum(1 for c, p in zip(comps, adjusted) if p < c.alpha)
    for c, p in zip(comps, adjusted):
        c.p_adjusted, c.correction = float(p), method
        if method == "holm" and p > 0:
            c.level = 1.0 - c.alpha * c.p / p
        elif method == "bh":
            c.level = 1.0 - max(discoveries, 1) * c.alpha / len(comps)
        else:
            c.level = 1.0 - c.alpha
    return comps


def paired_p_value(per_clip: np.ndarray) -> float:
    """Two-sided p-value of a one-sample t-test of the per-clip improvements `per_clip` ``(C,)`` against 0
    (``scipy.stats.ttest_1samp``). Fewer than two clips: 1 (nothing can be concluded). No spread: 0 if the
    mean differs from 0, else 1 (scipy returns NaN there; the tolerance in `Comparison` handles float noise)."""
    per_clip = np.asarray(per_clip, dtype=np.float64)
    if per_clip.size < 2:
        return 1.0
    if np.ptp(per_clip) == 0:
        return 0.0 if per_clip[0] != 0 else 1.0
    p = float(scipy_stats.ttest_1samp(per_clip, 0.0).pvalue)
    return p if np.isfinite(p) else 1.0


def bootstrap_ci(per_clip: np.ndarray, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of `per_clip` ``(C,)`` and its percentile bootstrap interval (clips resampled with replacement)."""
    per_clip = np.asarray(per_clip, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_clip), size=(n_boot, len(per_clip)))
    means = per_clip[draws].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(per_clip.mean()), float(low), float(high)


def metric_value(row: dict, metric: str) -> float | None:
    """`row`'s `metric` as a number, or None where there is none to use: a blank cell, or a waveform metric
    (`PHASE_METRICS`) of a row whose ``phase_coherent`` flag is not true (metrics.csv leaves those blank;
    records written before it did still hold numbers, which must not be shown or compared either)."""
    value = row.get(metric, "")
    if value is None or value == "":
        return None
    if metric in PHASE_METRICS and str(row.get("phase_coherent", True)) != "True":
        return None
    return float(value)


def _values(rows: list[dict], task: str, method: str, metric: str) -> list[tuple[dict, float]]:
    """(row, value) for `method`'s rows on `task` that have a usable `metric` (see `metric_value`)."""
    out = []
    for r in rows:
        if r["task"] == task and r["method"] == method and (v := metric_value(r, metric)) is not None:
            out.append((r, v))
    return out


def paired_improvement(rows: list[dict], task: str, metric: str, method: str, reference: str) -> dict[str, list]:
    """Per clip: the improvements of `method` (one per seed) over `reference` on `metric`. The reference's value
    of a clip is the mean over its rows: one for a deterministic baseline, one per seed for a seeded recipe (the
    best constant strength of a learned schedule), so no seed of the reference is silently dropped."""
    by_clip: dict[str, list] = {}
    for r, v in _values(rows, task, reference, metric):
        by_clip.setdefault(r["clip"], []).append(v)
    ref = {clip: float(np.mean(v)) for clip, v in by_clip.items()}
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    out: dict[str, list] = {}
    for r, v in _values(rows, task, method, metric):
        if r["clip"] in ref:
            out.setdefault(r["clip"], []).append(sign * (v - ref[r["clip"]]))
    return out


def compare(rows: list[dict], task: str, metric: str, method: str, reference: str, *, n_boot: int = 2000,
            confidence: float = 0.95) -> Comparison | None:
    per_clip = paired_improvement(rows, task, metric, method, reference)
    if not per_clip:
        return None
    means = np.array([np.mean(v) for v in per_clip.values()])
    mean, low, high = bootstrap_ci(means, n_boot, confidence)
    seeds = max(len(v) for v in per_clip.values())
    # Identical pipelines (e.g. latent_pull at s = 1 vs the VAE round trip) differ by float rounding only.
    scale = np.mean([abs(v) for _, v in _values(rows, task, reference, metric)])
    se = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else 0.0
    return Comparison(task, metric, method, reference, mean, low, high, len(per_clip), seeds,
                      tolerance=1e-5 * (1.0 + scale), p=paired_p_value(means), alpha=round(1.0 - confidence, 12),
                      se=se)


def best_baseline(rows: list[dict], task: str, metric: str, candidates: list[str]) -> str | None:
    """The candidate with the best mean `metric` on `task` (rows that are not phase-coherent are skipped
    for waveform metrics, `metric_value`); also picks the best constant strength for a learned schedule
    (`gdr.report.comparisons`)."""
    scores = {}
    for name in candidates:
        values = [v for _, v in _values(rows, task, name, metric)]
        if values:
            scores[name] = np.mean(values)
    if not scores:
        return None
    pick = max if HIGHER_IS_BETTER[metric] else min
    return pick(scores, key=scores.get)
