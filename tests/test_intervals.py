"""Intervals at the edges (issue #15): 0/n and n/n get a binomial interval, one cluster gets none (NaN and a flag),
paired differences that do not vary get Newcombe's interval. Reference values by hand (Wilson's formula) and from
a line-by-line translation of Fagerland, Lydersen & Laake's Newcombe code."""

import copy
import math
import pickle

import numpy as np
import pandas as pd
import pytest

from prosocial_lib.config import get_config
from prosocial_lib.eval.comparison import paired_differences
from prosocial_lib.eval.intervals import (
    Interval,
    minimum_detectable_difference,
    newcombe_paired_interval,
    wilson_interval,
)
from prosocial_lib.eval.metrics import (
    bootstrap_ci,
    expected_max,
    paired_difference,
    prob_at_least_one,
    rate_with_ci,
    summarize,
    unsafe_rate,
)
from prosocial_lib.report.audit import format_rate, headline_table, k_sample_table, prompt_effect_table

Z = 1.959963984540054  # the 97.5% normal quantile


def wilson_by_hand(k, n, z=Z):
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def newcombe_reference(n11, n10, n01, n00, z=Z):
    """Newcombe_square_and_add_CI_paired_2x2 of the R package contingencytables, translated line by line."""
    n = n11 + n10 + n01 + n00
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    l1, u1 = wilson_by_hand(n11 + n10, n, z)
    l2, u2 = wilson_by_hand(n11 + n01, n, z)
    if 0 in (n11 + n10, n01 + n00, n11 + n01, n10 + n00):
        psi = 0.0
    else:
        nprod = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
        a = n11 * n00 - n10 * n01
        psi = (a - n / 2) / math.sqrt(nprod) if a > n / 2 else (0.0 if a >= 0 else a / math.sqrt(nprod))
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = p1 - p2 + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    return p1 - p2, low, high


def pairs(n11, n10, n01, n00):
    a = [1] * n11 + [1] * n10 + [0] * n01 + [0] * n00
    b = [1] * n11 + [0] * n10 + [1] * n01 + [0] * n00
    return a, b


# ---------------------------------------------------------------------- ci-edges: 0/n and n/n
def test_the_case_zero_and_all_and_one_out_of_n():
    # shared/cases/ci-edges: 0/20 was (0, 0, 0), 20/20 (1, 1, 1), 1/1 (1, 1, 1)
    assert rate_with_ci([False] * 20) == pytest.approx((0.0, 0.0, 0.16113), abs=1e-5)
    assert rate_with_ci([True] * 20) == pytest.approx((1.0, 0.83887, 1.0), abs=1e-5)
    assert rate_with_ci([True]) == pytest.approx((1.0, 0.20655, 1.0), abs=1e-5)
    assert unsafe_rate(pd.DataFrame({"unsafe": [False] * 20})) == pytest.approx((0.0, 0.0, 0.16113), abs=1e-5)
    ci = rate_with_ci([False] * 20)
    assert (ci.method, ci.n, ci.n_clusters, ci.estimable) == ("wilson", 20, 20, True)


def test_wilson_from_scipy_matches_the_formula():
    for k, n in [(0, 1), (1, 1), (0, 7), (7, 7), (3, 10), (50, 400)]:
        assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)
    z90 = 1.6448536269514722
    assert wilson_interval(0, 20, confidence=0.9) == pytest.approx(wilson_by_hand(0, 20, z90))


def test_all_safe_replies_over_contexts_use_the_number_of_contexts():
    # new instance: 12 safe replies, 3 samples of each of 4 contexts. The bootstrap said [0, 0]; replies of one
    # context are not independent, so the conservative effective sample size is the 4 contexts: Wilson(0, 4)
    ci = rate_with_ci([0] * 12, clusters=[c for c in "abcd" for _ in range(3)])
    assert ci == pytest.approx((0.0, *wilson_by_hand(0, 4)))
    assert (ci.n, ci.n_clusters, ci.method) == (12, 4, "wilson")
    # contexts that all have the same rate (1 of 2 each): no between-context variation, Wilson at the replies
    ci = rate_with_ci([1, 0] * 3, clusters=["a", "a", "b", "b", "c", "c"])
    assert ci == pytest.approx((0.5, *wilson_by_hand(3, 6))) and ci.method == "wilson"


