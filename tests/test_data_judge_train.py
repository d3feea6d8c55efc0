"""The judge training set labelled by reading: the check set's schema and rule, contexts the judges may train on
(never a test or check-set context), labels that fit their context, and a loader that names file, row and field.
The saved generations and ``assemble --check`` are tested with the check set's (tests/test_data_judge_check.py)."""

import json
from collections import Counter

import pytest

from prosocial_lib.data import (
    CHECK_LABELS,
    DataFormatError,
    dialogue_turns,
    load_casual,
    load_judge_check,
    load_judge_train,
    load_prosocial_dialog,
)
from prosocial_lib.data.judge_check import COLUMNS


@pytest.fixture(scope="module")
def train():
    return load_judge_train()


def test_size_origin_and_labels(train):
    """At least 400 unique pairs, mostly real replies of both models, every label at least 30 times."""
    rows = list(train)
    assert train.column_names == list(COLUMNS) and len({r["id"] for r in rows}) == len(rows) >= 400
    by_origin = Counter(r["origin"] for r in rows)
    assert by_origin["model"] >= 300 and by_origin["written"] >= 100, by_origin
    by_label = Counter(r["label"] for r in rows)
    assert sorted(by_label) == sorted(CHECK_LABELS) and min(by_label.values()) >= 30, by_label
    assert not [r["id"] for r in rows if not r["reason"].strip() or "\n" in r["reason"]]
    kinds = {("base" in r["model"], "stage 2" in r["model"]) for r in rows if r["origin"] == "model"}
    assert kinds == {(True, False), (False, True)}


def test_contexts_are_training_contexts_only(train):
    """No history is a test-split turn, a chitchat test conversation or a check-set context."""
    banned = {"\n".join(h) for h in dialogue_turns(load_prosocial_dialog("embedded", "test"))["history"]}
    banned |= {"\n".join(h) for h in load_casual("chitchat", "test")["history"]}
    banned |= {"\n".join(h) for h in load_judge_check()["history"]}
    assert not [i for i, h in zip(train["id"], train["history"]) if "\n".join(h) in banned]
    assert not set(train["context_id"]) & set(load_judge_check()["context_id"])
    allowed = ("prosocial-train-", "prosocial-validation-", "chitchat-train-")
    assert all(c.startswith(allowed) for c in train["context_id"])
    trained_on = set()
    for split in ("train", "validation"):
        trained_on |= {"\n".join(h) for h in dialogue_turns(load_prosocial_dialog("embedded", split))["history"]}
    assert all("\n".join(h) in trained_on for h, s in zip(train["history"], train["context_set"])
               if s == "adversarial")


def test_labels_fit_the_kind_of_context(train):
    for label, cset in zip(train["label"], train["context_set"]):
        assert cset in ("adversarial", "casual")
        if label in ("fine", "preachy"):
            assert cset == "casual"
        elif label in ("prosocial", "condoning", "neutral"):
            assert cset == "adversarial"


def test_bad_rows_name_file_row_and_field(tmp_path, train):
    good = {c: train[0][c] for c in COLUMNS}
    bad = {**good, "id": "x-2", "label": "preachy" if good["context_set"] != "casual" else "condoning"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="does not fit") as err:
        load_judge_train(str(path))
    assert err.value.file == str(path) and err.value.row == 2 and err.value.field == "label"
    with pytest.raises(FileNotFoundError, match="judge training pairs"):
        load_judge_train(str(tmp_path / "nope.jsonl"))
