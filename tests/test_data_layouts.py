"""JSON layouts are told apart by the parsed structure (issue case layout-columnar-json and its class)."""

import json

import pandas as pd
import pytest
from realworld import REAL, hub_rows, validate_cli, write_jsonl

from prosocial_lib.data import DataFormatError, load_casual, load_prosocial_dialog
from prosocial_lib.data.jsonfiles import LAYOUT_NAMES, read_json

KEYS = [(10, 0), (10, 1), (10, 2), (11, 0), (11, 1), (12, 0)]


def keys(ds):
    return list(zip(ds["dialogue_id"], ds["response_id"]))


def test_case_pretty_printed_object_of_columns_loads_its_five_rows():
    ds = load_prosocial_dialog(str(REAL / "pd_columns.json"), "train")
    assert keys(ds) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert ds[0]["context"] == "I want to skip my sister's wedding because her fiance annoys me."


def test_case_columns_file_validates_clean(capsys, tmp_path):
    rc, out = validate_cli(capsys, REAL / "pd_columns.json", "prosocial")
    assert rc == 0 and "read 5 rows, kept 5" in out


@pytest.mark.parametrize("writer", ["records_pretty", "records_compact", "columns_compact", "dataset_to_dict",
                                    "one_record", "pretty_records_named_jsonl"])
def test_every_layout_gives_the_same_rows(tmp_path, writer):
    rows = hub_rows()
    df = pd.DataFrame(rows)
    target = tmp_path / ("train.jsonl" if writer == "pretty_records_named_jsonl" else "train.json")
    if writer == "records_pretty":
        target.write_text(json.dumps(rows, indent=2))
    elif writer == "records_compact":
        df.to_json(target, orient="records")
    elif writer == "columns_compact":  # one line: still an object of columns, not one record
        target.write_text(json.dumps(df.to_dict(orient="list")))
    elif writer == "dataset_to_dict":
        import datasets
        target.write_text(json.dumps(datasets.Dataset.from_list(rows).to_dict(), indent=1))
    elif writer == "one_record":
        target.write_text(json.dumps(rows[0], indent=4))
        assert keys(load_prosocial_dialog(str(target))) == [(rows[0]["dialogue_id"], rows[0]["response_id"])]
        return
    else:  # a new instance: a pretty-printed array saved under a .jsonl name
        target.write_text(json.dumps(rows, indent=2))
    assert keys(load_prosocial_dialog(str(target))) == KEYS


@pytest.mark.parametrize("content, where", [
    (lambda rows: json.dumps(pd.DataFrame(rows).to_dict(), indent=2), "no supported layout"),  # pandas default
    (lambda rows: json.dumps("just a string"), "no supported layout"),
    (lambda rows: json.dumps({"context": ["a", "b"], "response": ["x"]}, indent=2), "lists of one length"),
    (lambda rows: json.dumps(rows, indent=2)[:-40], "line"),  # a truncated download
])
def test_a_file_in_no_layout_is_one_file_level_error(tmp_path, content, where):
    path = tmp_path / "train.json"
    path.write_text(content(hub_rows()))
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(str(path), "train", strict=False)  # no row to skip: the whole file is unusable
    assert str(path) in str(err.value) and where in str(err.value)
    if where != "lists of one length":
        assert LAYOUT_NAMES in str(err.value)


def test_truncated_pretty_array_is_not_read_as_json_lines(tmp_path, capsys):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(hub_rows(), indent=2)[:-40])
    rc, out = validate_cli(capsys, path, "prosocial")
    lines = [x for x in out.splitlines() if str(path) in x]
    assert rc == 1 and "skipped" not in out  # not dozens of "malformed JSON" rows
    assert len(lines) == 1 and "not valid JSON" in lines[0] and "line" in lines[0]


def test_json_lines_file_with_a_bad_line_still_reads_line_by_line(tmp_path):
    rows = hub_rows()
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows[0]) + "\n{not json\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))
    with pytest.warns(UserWarning):
        ds = load_prosocial_dialog(str(path), strict=False)
    assert keys(ds) == KEYS


def test_daily_dialog_reads_columns_records_and_arrays_of_dialogues(tmp_path):
    dialogs = [["Hi , Anna .", "Hello ."], ["Where is it ?", "Over there .", "Thanks !"]]
    layouts = {
        "columns.json": {"dialog": dialogs, "act": [[1, 1], [2, 1, 4]]},
        "records.json": [{"dialog": d} for d in dialogs],
        "dialogues.json": dialogs,
    }
    for name, doc in layouts.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / f"train_{name}").write_text(json.dumps(doc, indent=2))
        ds = load_casual(str(folder), "train")
        assert ds["response"] == ["Hello.", "Over there.", "Thanks!"], name


def test_read_json_reports_the_layout(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"context": ["a"], "response": ["b"]}))
    layout, items = read_json(path, lambda obj: isinstance(obj.get("context"), str))
    assert layout == "columns" and list(items) == [(1, {"context": "a", "response": "b"})]
    write_jsonl(path, [{"context": "a"}, {"context": "b"}])
    layout, items = read_json(path, lambda obj: isinstance(obj.get("context"), str))
    assert layout == "lines" and [r for _, r in items] == [{"context": "a"}, {"context": "b"}]