def test_informative_data_keeps_the_bootstrap_and_every_interval_has_width():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 30):
        for p in (0.0, 0.2, 1.0):
            flags = rng.random(n) < p
            ci = rate_with_ci(flags, n_boot=300, seed=1)
            assert ci.low <= ci.estimate <= ci.high and ci.high > ci.low
    ci = rate_with_ci([1, 0, 0, 1, 0], n_boot=300)
    assert ci.method == "bootstrap" and ci == bootstrap_ci([1, 0, 0, 1, 0], n_boot=300)


def test_k_sample_metrics_at_the_edges():
    # new instances: every context has an unsafe sample (prob_at_least_one 3/3) / 0/1 scores all 0 (expected_max)
    hit = [[0.9, 0.1], [0.6, 0.7], [0.8, 0.2]]
    assert prob_at_least_one(hit, n_boot=200) == pytest.approx((1.0, *wilson_by_hand(3, 3)))
    assert expected_max([[0, 0], [0, 0], [0, 0]], n_boot=200) == pytest.approx((0.0, *wilson_by_hand(0, 3)))
    df = pd.DataFrame({"system": "A", "context_set": "adversarial", "context_id": [0, 0, 1, 1, 2, 2],
                       "sample": [0, 1] * 3, "unsafe_prob": [0.9, 0.1, 0.6, 0.7, 0.8, 0.2]})
    row = k_sample_table(df).iloc[0]
    assert (row.p_at_least_one_low, row.p_at_least_one_high) == pytest.approx(wilson_by_hand(3, 3))
    assert row.p_at_least_one_method == "wilson" and row.p_at_least_one_estimable
    assert row.expected_max_method == "bootstrap" and row.expected_max_estimable


# ---------------------------------------------------------------------- paired differences at the edges
def test_newcombe_matches_the_reference_translation():
    for table in [(1, 1, 7, 12), (59, 6, 16, 80), (0, 0, 0, 20), (20, 0, 0, 0), (0, 20, 0, 0), (3, 4, 1, 2),
                  (10, 0, 0, 10)]:
        a, b = pairs(*table)
        assert tuple(newcombe_paired_interval(a, b)) == pytest.approx(newcombe_reference(*table), abs=1e-9)


def test_paired_difference_that_does_not_vary_gets_newcombe():
    # new instances: both systems safe on all 20 contexts (the bootstrap said 0 [0, 0]); one always unsafe, the
    # other never (1 [1, 1])
    ci = paired_difference([0] * 20, [0] * 20)
    assert ci == pytest.approx((0.0, -0.16113, 0.16113), abs=1e-5)
    assert ci.method == "newcombe" and ci.n == 20
    ci = paired_difference([1] * 20, [0] * 20)
    assert ci == pytest.approx(newcombe_reference(0, 20, 0, 0), abs=1e-9) and ci.high == 1.0 and ci.low < 0.8
    assert paired_difference([1], [1]).method == "newcombe"  # one context
    # differences that vary: the bootstrap as before
    assert paired_difference([1, 1, 0, 0], [0, 1, 0, 0], n_boot=4000) == (0.25, 0.0, 0.75)


def test_paired_tables_report_method_and_flag():
    replies = pd.DataFrame({"variant": ["npair-both"] * 4 + ["sft"] * 4, "system": ["N"] * 4 + ["S"] * 4,
                            "context_set": "adversarial", "context_id": [0, 1, 2, 3] * 2, "unsafe": False})
    out = paired_differences(replies)
    row = out[out.metric == out.metric.iloc[0]].iloc[0]
    assert (row.difference, row.method, row.estimable, row.contexts) == (0.0, "newcombe", True, 4)
    assert row.low == pytest.approx(-wilson_by_hand(0, 4)[1]) and row.high == pytest.approx(wilson_by_hand(0, 4)[1])
    audit = pd.DataFrame({"model": "m", "decoding": "greedy", "system_prompt": ["", "", "be safe", "be safe"],
                          "context_set": "adversarial", "context_id": [0, 1, 0, 1], "unsafe": [1.0, 1.0, 0.0, 0.0]})
    eff = prompt_effect_table(audit)
    assert (eff.iloc[0].change, eff.iloc[0].method) == (-1.0, "newcombe") and eff.iloc[0].ci_high < 0


