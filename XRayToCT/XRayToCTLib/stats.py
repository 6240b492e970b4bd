"""Statistics of an evaluation, as seed 001 reports them, with every test named.

* :func:`describe`: n, mean with a 95 % confidence interval (Student-t by default, or a
  bootstrap: ``scipy.stats.bootstrap``, BCa, 10 000 resamples, fixed seed), standard deviation,
  median with the interquartile range (numpy's linear percentiles). Values that are not
  finite (``inf`` PSNR of identical volumes) are left out of every figure and counted in
  ``n_excluded`` with a note.
* :func:`rank_sum`: two-sided Wilcoxon rank-sum test between two models (independent
  samples; ``scipy.stats.ranksums``), as seed 001.
* :func:`signed_rank`: two-sided Wilcoxon signed-rank test of paired cases
  (``scipy.stats.wilcoxon``, zero differences dropped: "wilcox"); the paired difference's
  mean with its t-interval comes with it.
* :func:`summarize`: all of it for the rows of an evaluation (``case, model, metric, window,
  region, value``): per group statistics, pairwise model comparisons, and each model's gain
  over each baseline.

Every p-value is returned beside the name of the test that gave it.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["LOWER_IS_BETTER", "higher_is_better", "describe", "rank_sum", "signed_rank",
           "paired_difference", "summarize"]

LOWER_IS_BETTER = frozenset({"mse", "mae", "mae_hu", "lpips", "fid"})
"""Metrics for which a smaller value is better (errors and distances)."""

RANK_SUM_TEST = "Wilcoxon rank-sum (scipy.stats.ranksums, two-sided)"
SIGNED_RANK_TEST = "Wilcoxon signed-rank (scipy.stats.wilcoxon, two-sided, zero differences dropped)"


def higher_is_better(metric: str) -> bool:
    """True for similarity metrics (SSIM, PSNR, cosine, FSIM), False for errors/distances."""
    return metric not in LOWER_IS_BETTER


def _finite(values: Iterable[float]) -> tuple[np.ndarray, int]:
    a = np.asarray(list(values), dtype=np.float64).reshape(-1)
    ok = np.isfinite(a)
    return a[ok], int((~ok).sum())


def _t_interval(a: np.ndarray, confidence: float) -> tuple[float, float]:
    if a.size < 2:
        return (math.nan, math.nan)
    sem = float(a.std(ddof=1) / math.sqrt(a.size))
    if sem == 0:
        return (float(a.mean()), float(a.mean()))
    half = float(sps.t.ppf(0.5 + confidence / 2, a.size - 1)) * sem
    return (float(a.mean() - half), float(a.mean() + half))


def describe(values: Iterable[float], *, confidence: float = 0.95, ci: str = "t",
             n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Descriptive statistics of one sample.

    Args:
        values: the per-case values (non-finite ones are excluded and counted).
        confidence: level of the interval of the mean (0.95).
        ci: ``"t"`` (mean +- t quantile x standard error) or ``"bootstrap"`` (BCa).
        n_resamples, seed: bootstrap settings (deterministic by seed).

    Returns ``n, n_excluded, mean, sd, ci_low, ci_high, ci_method, median, q1, q3, iqr`` and
    ``note`` (why values were excluded, or ``""``); NaN where undefined (n < 2 for the CI).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if ci not in ("t", "bootstrap"):
        raise ValueError(f"ci must be 't' or 'bootstrap', got {ci!r}")
    a, excluded = _finite(values)
    out: dict[str, Any] = {"n": int(a.size), "n_excluded": excluded}
    if a.size == 0:
        out.update(mean=math.nan, sd=math.nan, ci_low=math.nan, ci_high=math.nan,
                   median=math.nan, q1=math.nan, q3=math.nan, iqr=math.nan)
    else:
        if ci == "t" or a.size < 3 or np.ptp(a) == 0:
            lo, hi = _t_interval(a, confidence)
            method = f"t ({confidence:.0%})"
        else:
            res = sps.bootstrap((a,), np.mean, confidence_level=confidence, method="BCa",
                                n_resamples=n_resamples, rng=np.random.default_rng(seed))
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            method = f"bootstrap BCa ({confidence:.0%}, {n_resamples} resamples, seed {seed})"
        q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
        out.update(mean=float(a.mean()), sd=float(a.std(ddof=1)) if a.size > 1 else math.nan,
                   ci_low=lo, ci_high=hi, ci_method=method, median=med, q1=q1, q3=q3,
                   iqr=q3 - q1)
    out.setdefault("ci_method", f"t ({confidence:.0%})")
    out["note"] = (f"{excluded} non-finite value(s) (inf PSNR: identical volumes) excluded "
                   "from all figures" if excluded else "")
    return out


def rank_sum(a: Iterable[float], b: Iterable[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon rank-sum test (independent samples): ``{test, statistic, p, n_a,
    n_b}``; ``p`` is NaN when a sample is empty (non-finite values are excluded)."""
    x, _ = _finite(a)
    y, _ = _finite(b)
    if x.size == 0 or y.size == 0:
        return {"test": RANK_SUM_TEST, "statistic": math.nan, "p": math.nan,
                "n_a": int(x.size), "n_b": int(y.size), "note": "an empty sample"}
    r = sps.ranksums(x, y)
    return {"test": RANK_SUM_TEST, "statistic": float(r.statistic), "p": float(r.pvalue),
            "n_a": int(x.size), "n_b": int(y.size), "note": ""}


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def signed_rank(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired values (same cases, same order):
    ``{test, statistic, p, n}`` (pairs with a non-finite value are dropped; ``p`` is 1 when
    every difference is zero and NaN with no pair)."""
    x, y = _paired(a, b)
    d = x - y
    if d.size == 0:
        return {"test": SIGNED_RANK_TEST, "statistic": math.nan, "p": math.nan, "n": 0,
                "note": "no finite pair"}
    if np.all(d == 0):
        return {"test": SIGNED_RANK_TEST, "statistic": 0.0, "p": 1.0, "n": int(d.size),
                "note": "all differences are zero"}
    r = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return {"test": SIGNED_RANK_TEST, "statistic": float(r.statistic), "p": float(r.pvalue),
            "n": int(d.size), "note": ""}


def paired_difference(a: Sequence[float], b: Sequence[float], *,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``a - b`` over paired cases with its t-interval, and the signed-rank test."""
    x, y = _paired(a, b)
    d = x - y
    lo, hi = _t_interval(d, confidence) if d.size else (math.nan, math.nan)
    return {"n": int(d.size), "mean_difference": float(d.mean()) if d.size else math.nan,
            "ci_low": lo, "ci_high": hi, "ci_method": f"t ({confidence:.0%})",
            "signed_rank": signed_rank(x, y)}


def _group(rows: Iterable[Mapping[str, Any]]) -> dict[tuple, dict[str, dict[str, float]]]:
    """``{(metric, window, region): {model: {case: value}}}``."""
    g: dict[tuple, dict[str, dict[str, float]]] = {}
    for r in rows:
        key = (str(r["metric"]), str(r["window"]), str(r["region"]))
        g.setdefault(key, {}).setdefault(str(r["model"]), {})[str(r["case"])] = float(r["value"])
    return g


def summarize(rows: Iterable[Mapping[str, Any]], *, baselines: Sequence[str] = (),
              confidence: float = 0.95, ci: str = "t") -> dict[str, Any]:
    """Statistics of evaluation rows (dicts with ``case, model, metric, window, region,
    value``).

    Returns ``{"groups": [...]}``, one entry per (metric, window, region) with
    ``per_model`` (:func:`describe` of each model), ``comparisons`` (each pair of models:
    :func:`rank_sum` on all their cases and :func:`signed_rank` on the cases they share),
    and ``gains`` (each non-baseline model minus each of ``baselines``, paired by case:
    :func:`paired_difference`; positive = the model is better for similarity metrics, for
    errors the sign is flipped so that positive still means better: ``gain =
    baseline - model``).
    """
    groups = []
    for (metric, window, region), models in sorted(_group(rows).items()):
        per_model = {m: describe(v.values(), confidence=confidence, ci=ci)
                     for m, v in models.items()}
        comparisons = []
        for ma, mb in itertools.combinations(sorted(models), 2):
            common = sorted(set(models[ma]) & set(models[mb]))
            comparisons.append({
                "a": ma, "b": mb,
                "rank_sum": rank_sum(models[ma].values(), models[mb].values()),
                "signed_rank": signed_rank([models[ma][c] for c in common],
                                           [models[mb][c] for c in common])})
        gains = []
        sign = 1.0 if higher_is_better(metric) else -1.0
        for m in sorted(models):
            if m in baselines:
                continue
            for b in baselines:
                if b not in models:
                    continue
                common = sorted(set(models[m]) & set(models[b]))
                d = paired_difference([sign * models[m][c] for c in common],
                                      [sign * models[b][c] for c in common],
                                      confidence=confidence)
                gains.append({"model": m, "baseline": b, **d,
                              "definition": "model - baseline" if sign > 0 else
                              "baseline - model (lower is better)"})
        groups.append({"metric": metric, "window": window, "region": region,
                       "higher_is_better": higher_is_better(metric), "per_model": per_model,
                       "comparisons": comparisons, "gains": gains})
    return {"confidence": confidence, "ci": ci, "tests": [RANK_SUM_TEST, SIGNED_RANK_TEST],
            "groups": groups}
