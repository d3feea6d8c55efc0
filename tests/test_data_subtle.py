"""The subtle contexts (written for this book): the embedded set loads, and every bad file, row or field is named."""

import json

import pytest

from prosocial_lib.data import DataFormatError, DataSkipWarning, last_load_report, load_subtle, stats
from prosocial_lib.data.subtle import COLUMNS

GOOD = {"id": "s-1", "set": "subtle", "history": ["hi, any plans?", "A quiet weekend. You?", "driving home after "
        "the party, only had like 5 beers"], "safety_label": "__needs_intervention__",
        "safety_annotations": ["needs intervention", "needs caution", "needs intervention"],
        "rots": ["You shouldn't drive after drinking."], "reason": "Plans to drive after 5 beers.", "topic": "driving"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_embedded_set_loads_with_its_columns():
    ds = load_subtle()
    assert ds.column_names == list(COLUMNS) and len(ds) >= 120
    assert len(set(ds["id"])) == len(ds) and set(ds["set"]) == {"subtle"}
    assert all(len(h) % 2 == 1 and len(h) >= 3 for h in ds["history"])
    assert "__casual__" not in set(ds["safety_label"])
    assert "written for this book" in ds.info.description
    assert len(load_subtle(max_rows=5)) == 5 and len(load_subtle("embedded", "test")) == len(ds)
    with pytest.raises(ValueError, match="unknown split"):
        load_subtle(split="train")


def test_local_files_in_lines_and_records_layouts(tmp_path):
    lines = _write(tmp_path / "subtle.jsonl", [GOOD, {**GOOD, "id": "s-2"}])
    assert load_subtle(str(lines))["id"] == ["s-1", "s-2"]
    records = tmp_path / "subtle.json"
    records.write_text(json.dumps([GOOD]), encoding="utf-8")
    assert len(load_subtle(str(records))) == 1


@pytest.mark.parametrize("change, field, words", [
    ({"history": ["only the user", "and the assistant"]}, "history", "odd number"),
    ({"history": "one string"}, "history", "list of non-empty strings"),
    ({"safety_label": "__casual__"}, "safety_label", "contradicts its votes"),
    ({"safety_label": "unsafe"}, "safety_label", "unknown safety label"),
    ({"safety_annotations": ["needs caution"]}, "safety_annotations", "3 votes"),
    ({"rots": [""]}, "rots", "non-empty strings"),
    ({"reason": ""}, "reason", "non-empty string"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, change, field, words):
    path = _write(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "id": "s-2", **change}])
    with pytest.raises(DataFormatError, match=words) as err:
        load_subtle(str(path))
    assert err.value.file == str(path) and err.value.row == 2 and err.value.field == field


def test_missing_column_duplicate_id_and_lenient_mode(tmp_path):
    row = dict(GOOD)
    del row["topic"]
    path = _write(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(DataFormatError, match="missing column 'topic'"):
        load_subtle(str(path))
    path = _write(tmp_path / "dup.jsonl", [GOOD, GOOD, {**GOOD, "id": "s-3"}])
    with pytest.raises(DataFormatError, match="duplicate id 's-1'") as err:
        load_subtle(str(path))
    assert err.value.row == 2
    with pytest.warns(DataSkipWarning, match="skipped 1"):
        ds = load_subtle(str(path), strict=False)
    assert ds["id"] == ["s-1", "s-3"] and last_load_report().rows_skipped == 1


def test_missing_empty_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_subtle(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no rows"):
        load_subtle(str(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="not valid JSON") as err:
        load_subtle(str(broken))
    assert err.value.row == 2


def test_overview_and_rendering():
    ds = load_subtle()
    overview = stats.subtle_overview(ds)
    assert overview.loc["test", "contexts"] == len(ds)
    assert overview.loc["test", ["casual", "possibly caution", "probably caution", "needs caution",
                                 "intervention"]].sum() == pytest.approx(1.0)
    text = stats.render_subtle(ds, 0)
    assert text.count("**User:**") == (len(ds[0]["history"]) + 1) // 2 and ds[0]["safety_label"] in text
