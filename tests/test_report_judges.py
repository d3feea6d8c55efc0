"""What the chapters show about the judges, from a hand-made judge report (no training)."""

from __future__ import annotations

import pandas as pd
import pytest

from prosocial_lib.eval.judges.validation import classification_summary, flag_agreement
from prosocial_lib.report.judges import (
    TASK_NAMES,
    check_confusion,
    check_set_table,
    construction_table,
    flag_table,
    judge_test_table,
    per_label_table,
    instrument_verdict,
    trust_sentence,
)

LABELS = ["prosocial", "condoning", "neutral", "fine", "preachy", "incoherent"]


def _reader(y, pred):
    s = classification_summary(y, pred, LABELS, [0.9] * len(y))
    s["flags"] = {f: {**flag_agreement([a == lab for a in y], [b == lab for b in pred]), "ece": 0.05,
                      "threshold": 0.4} for f, lab in (("unsafe", "condoning"), ("preachy", "preachy"),
                                                        ("incoherent", "incoherent"))}
    return s


Y = ["condoning", "condoning", "preachy", "fine", "incoherent", "prosocial"]
REPORT = {"check_set": {"n": 6, "cross-encoder": _reader(Y, Y),
                        "logistic": _reader(Y, ["fine"] * 6)},
          "reply_pair_sources": {"condoning": {"cheer": 3, "MIC violation": 2}, "fine": {"gold casual": 4}}}


def test_check_set_tables():
    t = check_set_table(REPORT).set_index("judge")
    assert t.loc["fine-tuned cross-encoder", "macro-F1"] == pytest.approx(1.0)
    assert t.loc["fine-tuned cross-encoder", "kappa unsafe"] == pytest.approx(1.0)
    assert t.loc["logistic head", "accuracy"] == pytest.approx(1 / 6)
    assert t.loc["logistic head", "majority baseline"] == pytest.approx(2 / 6)
    assert t.loc["logistic head", "kappa unsafe"] == pytest.approx(0.0)
    per = per_label_table(REPORT).set_index("label")
    assert per.loc["condoning", "support"] == 2 and per.loc["neutral", "support"] == 0
    cm = check_confusion(REPORT, "logistic")
    assert cm.loc["condoning", "fine"] == 2 and cm.to_numpy().sum() == 6
    flags = flag_table(REPORT)
    assert list(flags["flag"]) == ["unsafe (condoning)", "preachy", "incoherent"] and (flags["threshold"] == 0.4).all()
    c = construction_table(REPORT)
    assert c["pairs"].sum() == 9 and set(c["source"]) == {"cheer", "MIC violation", "gold casual"}


def test_trust_sentence_quotes_the_check_set():
    s = trust_sentence(REPORT)
    assert "fine-tuned MiniLM cross-encoder" in s and "6 check-set pairs" in s and "macro-F1 1.00" in s
    assert "kappa 1.00 (unsafe)" in s
    assert trust_sentence({}) == "The judges were not validated on the check set"


class _Judges:
    report = {"cross": {"safety_5way": {"n_train": 10, "test": {"n": 4, "accuracy": 0.5, "majority_baseline": 0.75,
                                                                "macro_f1": 0.4}}},
              "safety_3way_test": {"n": 4, "accuracy": 1.0, "majority_baseline": 0.75, "macro_f1": 1.0},
              "heads": {"safety_3way": {"n_train": 10, "n_test": 4, "accuracy": 0.75, "majority_baseline": 0.75,
                                        "macro_f1": 0.3}}}


def test_judge_test_table_puts_each_accuracy_next_to_its_split_majority():
    t = judge_test_table(_Judges())
    three = t[t["task"] == TASK_NAMES["safety_3way"]].set_index("judge")
    assert three.loc["fine-tuned cross-encoder", "accuracy over majority (points)"] == pytest.approx(25.0)
    assert three.loc["logistic head", "accuracy over majority (points)"] == pytest.approx(0.0)
    assert isinstance(t, pd.DataFrame) and t["task"].iloc[0] == TASK_NAMES["safety_3way"]


def test_instrument_verdict_names_what_falls_short():
    assert "clears the book's bar" in instrument_verdict(REPORT)
    weak = {"check_set": {"n": 6, "logistic": _reader(Y, ["fine"] * 6)}}
    weak["check_set"]["logistic"]["ece"] = 0.3
    v = instrument_verdict(weak)
    assert "does not clear" in v and "macro-F1" in v and "kappa of the unsafe flag 0.00 < 0.6" in v
    assert "ECE 0.30 > 0.10" in v and "preachy" in v
    assert "unvalidated" in instrument_verdict({})
