"""Casual chat: speaker merging, history windows, conversation-level splits, the three sources."""

import json
import shutil
from pathlib import Path

import datasets
import pytest

from prosocial_lib.data import DataSkipWarning, last_load_report, load_casual
from prosocial_lib.data import casual as casmod

FIXTURES = Path(__file__).parent / "fixtures"


def test_merge_speaker_turns_joins_a_speakers_lines_and_counts_empty_ones():
    turns, empty = casmod.merge_speaker_turns([("a", "hi"), ("a", " how are you? "), ("b", "fine"), ("a", "  "),
                                               ("b", "and you?"), ("a", "good")])
    assert turns == ["hi how are you?", "fine and you?", "good"]
    assert empty == 1


def test_conversation_examples_window_the_history():
    ex = casmod.conversation_examples(["a", "b", "c", "d", "e"], max_history_turns=2)
    assert ex == [(["a"], "b"), (["a", "b"], "c"), (["b", "c"], "d"), (["c", "d"], "e")]
    assert casmod.conversation_examples(["a"]) == []


def test_chitchat_file_format_is_merged_by_sender():
    convs = casmod.chitchat_conversations(str(FIXTURES / "chitchat_small.json"))
    turns, empty = convs["0b6f2d7e-1111-4c1a-9d5e-000000000001"]
    assert turns == ["hey there how's your week going?", "pretty good, just got back from a hike",
                     "oh nice, where did you go?", "up to the lake trail the view was amazing"]
    assert empty == 1


def test_split_conversations_is_a_deterministic_partition():
    keys = [f"c{i:03d}" for i in range(50)]
    parts = {s: casmod.split_conversations(keys, s, seed=3) for s in ("train", "validation", "test")}
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [40, 5, 5]
    assert sorted(sum(parts.values(), [])) == keys  # disjoint and complete
    assert parts["test"] == casmod.split_conversations(list(reversed(keys)), "test", seed=3)  # order-free
    assert parts["test"] != casmod.split_conversations(keys, "test", seed=4)


def test_chitchat_package_loads_real_chats_with_disjoint_splits():
    convs = casmod.chitchat_conversations()
    assert len(convs) == 7168
    splits = {s: set(casmod.split_conversations(list(convs), s, seed=0)) for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["validation"]) and not (splits["train"] & splits["test"])
    assert not (splits["validation"] & splits["test"])
    with pytest.warns(DataSkipWarning, match="empty turns"):
        ds = load_casual("chitchat", "valid", max_rows=50)
    assert ds.column_names == ["history", "response", "source"] and len(ds) == 50
    assert set(ds["source"]) == {"chitchat"}
    assert all(1 <= len(h) <= 4 and all(t.strip() for t in h) for h in ds["history"])
    report = last_load_report()
    assert report.skipped["empty turn"] >= 1 and report.rows_kept > 10000  # before the max_rows sample
    with pytest.warns(DataSkipWarning):
        again = load_casual("chitchat", "validation", max_rows=50)
    assert again[:] == ds[:]  # deterministic


def test_prosocial_casual_turns_keep_their_history(tmp_path):
    folder = tmp_path / "pd"
    folder.mkdir()
    shutil.copy(FIXTURES / "prosocial_hub.jsonl", folder / "train.jsonl")
    ds = load_casual("prosocial", "train", prosocial_source=str(folder))
    assert len(ds) == 1 and ds[0]["source"] == "prosocial_casual"
    assert ds[0]["history"] == ["My coworker keeps microwaving fish at lunch and the whole office smells."]
    assert load_casual("prosocial_casual", "train", prosocial_source=str(folder))[:] == ds[:]


def test_daily_dialog_local_files_skip_and_count_empty_turns():
    with pytest.warns(DataSkipWarning, match="1 empty turns"):
        ds = load_casual(str(FIXTURES / "daily_dialog"), "train")
    # dialog 1: 4 turns -> 3 examples; dialog 2: an empty third turn cuts it -> 1 example
    assert len(ds) == 4 and set(ds["source"]) == {"daily_dialog"}
    # detokenised: DailyDialog's "Hi , Anna , ... ?" becomes natural text
    assert ds[1]["history"] == ["Hi, Anna, are you coming to the picnic on Saturday?",
                                "I'd love to, but I promised to help my brother move."]
    assert ds[3]["response"] == "No, you need the number 12. It stops right across the street."
    assert last_load_report().skipped["empty turn"] == 1


def test_daily_dialog_hub_goes_through_load_dataset(monkeypatch):
    rows = [json.loads(x) for x in (FIXTURES / "daily_dialog" / "validation.jsonl").read_text().splitlines()]
    calls = []

    def fake(split):
        calls.append(split)
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(casmod, "_load_daily_dialog_hub", fake)
    ds = load_casual("daily_dialog", "dev")
    assert calls == ["validation"] and len(ds) == 2
    assert ds[1]["history"][-1] == "Tiring, but everyone was friendly."


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown casual source"):
        load_casual("reddit")
