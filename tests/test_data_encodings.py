"""Byte-order marks load; text that is not UTF-8 is a DataFormatError naming file and row, never a bare
UnicodeDecodeError (issue cases bom-jsonl and encodings, and their class at every loader)."""

import json
import zipfile

import pytest
from realworld import REAL, hub_rows, mic_rows, validate_cli, write_jsonl, write_mic

from prosocial_lib.data import DataFormatError, last_load_report, load_casual, load_mic, load_prosocial_dialog
from prosocial_lib.data.readers import RESAVE_HINT

# what spreadsheets and editors write when "UTF-8" is not chosen (Excel: Windows-1252 or Mac Roman for CSV,
# UTF-16 for "Unicode Text"; LibreOffice offers all of them)
SPREADSHEET_ENCODINGS = ["cp1252", "mac_roman", "latin-1", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                         "shift_jis", "gb18030"]
ACCENTED = "Café naïve – “quoted” ’"


def _text_for(encoding):
    return {"shift_jis": "カフェに行こう", "latin-1": "Café naïve"}.get(encoding, ACCENTED)


# ---------------------------------------------------------------------- byte-order marks
def test_case_bom_jsonl_loads_six_rows():
    assert len(load_prosocial_dialog(str(REAL / "pd_bom.jsonl"), "train")) == 6


def test_bom_in_every_layout_and_loader(tmp_path):
    rows = hub_rows()
    records = tmp_path / "records" / "train.json"
    records.parent.mkdir()
    records.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=2).encode())
    assert len(load_prosocial_dialog(str(records))) == 6
    # a new instance: two files joined with `cat`, the second keeping its byte-order mark mid-file
    joined = tmp_path / "joined" / "train.jsonl"
    joined.parent.mkdir()
    joined.write_bytes(write_jsonl(tmp_path / "a.jsonl", rows[:3], bom=True).read_bytes()
                       + write_jsonl(tmp_path / "b.jsonl", rows[3:], bom=True).read_bytes())
    assert len(load_prosocial_dialog(str(joined))) == 6
    header, mic = mic_rows()
    assert len(load_mic(str(write_mic(tmp_path / "MIC.csv", header, mic, encoding="utf-8-sig")), "train")) > 0
    dd = write_jsonl(tmp_path / "dd" / "train.jsonl", [{"dialog": ["Hi .", "Hello ."]}], bom=True)
    assert load_casual(str(dd.parent), "train")["response"] == ["Hello."]


# ---------------------------------------------------------------------- the given cases
@pytest.mark.parametrize("name, row, byte", [("pd_latin1_train.jsonl", 3, "0xe9"),
                                             ("pd_invalid_utf8_train.jsonl", 4, "0xff")])
def test_case_prosocial_file_not_utf8_names_file_line_and_byte(name, row, byte):
    path = str(REAL / name)
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(path, "train")
    assert (err.value.file, err.value.row, err.value.reason) == (path, row, "not UTF-8")
    assert f"byte {byte} at column" in str(err.value) and RESAVE_HINT in str(err.value)
    with pytest.warns(UserWarning, match="not UTF-8"):
        ds = load_prosocial_dialog(path, "train", strict=False)
    report = last_load_report()
    assert report.rows_skipped == 1 and len(ds) == report.rows_read - 1


def test_case_mic_latin1_names_row_and_field():
    path = str(REAL / "MIC_latin1.csv")
    with pytest.raises(DataFormatError) as err:
        load_mic(path, "train")
    assert (err.value.row, err.value.field) == (2, "A") and "byte 0xe9" in str(err.value)
    with pytest.warns(UserWarning):
        load_mic(path, "train", strict=False)
    assert last_load_report().skipped == {"not UTF-8 (A)": 1}


def test_case_validate_prints_the_line_and_exits_1(capsys):
    rc, out = validate_cli(capsys, REAL / "pd_latin1_train.jsonl", "prosocial")
    assert rc == 1 and "Traceback" not in out
    assert any("pd_latin1_train.jsonl, row 3" in line and "not valid UTF-8" in line for line in out.splitlines())


# ---------------------------------------------------------------------- the class: every encoding, every loader
@pytest.mark.parametrize("encoding", SPREADSHEET_ENCODINGS)
def test_mic_csv_saved_by_a_spreadsheet_in_another_encoding(tmp_path, encoding):
    header, rows = mic_rows()
    rows[1][header.index("A")] = _text_for(encoding)
    path = write_mic(tmp_path / "MIC.csv", header, rows, encoding=encoding)
    with pytest.raises(DataFormatError) as err:
        load_mic(str(path), "train")
    assert err.value.file == str(path) and err.value.reason == "not UTF-8" and err.value.row is not None
    assert RESAVE_HINT in str(err.value)


@pytest.mark.parametrize("encoding", SPREADSHEET_ENCODINGS)
def test_prosocial_jsonl_in_another_encoding(tmp_path, encoding):
    rows = hub_rows()
    rows[2]["response"] = _text_for(encoding)
    path = write_jsonl(tmp_path / "train.jsonl", rows, encoding=encoding)
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(str(path), "train")
    assert err.value.file == str(path) and err.value.reason == "not UTF-8" and err.value.row is not None
    if encoding.startswith("utf-"):  # the whole file is in another encoding: nothing to skip row by row
        with pytest.raises(DataFormatError, match="not UTF-8|NUL"):
            load_prosocial_dialog(str(path), "train", strict=False)
    else:  # one row holds a byte that is not UTF-8: it is skipped and counted
        with pytest.warns(UserWarning, match="not UTF-8"):
            assert len(load_prosocial_dialog(str(path), "train", strict=False)) == 5


def test_one_bad_byte_in_each_layout_skips_one_row(tmp_path):
    rows = hub_rows()
    rows[4]["context"] = "CAFE_MARK"
    as_array = json.dumps(rows, indent=2).encode().replace(b"CAFE_MARK", b"Caf\xe9")
    path = tmp_path / "train.json"
    path.write_bytes(as_array)
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(str(path))
    assert (err.value.row, err.value.field) == (5, "context")  # the fifth record
    with pytest.warns(UserWarning):
        assert len(load_prosocial_dialog(str(path), strict=False)) == 5


def test_mic_zip_member_in_windows_1252(tmp_path):
    header, rows = mic_rows()
    rows[0][header.index("Q")] = "Don’t you think so?"
    csv_path = write_mic(tmp_path / "MIC.csv", header, rows, encoding="cp1252")
    archive = tmp_path / "MIC.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(csv_path, "MIC/MIC.csv")
    with pytest.raises(DataFormatError) as err:
        load_mic(str(archive), "train")
    assert err.value.file == f"{archive}:MIC/MIC.csv" and (err.value.row, err.value.field) == (2, "Q")


def test_daily_dialog_original_text_in_latin1(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "dialogues_train.txt").write_bytes(
        "Hi . __eou__ Hello . __eou__\nCaf\xe9 ? __eou__ Yes . __eou__\n".encode("latin-1"))
    with pytest.raises(DataFormatError) as err:
        load_casual(str(tmp_path), "train")
    assert err.value.row == 2 and "dialogues_train.txt" in err.value.file and "byte 0xe9" in str(err.value)
    with pytest.warns(UserWarning):
        assert load_casual(str(tmp_path), "train", strict=False)["response"] == ["Hello."]
