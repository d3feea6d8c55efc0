"""ProsocialDialog loading from every supported format, validation errors, strict=False reports, dialogue turns."""

import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prosocial_lib.data import (
    DataFormatError,
    DataSkipWarning,
    dialogue_turns,
    history_to_messages,
    last_load_report,
    load_prosocial_dialog,
)
from prosocial_lib.data import prosocial_dialog as pdmod

FIXTURES = Path(__file__).parent / "fixtures"
HUB_JSONL = FIXTURES / "prosocial_hub.jsonl"
DIRECT = FIXTURES / "prosocial_direct.json"
COLUMNS = ["context", "response", "rots", "safety_label", "safety_annotations", "safety_annotation_reasons",
           "source", "etc", "dialogue_id", "response_id", "episode_done"]


def fixture_rows():
    return [json.loads(line) for line in HUB_JSONL.read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def sorted_key(ds):
    return list(zip(ds["dialogue_id"], ds["response_id"]))


# ---------------------------------------------------------------------- formats
def test_hub_jsonl_has_hub_columns_types_and_sorted_rows():
    ds = load_prosocial_dialog(str(HUB_JSONL), "train")
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == COLUMNS
    assert len(ds) == 6
    # the fixture lists dialogue 11's second turn first: rows come back sorted
    assert sorted_key(ds) == [(10, 0), (10, 1), (10, 2), (11, 0), (11, 1), (12, 0)]
    assert ds.features["etc"] == datasets.Value("string") and ds.features["episode_done"] == datasets.Value("bool")
    row = ds[0]
    assert row["rots"] == [] and row["safety_label"] == "__casual__" and row["etc"] is None
    assert ds[3]["etc"] == "reddit/amitheasshole/xyz12"


def test_parquet_and_hub_json_lines_and_folder_of_splits_give_the_same_rows(tmp_path):
    rows = fixture_rows()
    reference = load_prosocial_dialog(str(HUB_JSONL))[:]
    pq_file = write_parquet(tmp_path / "pq" / "train-00000-of-00001.parquet", rows)
    assert load_prosocial_dialog(str(pq_file))[:] == reference
    # the hub repository's own layout: train.json / valid.json / test.json in JSON lines
    folder = tmp_path / "hub"
    write_jsonl(folder / "train.json", rows[:4])
    write_jsonl(folder / "valid.json", rows[4:5])
    write_jsonl(folder / "test.json", rows[5:])
    assert len(load_prosocial_dialog(str(folder), "train")) == 4
    assert len(load_prosocial_dialog(str(folder), "valid")) == 1  # alias
    assert load_prosocial_dialog(str(folder), "dev")[0]["context"] == rows[4]["context"]  # alias
    assert len(load_prosocial_dialog(str(folder), "test")) == 1
    # the parquet conversion's layout: default/<split>/0000.parquet
    conv = tmp_path / "conv"
    write_parquet(conv / "default" / "train" / "0000.parquet", rows[:3])
    write_parquet(conv / "default" / "validation" / "0000.parquet", rows[3:])
    assert len(load_prosocial_dialog(str(conv), "train")) == 3
    assert len(load_prosocial_dialog(str(conv), "validation")) == 3


def test_shards_are_globbed_and_concatenated(tmp_path):
    rows = fixture_rows()
    write_jsonl(tmp_path / "train-00000.jsonl", rows[:2])
    write_jsonl(tmp_path / "train-00001.jsonl", rows[2:])
    ds = load_prosocial_dialog(str(tmp_path), "train")
    assert len(ds) == 6 and sorted_key(ds)[0] == (10, 0)


def test_embedded_source_reads_the_package_shards(tmp_path, monkeypatch):
    rows = fixture_rows()
    write_jsonl(tmp_path / "test-00000.jsonl", rows[:3])
    write_jsonl(tmp_path / "test-00001.jsonl", rows[3:])
    monkeypatch.setattr(pdmod, "EMBEDDED_DIR", tmp_path)
    ds = load_prosocial_dialog("embedded", "test")
    assert len(ds) == 6 and "NOT the real" in ds.info.description
    with pytest.raises(FileNotFoundError, match="no 'train' files"):
        load_prosocial_dialog("embedded", "train")


def test_direct_download_format_is_converted_with_ids():
    ds = load_prosocial_dialog(str(DIRECT), "train")
    assert ds.column_names == COLUMNS
    assert sorted_key(ds) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)]
    assert ds["episode_done"] == [False, False, True, False, True, True]
    hub = load_prosocial_dialog(str(HUB_JSONL))
    # same texts, labels and votes as the hub-format fixture it was written from
    for col in ("context", "response", "rots", "safety_label", "safety_annotations", "source", "etc"):
        assert ds[col] == hub[col], col


