"""A file or split with no rows fails (strict) or warns (strict=False), naming the file; `prosocial data validate`
fails on it (issue case empty-inputs and its class at every loader)."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realworld import EMBEDDED_PD, REAL, hub_rows, mic_rows, validate_cli, write_mic

from prosocial_lib.data import (
    DataFormatError,
    DataSkipWarning,
    last_load_report,
    load_casual,
    load_mic,
    load_prosocial_dialog,
)


def _pd_folder_with_empty_train(tmp_path):
    folder = tmp_path / "pd_empty_train_full"
    folder.mkdir()
    for f in EMBEDDED_PD.glob("*.jsonl"):
        shutil.copy(f, folder / f.name)
        if f.name.startswith("train"):
            (folder / f.name).write_bytes(b"")
    return folder


def test_case_empty_jsonl_fails_and_warns_when_not_strict(tmp_path):
    path = tmp_path / "empty_train.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"empty_train.jsonl: no rows: the file is empty \(0 bytes\)"):
        load_prosocial_dialog(str(path), "train")
    with pytest.warns(DataSkipWarning, match="empty_train.jsonl: no rows"):
        assert len(load_prosocial_dialog(str(path), "train", strict=False)) == 0
    assert last_load_report().problems == [f"{path}: no rows: the file is empty (0 bytes)"]


def test_case_header_only_mic_csv():
    path = str(REAL / "MIC_header_only.csv")
    with pytest.raises(DataFormatError, match="MIC_header_only.csv: no rows: only a header line"):
        load_mic(path, "train")
    with pytest.warns(DataSkipWarning, match="only a header line"):
        load_mic(path, "train", strict=False)


def test_case_split_of_empty_shards_names_each_file(tmp_path):
    folder = _pd_folder_with_empty_train(tmp_path)
    with pytest.raises(DataFormatError, match="train-00000.jsonl: no rows"):
        load_prosocial_dialog(str(folder), "train")
    with pytest.warns(DataSkipWarning):
        load_prosocial_dialog(str(folder), "train", strict=False)
    assert len(last_load_report().problems) == 2  # both shards
    expected = len(load_prosocial_dialog("embedded", "validation"))  # the folder copies the embedded sample
    assert len(load_prosocial_dialog(str(folder), "validation")) == expected  # the other splits are fine


@pytest.mark.parametrize("case", ["empty_train.jsonl", "MIC_header_only.csv", "pd_empty_train_full"])
def test_case_validate_fails_naming_the_file(tmp_path, capsys, case):
    if case == "empty_train.jsonl":
        path, kind = tmp_path / case, "prosocial"
        path.write_bytes(b"")
    elif case == "MIC_header_only.csv":
        path, kind = REAL / case, "mic"
    else:
        path, kind = _pd_folder_with_empty_train(tmp_path), "prosocial"
    rc, out = validate_cli(capsys, path, kind)
    assert rc == 1 and "OK" not in out and "no rows" in out


@pytest.mark.parametrize("name, content", [
    ("train.json", "[]"),  # new instances: an empty array, an object of empty columns, blank lines
    ("train.json", json.dumps({c: [] for c in hub_rows()[0]})),
    ("train.jsonl", "\n \n\n"),
])
def test_empty_documents_in_every_layout(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFormatError, match=f"{name}: no rows"):
        load_prosocial_dialog(str(tmp_path / name), "train")


def test_parquet_with_no_rows(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(hub_rows()).slice(0, 0), path)
    with pytest.raises(DataFormatError, match="no rows: the file holds no records"):
        load_prosocial_dialog(str(tmp_path), "train")


def test_mic_split_with_no_rows_is_named(tmp_path):
    header, rows = mic_rows()
    rows = [r for r in rows if r[header.index("split")] != "dev"]
    path = write_mic(tmp_path / "MIC.csv", header, rows)
    with pytest.raises(DataFormatError, match=r"MIC.csv: 0 rows in split 'dev'"):
        load_mic(str(path), "validation")
    assert len(load_mic(str(path), "train")) > 0


def test_every_row_bad_warns_that_the_split_is_empty(tmp_path):
    rows = hub_rows()
    for r in rows:
        r["safety_label"] = "__unknown__"
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(DataSkipWarning, match=r"0 rows in split 'train' \(all 6 rows read were skipped"):
        load_prosocial_dialog(str(path), "train", strict=False)


def test_daily_dialog_empty_files_and_splits(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "dialogues_train.txt").write_text("")
    with pytest.raises(DataFormatError, match="dialogues_train.txt: no rows"):
        load_casual(str(tmp_path), "train")
    (tmp_path / "validation.jsonl").write_text(json.dumps({"dialog": ["Only one utterance ."]}) + "\n")
    with pytest.raises(DataFormatError, match=r"0 \(history, response\) examples in split 'validation'"):
        load_casual(str(tmp_path), "validation")


def test_hub_split_with_no_rows(monkeypatch):
    import datasets

    from prosocial_lib.data import casual, prosocial_dialog
    monkeypatch.setattr(prosocial_dialog, "_load_hub_dataset", lambda hub_id, split: datasets.Dataset.from_list([]))
    with pytest.raises(DataFormatError, match="allenai/prosocial-dialog: 0 rows in split 'test'"):
        load_prosocial_dialog("allenai/prosocial-dialog", "test")
    monkeypatch.setattr(casual, "_load_daily_dialog_hub", lambda split: datasets.Dataset.from_list([]))
    with pytest.raises(DataFormatError, match="0 \\(history, response\\) examples in split 'train'"):
        load_casual("daily_dialog", "train")