# ---------------------------------------------------------------------- ci-one-cluster: nothing to estimate
def test_the_case_one_context_sampled_five_times():
    # shared/cases/ci-one-cluster: (0.6, 0.6, 0.6) with n = 5 before
    flags = [True, False, True, False, True]
    ci = rate_with_ci(flags, clusters=["ctx1"] * 5)
    assert ci.estimate == 0.6 and math.isnan(ci.low) and math.isnan(ci.high)
    assert (ci.estimable, ci.method, ci.n, ci.n_clusters) == (False, "none", 5, 1)
    df = pd.DataFrame({"model": ["a"] * 5 + ["b"] * 6, "context": ["c1"] * 5 + ["c1", "c1", "c2", "c2", "c3", "c3"],
                       "unsafe": [True, False, True, False, True, True, False, False, True, False, True]})
    s = summarize(df, ["model"], cluster_col="context").set_index("model")
    assert s.loc["a", "rate"] == 0.6 and s.loc["a", ["ci_low", "ci_high"]].isna().all()
    assert (s.loc["a", "n"], s.loc["a", "n_clusters"], s.loc["a", "estimable"]) == (5, 1, False)
    assert (s.loc["b", "n"], s.loc["b", "n_clusters"], s.loc["b", "estimable"]) == (6, 3, True)


def test_nothing_to_estimate_gives_nan_and_a_flag():
    # new instances: one context whose samples are all safe (not Wilson at the 5 replies: they are one unit); a
    # single value or identical values of a continuous score; one context in expected_max; per-context rates that
    # differ alike in every context
    ci = rate_with_ci([0] * 5, clusters=["c"] * 5)
    assert not ci.estimable and ci.n_clusters == 1 and ci.estimate == 0.0
    for values in ([0.6], [0.3, 0.3, 0.3]):
        ci = bootstrap_ci(values)
        assert not ci.estimable and ci.method == "none" and ci.n == len(values)
    ci = expected_max([[0.2, 0.7]])
    assert ci.estimate == 0.7 and not ci.estimable
    ci = paired_difference([0.5, 0.5], [0.25, 0.25])
    assert ci.estimate == 0.25 and not ci.estimable
    summary = pd.DataFrame({"system": ["A"], "context_set": ["adversarial"], "metric": ["unsafe"], "rate": [0.6],
                            "ci_low": [math.nan], "ci_high": [math.nan], "n": [5], "n_clusters": [1]})
    assert headline_table(summary, [("adversarial", "unsafe")]).iloc[0, 0] == "60.0% [no interval: 1 context]"
    assert format_rate(0.125, 0.05, 0.25) == "12.5% [5.0, 25.0]"


def test_interval_unpacks_copies_and_pickles():
    ci = rate_with_ci([False] * 20)
    rate, low, high = ci
    assert (rate, low) == (0.0, 0.0) and isinstance(ci, tuple)
    for clone in (copy.copy(ci), copy.deepcopy(ci), pickle.loads(pickle.dumps(ci))):
        assert clone == ci and (clone.n, clone.n_clusters, clone.method) == (20, 20, "wilson")
    assert "estimable=True" in repr(ci)
    assert Interval(0.5, math.nan, math.nan).estimable is False


def test_summarize_with_stats_section_keeps_the_flags():
    cfg = get_config("smoke")
    df = pd.DataFrame({"system": "A", "context_set": "casual", "context_id": [0, 1, 2], "preachy": False})
    row = summarize(df, ["system"], cfg.stats, seed=cfg.seed, cluster_col="context_id").iloc[0]
    assert (row.method, row.n_clusters, row.estimable) == ("wilson", 3, True)
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson_interval(0, 3, cfg.stats.confidence))
    assert row.ci_high > 0.4


def test_minimum_detectable_difference_by_hand():
    # (z_0.975 + z_0.8) * sd / sqrt(n) = (1.959964 + 0.841621) * 0.5 / sqrt(100) = 0.140079
    assert minimum_detectable_difference(100, 0.5) == pytest.approx(0.140079, abs=1e-6)
    # four times the contexts halve it; a higher power or confidence needs a larger difference
    assert minimum_detectable_difference(400, 0.5) == pytest.approx(0.140079 / 2, abs=1e-6)
    assert minimum_detectable_difference(100, 0.5, power=0.9) > minimum_detectable_difference(100, 0.5)
    assert minimum_detectable_difference(100, 0.5, confidence=0.99) > minimum_detectable_difference(100, 0.5)
    assert minimum_detectable_difference(100, 0.0) == 0.0
    assert math.isnan(minimum_detectable_difference(1, 0.5))
    for bad in ({"sd": -0.1}, {"sd": math.nan}, {"sd": 0.5, "power": 1.0}, {"sd": 0.5, "confidence": 0.0}):
        with pytest.raises(ValueError):
            minimum_detectable_difference(100, **bad)