def test_direct_download_without_episode_done_marks_the_last_turn(tmp_path):
    dialogues = json.loads(DIRECT.read_text())
    for d in dialogues:
        for t in d:
            del t["episode_done"]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(dialogues))
    assert load_prosocial_dialog(str(path))["episode_done"] == [False, False, True, False, True, True]


def test_hub_source_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_hub(hub_id, split):
        calls.append((hub_id, split))
        return datasets.Dataset.from_list(fixture_rows())

    monkeypatch.setattr(pdmod, "_load_hub_dataset", fake_hub)
    ds = load_prosocial_dialog("allenai/prosocial-dialog", "valid")
    assert calls == [("allenai/prosocial-dialog", "validation")]
    assert len(ds) == 6 and ds.column_names == COLUMNS


def test_max_rows_keeps_a_prefix_of_the_sorted_rows():
    ds = load_prosocial_dialog(str(HUB_JSONL), max_rows=4)
    assert sorted_key(ds) == [(10, 0), (10, 1), (10, 2), (11, 0)]


def test_unknown_split_and_missing_path():
    with pytest.raises(ValueError, match="unknown split"):
        load_prosocial_dialog(str(HUB_JSONL), "holdout")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_prosocial_dialog("no/such/folder/x.jsonl")


def test_a_file_named_for_another_split_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", fixture_rows())
    with pytest.raises(ValueError, match="holds the 'test' split"):
        load_prosocial_dialog(str(path), "train")


# ---------------------------------------------------------------------- errors name file, row and field
def _mutate(rows, index, **changes):
    rows = [dict(r) for r in rows]
    for k, v in changes.items():
        if v is KeyError:
            del rows[index][k]
        else:
            rows[index][k] = v
    return rows


@pytest.mark.parametrize("changes, field, reason", [
    ({"rots": KeyError}, "rots", "missing column"),
    ({"context": 42}, "context", "wrong type"),
    ({"rots": "It's wrong to lie."}, "rots", "wrong type"),
    ({"dialogue_id": "11"}, "dialogue_id", "wrong type"),
    ({"episode_done": "no"}, "episode_done", "wrong type"),
    ({"response": "  "}, "response", "empty text"),
    ({"safety_label": "__unsafe__"}, "safety_label", "unknown safety label"),
    ({"safety_annotations": ["casual", "casual"]}, "safety_annotations", "wrong vote count"),
    ({"safety_annotations": ["casual", "casual", "unsafe"]}, "safety_annotations", "unknown safety vote"),
    ({"safety_label": "__needs_caution__"}, "safety_label", "label contradicts votes"),
])
def test_each_error_names_file_row_and_field(tmp_path, changes, field, reason):
    rows = _mutate(fixture_rows(), 2, **changes)  # the third line of the file
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.file, err.row, err.field, err.reason) == (str(path), 3, field, reason)
    assert str(path) in str(err) and "row 3" in str(err) and repr(field) in str(err)


def test_contradiction_message_names_the_implied_label(tmp_path):
    rows = _mutate(fixture_rows(), 1, safety_label="__needs_caution__")  # its votes say probably
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataFormatError, match="__probably_needs_caution__"):
        load_prosocial_dialog(str(path))


def test_malformed_json_line_and_duplicate_turn(tmp_path):
    lines = HUB_JSONL.read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines[:1] + ["{not json"] + lines[1:]) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    assert info.value.row == 2 and info.value.reason == "malformed JSON"
    rows = fixture_rows()
    path = write_jsonl(tmp_path / "dup.jsonl", rows + [rows[0]])
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    assert (info.value.row, info.value.field, info.value.reason) == (7, "response_id", "duplicate turn")


def test_parquet_missing_column_and_direct_download_errors(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "safety_label"} for r in fixture_rows()]
    path = write_parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    assert info.value.field == "safety_label" and info.value.reason == "missing column"
    dialogues = json.loads(DIRECT.read_text())
    dialogues[1][1]["labels"] = "not a list"
    path = tmp_path / "direct.json"
    path.write_text(json.dumps(dialogues))
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    assert (info.value.row, info.value.field) == (2, "labels") and "turn 2 of dialogue 2" in str(info.value)


def test_parquet_row_number_is_the_record_number(tmp_path):
    rows = _mutate(fixture_rows(), 4, safety_label="__casual__")
    path = write_parquet(tmp_path / "x.parquet", rows)
    with pytest.raises(DataFormatError) as info:
        load_prosocial_dialog(str(path))
    assert info.value.row == 5


