"""The same turn in two files of a split is an error naming both places; the same dialogue in two splits is
warned about (split leakage) and fails `prosocial data validate` (issue case duplicates-across-files)."""

import json
import shutil
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realworld import EMBEDDED_PD, hub_rows, validate_cli, write_jsonl

from prosocial_lib.data import DataFormatError, DataSkipWarning, last_load_report, load_prosocial_dialog


def _dup_files_folder(tmp_path):
    """The case's layout: train-00001.jsonl repeats every turn of train-00000.jsonl."""
    folder = tmp_path / "pd_dup_files_full"
    shutil.copytree(EMBEDDED_PD, folder)
    shutil.copy(folder / "train-00000.jsonl", folder / "train-00001.jsonl")
    return folder


def test_case_turn_repeated_in_another_file_names_both(tmp_path):
    folder = _dup_files_folder(tmp_path)
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(str(folder), "train")
    assert str(err.value) == (f"{folder}/train-00001.jsonl, row 1, field 'response_id': duplicate turn: dialogue 0 "
                              f"response 0 already appeared in {folder}/train-00000.jsonl row 1")
    with pytest.warns(DataSkipWarning, match="duplicate turn"):
        ds = load_prosocial_dialog(str(folder), "train", strict=False)
    report = last_load_report()
    assert report.rows_skipped == len(ds) == report.rows_read // 2


def test_case_validate_fails_on_the_duplicates(tmp_path, capsys):
    rc, out = validate_cli(capsys, _dup_files_folder(tmp_path), "prosocial", "--split", "train")
    assert rc == 1 and "train-00001.jsonl, row 1, field 'response_id'" in out and "train-00000.jsonl row 1" in out


def test_duplicate_across_a_parquet_and_a_jsonl_shard(tmp_path):
    rows = hub_rows()
    write_jsonl(tmp_path / "train-00000-of-00002.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows[2:3]), tmp_path / "train-00001-of-00002.parquet")
    with pytest.raises(DataFormatError, match="train-00000-of-00002.jsonl row 3") as err:
        load_prosocial_dialog(str(tmp_path), "train")
    assert err.value.file.endswith("train-00001-of-00002.parquet") and err.value.row == 1


def test_duplicate_within_one_file_keeps_its_short_message(tmp_path):
    rows = hub_rows()
    path = write_jsonl(tmp_path / "train.jsonl", rows + rows[:1])
    with pytest.raises(DataFormatError, match=r"row 7, field 'response_id': duplicate turn: .* in row 1$"):
        load_prosocial_dialog(str(path))


def _split_copies(tmp_path, shift=0):
    rows = hub_rows()
    write_jsonl(tmp_path / "train.jsonl", rows)
    moved = [dict(r, dialogue_id=r["dialogue_id"] + shift) for r in rows if r["dialogue_id"] == 11]
    write_jsonl(tmp_path / "validation.jsonl", moved)


def test_case_dialogue_in_train_and_validation_warns_in_both(tmp_path):
    _split_copies(tmp_path)
    for split, other in (("train", "validation"), ("validation", "train")):
        with pytest.warns(DataSkipWarning, match=f"dialogue 11 of split '{split}' is also in split '{other}'"):
            load_prosocial_dialog(str(tmp_path), split)
        assert "split leakage" in last_load_report().problems[0]


def test_renumbered_copy_in_another_split_is_still_found(tmp_path):
    _split_copies(tmp_path, shift=1000)  # a new instance: the copy got new ids, the text is the same
    with pytest.warns(DataSkipWarning, match="dialogue 1011 of split 'validation' is also in split 'train' as "
                                             "dialogue 11"):
        load_prosocial_dialog(str(tmp_path), "validation")


def test_validate_fails_on_split_leakage(tmp_path, capsys):
    _split_copies(tmp_path)
    rc, out = validate_cli(capsys, tmp_path, "prosocial", "--split", "validation")
    leak = [line for line in out.splitlines() if "split leakage" in line]
    assert rc == 1 and len(leak) == 1
    assert f"{tmp_path}/validation.jsonl, row 2, field 'dialogue_id'" in leak[0]  # turn 0 is on line 2 and "train.jsonl, row" in leak[0]


def test_embedded_sample_has_no_duplicates_or_leakage():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataSkipWarning)
        for split in ("train", "validation", "test"):
            load_prosocial_dialog("embedded", split)
            assert not last_load_report().problems


def test_direct_download_files_of_two_splits_with_the_same_dialogue(tmp_path):
    rows = hub_rows()
    dialogue = [{"text": r["context"], "labels": [r["response"]], **{k: r[k] for k in (
        "rots", "safety_label", "safety_annotations", "safety_annotation_reasons", "source")}}
        for r in rows if r["dialogue_id"] == 10]
    (tmp_path / "train.json").write_text(json.dumps([dialogue]))
    (tmp_path / "test.json").write_text(json.dumps([dialogue]))
    with pytest.warns(DataSkipWarning, match="split 'test' is also in split 'train'"):
        load_prosocial_dialog(str(tmp_path), "test")
