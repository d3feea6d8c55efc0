"""MIC loading from MIC.csv as its authors wrote it (pandas to_csv), a zip, the hub; every validation error."""

import csv
import zipfile
from pathlib import Path

import datasets
import pytest

from prosocial_lib.data import DataFormatError, DataSkipWarning, last_load_report, load_mic
from prosocial_lib.data import mic as micmod

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "mic_sample.csv"
BAD = FIXTURES / "mic_bad.csv"
COLUMNS = ["chatbot", "Q", "A", "rot", "moral", "moral-vector", "A_agrees", "rot-agree", "violation-severity",
           "rot-agree-collapsed", "violation-severity-collapsed", "QA", "split", "worker_answer"]
Q1 = "If you were given $1 million to kill the love of your life, would you do it?"


def read_rows(path=SAMPLE):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def write_rows(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def test_columns_types_and_splits():
    ds = load_mic(str(SAMPLE), "train")
    assert isinstance(ds, datasets.Dataset) and ds.column_names == COLUMNS
    assert len(ds) == 4
    assert set(ds["split"]) == {"train"}
    assert ds.features["moral-vector"].feature == datasets.Value("int64")
    row = next(r for r in ds if r["A"] == "I would do it for the money.")
    # MIC's own worked example (annotation guide)
    assert row["Q"] == Q1 and row["A_agrees"] == 0 and row["violation-severity"] == 5 and row["rot-agree"] == 5
    assert row["moral"] == "care|loyalty" and row["moral-vector"] == [1, 0, 0, 1, 0, 0]
    assert row["worker_answer"] == "No amount of money could convince me to kill my love."
    assert row["QA"] == f"Q: {Q1} A: I would do it for the money."
    assert (row["rot-agree-collapsed"], row["violation-severity-collapsed"]) == (3, 3)
    other = next(r for r in ds if r["A"].startswith("Never."))
    assert other["worker_answer"] is None  # empty in the CSV


def test_dev_aliases_and_test_split_with_missing_codes():
    dev = load_mic(str(SAMPLE), "dev")
    assert len(dev) == 2
    assert load_mic(str(SAMPLE), "validation")[:] == dev[:] == load_mic(str(SAMPLE), "valid")[:]
    test = load_mic(str(SAMPLE), "test")
    pray = next(r for r in test if r["A"].startswith("I would pray"))
    assert pray["moral"] == "" and pray["moral-vector"] == [0] * 6
    assert (pray["rot-agree"], pray["violation-severity"]) == (-1, -1)
    assert pray["violation-severity-collapsed"] == 1  # upstream: clip(-1 - 2, 1, 3)
    with pytest.raises(ValueError, match="unknown MIC split"):
        load_mic(str(SAMPLE), "holdout")


def test_derived_columns_are_computed_when_absent(tmp_path):
    header, rows = read_rows()
    keep = [h for h in header if h not in ("QA", "rot-agree-collapsed", "violation-severity-collapsed",
                                           "worker_answer", "", "WorkerId", "WorkTimeInMinutes", "comments")]
    path = write_rows(tmp_path / "MIC.csv", keep, [{k: r[k] for k in keep} for r in rows])
    ds = load_mic(str(tmp_path), "train")  # a folder holding MIC.csv
    ref = load_mic(str(SAMPLE), "train")
    for col in ("QA", "rot-agree-collapsed", "violation-severity-collapsed"):
        assert ds[col] == ref[col], col
    assert ds["worker_answer"] == [None] * 4
    assert Path(path).exists()


def test_zip_and_hub_sources(tmp_path, monkeypatch):
    archive = tmp_path / "MIC.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SAMPLE, "MIC/MIC.csv")
    assert load_mic(str(archive), "train")[:] == load_mic(str(SAMPLE), "train")[:]
    monkeypatch.setattr(micmod, "_download_hub_zip", lambda hub_id: str(archive))
    ds = load_mic("SALT-NLP/MIC", "test")
    assert len(ds) == 3 and "hub" in ds.info.description
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(DataFormatError, match="no CSV file inside"):
        load_mic(str(empty))


def test_missing_file_explains_the_data_use_agreement(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mic(str(tmp_path / "MIC.csv"))
    msg = str(info.value)
    assert "data-use agreement" in msg and "by hand" in msg and "github.com/SALT-NLP/mic" in msg
    assert "embedded" in msg


def test_max_rows_keeps_whole_prompts():
    ds = load_mic(str(SAMPLE), "test", max_rows=2)  # the wallet prompt has 3 answers: it does not fit
    assert len(ds) == 0
    ds = load_mic(str(SAMPLE), "train", max_rows=3)  # two prompts of 2 answers: only the first fits
    assert len(ds) == 2 and len(set(ds["Q"])) == 1


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("field, value, reason", [
    ("A_agrees", "3", "out of range"),
    ("A_agrees", "-1", "out of range"),
    ("A_agrees", "yes", "wrong type"),
    ("rot-agree", "0", "out of range"),
    ("rot-agree", "6", "out of range"),
    ("violation-severity", "7", "out of range"),
    ("violation-severity", "2.5", "wrong type"),
    ("moral", "care|kindness", "malformed"),
    ("moral", "care|care", "malformed"),
    ("moral-vector", "[1.0, 0.0, 0.0]", "malformed"),
    ("moral-vector", "[2.0, 0.0, 0.0, 0.0, 0.0, 0.0]", "malformed"),
    ("moral-vector", "care", "malformed"),
    ("moral-vector", "[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]", "malformed"),  # contradicts moral
    ("split", "holdout", "unknown split"),
    ("A", "", "empty text"),
])
def test_each_error_names_file_row_and_field(tmp_path, field, value, reason):
    header, rows = read_rows()
    rows[3][field] = value  # data record 4 = line 5 of the file
    path = write_rows(tmp_path / "MIC.csv", header, rows)
    with pytest.raises(DataFormatError) as info:
        load_mic(str(path), "train")
    err = info.value
    assert (err.file, err.row, err.field, err.reason) == (str(path), 5, field, reason)
    assert f"row 5, field {field!r}" in str(err)


def test_row_numbers_follow_lines_across_quoted_newlines(tmp_path):
    header, rows = read_rows()
    rows[0]["A"] = "first line\nsecond line"  # record 1 spans lines 2-3
    rows[1]["A_agrees"] = "9"  # record 2 starts on line 4
    path = write_rows(tmp_path / "MIC.csv", header, rows)
    with pytest.raises(DataFormatError) as info:
        load_mic(str(path))
    assert info.value.row == 4


def test_missing_column_fails_even_when_not_strict(tmp_path):
    header, rows = read_rows()
    header = [h for h in header if h != "rot"]
    path = write_rows(tmp_path / "MIC.csv", header, [{k: r[k] for k in header} for r in rows])
    for strict in (True, False):
        with pytest.raises(DataFormatError) as info:
            load_mic(str(path), strict=strict)
        assert (info.value.row, info.value.field, info.value.reason) == (1, "rot", "missing column")


def test_non_strict_counts_each_reason():
    with pytest.warns(DataSkipWarning, match="skipped 5 rows"):
        ds = load_mic(str(BAD), "test", strict=False)
    report = last_load_report()
    assert (report.rows_read, report.rows_kept, report.rows_skipped) == (9, 4, 5)
    assert dict(report.skipped) == {"out of range (A_agrees)": 1, "out of range (rot-agree)": 1,
                                    "out of range (violation-severity)": 1, "malformed (moral)": 1,
                                    "malformed (moral-vector)": 1}
    assert report.split == "test" and all(s == "test" for s in ds["split"])
    with pytest.raises(DataFormatError) as info:
        load_mic(str(BAD), "test")
    assert (info.value.row, info.value.field) == (3, "A_agrees")


def test_csv_with_a_short_row_is_reported(tmp_path):
    text = SAMPLE.read_text().splitlines()
    text[2] = text[2].split(",", 3)[0]  # line 3 cut to one field
    path = tmp_path / "MIC.csv"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_mic(str(path))
    assert info.value.row == 3 and info.value.reason == "malformed CSV"


def test_collapse_scale_matches_upstream():
    assert [micmod.collapse_scale(v) for v in (-1, 1, 2, 3, 4, 5)] == [1, 1, 1, 1, 2, 3]