# ---------------------------------------------------------------------- strict=False
def test_non_strict_skips_bad_rows_reports_and_warns(tmp_path):
    rows = fixture_rows()
    rows = _mutate(rows, 1, safety_label="__bogus__")
    rows = _mutate(rows, 3, safety_label="__bogus__")
    rows = _mutate(rows, 5, safety_annotations=["casual", "casual", "casual"])  # contradicts its label
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.warns(DataSkipWarning, match="skipped 3 rows"):
        ds = load_prosocial_dialog(str(path), strict=False)
    assert len(ds) == 3
    report = last_load_report()
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (6, 3, 3)
    assert dict(report.skipped) == {"unknown safety label (safety_label)": 2,
                                    "label contradicts votes (safety_label)": 1}
    assert "row 2" in report.examples[0]
    assert "skipped 3" in report.summary()
    # a second (cached) load gives the same report, and mutating it does not change the cache
    report.skipped.clear()
    with pytest.warns(DataSkipWarning):
        load_prosocial_dialog(str(path), strict=False)
    assert last_load_report().rows_skipped == 3


def test_clean_load_reports_nothing_skipped():
    load_prosocial_dialog(str(HUB_JSONL))
    report = last_load_report()
    assert report.rows_skipped == 0 and report.rows_kept == 6 and "skipped none" in report.summary()


# ---------------------------------------------------------------------- dialogue turns and messages
def test_dialogue_turns_interleave_history_and_sort():
    turns = dialogue_turns(load_prosocial_dialog(str(HUB_JSONL)))
    assert turns.column_names == ["dialogue_id", "response_id", "history", "response", "safety_label", "rots",
                                  "source"]
    rows = fixture_rows()
    by = {(r["dialogue_id"], r["response_id"]): r for r in rows}
    t = turns[2]  # dialogue 10, turn 2
    assert (t["dialogue_id"], t["response_id"]) == (10, 2)
    assert t["history"] == [by[(10, 0)]["context"], by[(10, 0)]["response"], by[(10, 1)]["context"],
                            by[(10, 1)]["response"], by[(10, 2)]["context"]]
    assert t["response"] == by[(10, 2)]["response"] and t["safety_label"] == "__possibly_needs_caution__"
    assert turns[0]["history"] == [by[(10, 0)]["context"]]


def test_dialogue_turns_accepts_unsorted_rows_and_truncates_history():
    shuffled = datasets.Dataset.from_list(list(reversed(fixture_rows())))
    turns = dialogue_turns(shuffled, max_history_turns=2)
    assert list(zip(turns["dialogue_id"], turns["response_id"]))[:3] == [(10, 0), (10, 1), (10, 2)]
    assert [len(h) for h in turns["history"]] == [1, 2, 2, 1, 2, 1]
    assert turns[2]["history"][-1] == "Okay, okay. I'll just talk to him tomorrow."


def test_dialogue_turns_warns_about_gaps_and_rejects_duplicates():
    rows = [r for r in fixture_rows() if not (r["dialogue_id"] == 10 and r["response_id"] == 1)]
    with pytest.warns(DataSkipWarning, match="1 dialogue"):
        turns = dialogue_turns(datasets.Dataset.from_list(rows))
    assert len(turns) == 5
    rows = fixture_rows()
    with pytest.raises(DataFormatError, match="two rows with response_id"):
        dialogue_turns(datasets.Dataset.from_list(rows + [rows[0]]))
    with pytest.raises(DataFormatError, match="missing column 'context'"):
        dialogue_turns(datasets.Dataset.from_list([{"response": "x"}]))


def test_history_to_messages_alternates_so_the_last_item_is_the_user():
    assert history_to_messages(["a"]) == [{"role": "user", "content": "a"}]
    msgs = history_to_messages(["a", "b", "c", "d"], response="e", system="be kind")
    assert [m["role"] for m in msgs] == ["system", "assistant", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in msgs] == ["be kind", "a", "b", "c", "d", "e"]
    with pytest.raises(ValueError):
        history_to_messages([])


def test_fixture_copies_stay_loadable_from_a_copied_folder(tmp_path):
    # a user copying the direct-download files into a folder: train.json (array) beside valid.json (array)
    shutil.copy(DIRECT, tmp_path / "train.json")
    shutil.copy(DIRECT, tmp_path / "valid.json")
    with pytest.warns(DataSkipWarning, match="split leakage"):  # the same dialogues in both splits
        assert len(load_prosocial_dialog(str(tmp_path), "validation")) == 6
