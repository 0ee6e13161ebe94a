"""Paired bootstrap confidence intervals and plain-language verdicts.

Unit of analysis: a clip. A method's rows (clip x seed) are paired with the reference's row for the
same clip (baselines are deterministic), the per-clip mean improvement is taken over seeds, and clips
are resampled with replacement (a cluster bootstrap, since seeds of one clip are not independent).
Improvement is signed so that positive means "the method is better" for that metric. Waveform metrics
(SI-SDR, SNR) of rows that are not phase-coherent are blank and never enter a statistic (`metric_value`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdr.metrics import HIGHER_IS_BETTER, PHASE_METRICS


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

    @property
    def significant(self) -> bool:
        return self.low > self.tolerance or self.high < -self.tolerance

    def verdict(self) -> str:
        over = f"over {self.clips} clips x {self.seeds} seeds"
        if self.significant:
            winner, loser = (self.method, self.reference) if self.mean > 0 else (self.reference, self.method)
            low, high = sorted((abs(self.low), abs(self.high)))
            return f"{winner} beats {loser} on {self.metric} by {abs(self.mean):.3g} [{low:.3g}, {high:.3g}] {over}"
        return (f"no significant difference between {self.method} and {self.reference} on {self.metric} "
                f"(improvement {self.mean:.3g} [{self.low:.3g}, {self.high:.3g}] {over})")


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
    """Per clip: the improvements of `method` (one per seed) over `reference` on `metric`."""
    ref = {r["clip"]: v for r, v in _values(rows, task, reference, metric)}
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
    return Comparison(task, metric, method, reference, mean, low, high, len(per_clip), seeds,
                      tolerance=1e-5 * (1.0 + scale))


def best_baseline(rows: list[dict], task: str, metric: str, candidates: list[str]) -> str | None:
    """The candidate with the best mean `metric` on `task` (rows that are not phase-coherent are skipped
    for waveform metrics, `metric_value`)."""
    scores = {}
    for name in candidates:
        values = [v for _, v in _values(rows, task, name, metric)]
        if values:
            scores[name] = np.mean(values)
    if not scores:
        return None
    pick = max if HIGHER_IS_BETTER[metric] else min
    return pick(scores, key=scores.get)
