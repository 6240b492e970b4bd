"""Tests of XRayToCTLib.stats: the seed-001 statistics, each test named."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from XRayToCTLib import stats as S


def test_describe_t_interval_median_iqr():
    x = np.random.default_rng(0).normal(0.7, 0.05, 25)
    d = S.describe(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert d["n"] == 25 and d["n_excluded"] == 0 and d["note"] == ""
    assert d["mean"] == pytest.approx(x.mean()) and d["sd"] == pytest.approx(x.std(ddof=1))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    assert (d["q1"], d["median"], d["q3"], d["iqr"]) == pytest.approx((q1, med, q3, q3 - q1))
    assert d["ci_method"].startswith("t")


def test_describe_excludes_inf_with_a_note_and_handles_tiny_samples():
    d = S.describe([20.0, 22.0, math.inf, 24.0])
    assert d["n"] == 3 and d["n_excluded"] == 1 and "excluded" in d["note"]
    assert d["mean"] == pytest.approx(22.0) and d["median"] == pytest.approx(22.0)
    one = S.describe([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["ci_low"]) and math.isnan(one["sd"])
    empty = S.describe([math.inf])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    const = S.describe([3.0, 3.0, 3.0])
    assert const["ci_low"] == const["ci_high"] == 3.0


def test_describe_bootstrap_is_deterministic_and_brackets_the_mean():
    x = np.random.default_rng(1).exponential(1.0, 40)
    a = S.describe(x, ci="bootstrap", n_resamples=2000, seed=3)
    b = S.describe(x, ci="bootstrap", n_resamples=2000, seed=3)
    assert a["ci_low"] == b["ci_low"] and a["ci_low"] < x.mean() < a["ci_high"]
    assert a["ci_method"].startswith("bootstrap BCa")
    with pytest.raises(ValueError):
        S.describe(x, ci="magic")


def test_rank_sum_and_signed_rank_name_their_tests_and_match_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.70, 0.03, 20), rng.normal(0.67, 0.03, 20)
    r = S.rank_sum(a, b)
    assert r["test"].startswith("Wilcoxon rank-sum") and "ranksums" in r["test"]
    assert r["p"] == pytest.approx(sps.ranksums(a, b).pvalue)
    w = S.signed_rank(a, b)
    assert w["test"].startswith("Wilcoxon signed-rank") and "scipy.stats.wilcoxon" in w["test"]
    assert w["p"] == pytest.approx(sps.wilcoxon(a, b).pvalue) and w["n"] == 20
    assert S.signed_rank(a, a)["p"] == 1.0
    assert math.isnan(S.rank_sum([], b)["p"])
    with pytest.raises(ValueError):
        S.signed_rank(a, b[:-1])


def test_summarize_groups_comparisons_and_gains_sign():
    rows = []
    rng = np.random.default_rng(3)
    for c in range(12):
        for model, ssim, mae in (("good", 0.8, 50.0), ("template", 0.6, 120.0)):
            rows.append(dict(case=f"c{c}", model=model, metric="ssim", window="full", region="head",
                             value=ssim + rng.normal(0, 0.01)))
            rows.append(dict(case=f"c{c}", model=model, metric="mae_hu", window="full", region="head",
                             value=mae + rng.normal(0, 2)))
    s = S.summarize(rows, baselines=["template"])
    groups = {g["metric"]: g for g in s["groups"]}
    assert set(groups) == {"ssim", "mae_hu"}
    for metric, g in groups.items():
        assert set(g["per_model"]) == {"good", "template"}
        (gain,) = g["gains"]
        assert gain["model"] == "good" and gain["baseline"] == "template"
        assert gain["mean_difference"] > 0  # positive = better, also for errors
        assert gain["signed_rank"]["p"] < 0.01
        (cmp_,) = g["comparisons"]
        assert cmp_["rank_sum"]["p"] < 0.01 and cmp_["rank_sum"]["test"].startswith("Wilcoxon rank-sum")
    assert groups["mae_hu"]["higher_is_better"] is False
    assert groups["mae_hu"]["gains"][0]["mean_difference"] == pytest.approx(70.0, abs=3)
