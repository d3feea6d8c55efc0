"""The judge's measuring-instrument checks against hand-computed values: ECE, reliability bins, kappa, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from prosocial_lib.eval.judges.encoder import JudgeError
from prosocial_lib.eval.judges.validation import (
    choose_threshold,
    classification_summary,
    expected_calibration_error,
    flag_agreement,
    majority_baseline,
    reliability_table,
)


def test_reliability_table_and_ece_by_hand():
    conf = [0.05, 0.15, 0.95, 0.91, 0.55, 1.0]
    correct = [0, 0, 1, 0, 1, 1]
    t = reliability_table(conf, correct, n_bins=10)
    # bins: [0,.1): 0.05 | [.1,.2): 0.15 | [.5,.6): 0.55 | [.9,1]: 0.95, 0.91, 1.0
    assert t["n"].tolist() == [1, 1, 1, 3]
    assert t["accuracy"].tolist() == pytest.approx([0, 0, 1, 2 / 3])
    assert t["mean_confidence"].tolist() == pytest.approx([0.05, 0.15, 0.55, (0.95 + 0.91 + 1.0) / 3])
    gaps = [0.05, 0.15, 0.45, abs(2 / 3 - (0.95 + 0.91 + 1.0) / 3)]
    expected = (gaps[0] + gaps[1] + gaps[2] + 3 * gaps[3]) / 6
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(expected)
    assert expected_calibration_error([1.0, 1.0], [1, 1]) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error([], []))
    with pytest.raises(JudgeError, match="in \\[0, 1\\]"):
        reliability_table([1.2], [1])
    with pytest.raises(JudgeError, match="2 confidences but 1 outcomes"):
        reliability_table([0.1, 0.2], [1])


def test_flag_agreement_kappa_by_hand():
    truth = [1, 1, 0, 0, 0, 0, 1, 0]
    flags = [1, 0, 0, 0, 1, 0, 1, 0]
    r = flag_agreement(truth, flags)
    # observed agreement 6/8; chance: p(yes) = 3/8 * 3/8, p(no) = 5/8 * 5/8 -> pe = 34/64
    po, pe = 6 / 8, (9 + 25) / 64
    assert r["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["true_rate"] == pytest.approx(3 / 8) and r["flagged_rate"] == pytest.approx(3 / 8) and r["n"] == 8
    assert flag_agreement([0, 0], [0, 0])["kappa"] == 1.0
    assert np.isnan(flag_agreement([], [])["kappa"])


def test_choose_threshold_maximises_f1_and_falls_back():
    p = [0.1, 0.2, 0.3, 0.6, 0.7, 0.35]
    y = [0, 0, 0, 1, 1, 1]
    t = choose_threshold(p, y)
    assert 0.3 < t <= 0.35  # flags exactly 0.35, 0.6, 0.7: F1 = 1
    assert choose_threshold([0.2, 0.9], [1, 1]) == 0.5  # no negatives: undefined, the default
    assert choose_threshold([], []) == 0.5


def test_classification_summary_by_hand():
    y = ["a", "a", "b", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a", "b"]
    r = classification_summary(y, pred, ["a", "b", "c"], confidence=[0.9, 0.6, 0.8, 0.7, 0.5, 0.6])
    assert r["accuracy"] == pytest.approx(3 / 6) and r["majority_baseline"] == pytest.approx(3 / 6)
    # F1(a) = 2*1/(2+1+1) = .5, F1(b) = 2*2/(4+2+1) = 4/7, F1(c) = 0
    assert r["macro_f1"] == pytest.approx((0.5 + 4 / 7 + 0) / 3)
    assert r["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    assert r["per_label"]["b"]["support"] == 3 and r["per_label"]["a"]["precision"] == pytest.approx(0.5)
    assert 0 <= r["ece"] <= 1
    assert majority_baseline(["x", "y", "y"]) == pytest.approx(2 / 3)
    assert classification_summary([], [], ["a"])["n"] == 0
    with pytest.raises(JudgeError, match="2 true labels but 1"):
        classification_summary(["a", "b"], ["a"], ["a", "b"])
