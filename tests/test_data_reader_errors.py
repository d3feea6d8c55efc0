"""A file a reader cannot open or parse is one DataFormatError naming the file (and row where there is one), and
the CLI prints one line and exits 1 (issue case reader-errors and its class at every loader)."""

import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realworld import REAL, hub_rows, mic_rows, validate_cli, write_mic

from prosocial_lib.cli import main as prosocial_main
from prosocial_lib.data import DataFormatError, load_casual, load_mic, load_prosocial_dialog

DEEP = "[" * 50_000


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _mic_zip(tmp_path):
    header, rows = mic_rows()
    csv_path = write_mic(tmp_path / "src" / "MIC.csv", header, rows)
    archive = tmp_path / "MIC.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(csv_path, "MIC.csv")
    return archive


# ---------------------------------------------------------------------- parquet
def test_case_zero_byte_and_truncated_parquet(tmp_path):
    zero = tmp_path / "zero_train.parquet"
    zero.write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"zero_train.parquet: not a parquet file \(0 bytes\)"):
        load_prosocial_dialog(str(zero), "train", strict=False)
    with pytest.raises(DataFormatError, match="pd_trunc_train.parquet: not a readable parquet file"):
        load_prosocial_dialog(str(REAL / "pd_trunc_train.parquet"), "train")


def test_parquet_that_is_not_parquet_in_every_loader(tmp_path):
    fake = tmp_path / "dd" / "train.parquet"  # a new instance: a CSV renamed to .parquet
    fake.parent.mkdir()
    fake.write_text("dialog\nhello\n")
    with pytest.raises(DataFormatError, match="not a readable parquet file") as err:
        load_casual(str(fake.parent), "train")
    assert err.value.file == str(fake)
    cut = _parquet(tmp_path / "pd" / "train.parquet", hub_rows())
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="not a readable parquet file"):
        load_prosocial_dialog(str(cut.parent), "train")


# ---------------------------------------------------------------------- zip
def test_case_truncated_mic_zip():
    with pytest.raises(DataFormatError, match="MIC_trunc.zip: not a valid zip archive"):
        load_mic(str(REAL / "MIC_trunc.zip"), "train", strict=False)


def test_zip_with_a_damaged_member(tmp_path):
    archive = _mic_zip(tmp_path)
    data = bytearray(archive.read_bytes())
    data[60:80] = bytes(b ^ 0xFF for b in data[60:80])  # flip bytes inside the compressed member (bad CRC/data)
    archive.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="not a valid zip archive") as err:
        load_mic(str(archive), "train")
    assert err.value.file == str(archive)


def test_daily_dialog_truncated_release_zip(tmp_path):
    inner = tmp_path / "train.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("train/dialogues_train.txt", "Hi . __eou__ Hello . __eou__\n" * 50)
    inner.write_bytes(inner.read_bytes()[:100])
    with pytest.raises(DataFormatError, match="train.zip: not a valid zip archive"):
        load_casual(str(inner), "train")


# ---------------------------------------------------------------------- CSV
def test_case_mic_answer_longer_than_the_csv_field_limit_loads(tmp_path):
    header, rows = mic_rows()
    first_train = next(i for i, r in enumerate(rows) if r[header.index("split")] == "train")
    rows[first_train][header.index("A")] = "x" * 140_000
    path = write_mic(tmp_path / "MIC_long140k.csv", header, rows)
    ds = load_mic(str(path), "train")
    assert max(len(a) for a in ds["A"]) == 140_000
    import csv
    assert csv.field_size_limit() == 131_072  # the module-wide default is restored


def test_mic_unterminated_quote_names_its_row(tmp_path):
    header, rows = mic_rows()
    path = write_mic(tmp_path / "MIC.csv", header, rows)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ',"', 1)  # an opening quote that never closes swallows the rest
    path.write_text("".join(lines))
    with pytest.raises(DataFormatError) as err:
        load_mic(str(path), "train")
    assert (err.value.file, err.value.row, err.value.reason) == (str(path), 3, "malformed CSV")


# ---------------------------------------------------------------------- deeply nested and oversized JSON values
def test_case_deeply_nested_json_line_is_a_malformed_row(tmp_path):
    rows = hub_rows()
    path = tmp_path / "deep_train.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + DEEP + "\n")
    with pytest.raises(DataFormatError) as err:
        load_prosocial_dialog(str(path), "train")
    assert (err.value.row, err.value.reason) == (2, "malformed JSON")
    with pytest.warns(UserWarning):
        assert len(load_prosocial_dialog(str(path), "train", strict=False)) == 1


def test_case_mic_deeply_nested_moral_vector(tmp_path):
    header, rows = mic_rows()
    rows[0][header.index("moral-vector")] = DEEP
    path = write_mic(tmp_path / "MIC.csv", header, rows)
    with pytest.raises(DataFormatError) as err:
        load_mic(str(path), rows[0][header.index("split")])
    assert (err.value.row, err.value.field) == (2, "moral-vector")


@pytest.mark.parametrize("value", [DEEP, "1" * 5000])  # new instances: nesting, an integer past int() limits
def test_oversized_values_in_every_json_layout(tmp_path, value):
    rows = hub_rows()
    text = json.dumps(rows, indent=1).replace('"dialogue_id": 12', f'"dialogue_id": {value}')
    (tmp_path / "train.json").write_text(text)  # a whole document: one file-level error, not a traceback
    with pytest.raises(DataFormatError, match="train.json"):
        load_prosocial_dialog(str(tmp_path / "train.json"), strict=False)
    dd = tmp_path / "dd" / "train.jsonl"
    dd.parent.mkdir()
    dd.write_text('{"dialog": ["Hi .", "Hello ."]}\n' + '{"dialog": ' + value + '}\n')
    with pytest.raises(DataFormatError) as err:
        load_casual(str(dd.parent), "train")
    assert (err.value.file, err.value.row) == (str(dd), 2)


# ---------------------------------------------------------------------- the CLI: one line, exit 1
@pytest.mark.parametrize("kind, make", [
    ("prosocial", lambda tmp: (tmp / "zero_train.parquet", b"")),
    ("prosocial", lambda tmp: (tmp / "trunc_train.parquet", (REAL / "pd_trunc_train.parquet").read_bytes())),
    ("mic", lambda tmp: (tmp / "MIC_trunc.zip", (REAL / "MIC_trunc.zip").read_bytes())),
    ("prosocial", lambda tmp: (tmp / "deep_train.jsonl", DEEP.encode())),
    ("casual", lambda tmp: (tmp / "train.parquet", b"PAR1 not really")),
])
def test_validate_prints_one_line_naming_the_file_and_exits_1(tmp_path, capsys, kind, make):
    path, data = make(tmp_path)
    path.write_bytes(data)
    rc, out = validate_cli(capsys, path, kind)
    assert rc == 1 and "Traceback" not in out
    assert [line for line in out.splitlines() if str(path) in line]


def test_summary_and_export_print_one_line_for_a_broken_file(tmp_path, capsys):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"")
    for argv in (["data", "summary", str(tmp_path), "--kind", "prosocial"],
                 ["data", "export", str(tmp_path), "--kind", "prosocial", "--out", str(tmp_path / "o.jsonl")]):
        assert prosocial_main([*argv, "--preset", "smoke"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and "0 bytes" in err[0]

