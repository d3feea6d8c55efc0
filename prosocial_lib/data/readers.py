"""Reading records from the upstream file formats, each with the 1-based row number an error message should cite.

A reader yields ``(row, record)`` pairs; a record that cannot even be parsed comes out as a
:class:`~prosocial_lib.data.errors.DataFormatError` in place of the record, so the loader decides whether to
raise (strict) or count and skip it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataFormatError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: Said wherever the embedded sample shows up: it imitates the upstream schema, it is not the upstream data.
EMBEDDED_NOTICE = ("embedded sample: written for this book in the exact upstream schema; it is NOT the real "
                   "ProsocialDialog / MIC data (the gpu preset loads the real data from the hub)")

_SPLIT_WORDS = {"train": "train", "training": "train", "valid": "validation", "validation": "validation",
                "val": "validation", "dev": "validation", "test": "test"}
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def split_of_path(path: Path) -> str | None:
    """The split a file's name (or its folder's name) stands for: ``train-00000.jsonl`` -> "train",
    ``valid.json`` -> "validation", ``default/test/0000.parquet`` -> "test"; None when it names none."""
    for part in (path.name, path.parent.name):
        for word in re.split(r"[-_.\s]+", part.lower()):
            if word in _SPLIT_WORDS:
                return _SPLIT_WORDS[word]
    return None


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files under ``folder`` (searched recursively) that belong to ``split``, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [p for p in files if split_of_path(p.relative_to(folder)) == split]


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """One JSON object per line; the row is the line number. Blank lines are ignored."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                yield line_no, DataFormatError(str(path), line_no, None, f"not valid JSON ({e.msg})",
                                               "malformed JSON")


def read_json_document(path: Path) -> Any:
    """A whole-file JSON document (e.g. the direct-download format: a list of dialogues)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(str(path), e.lineno, None, f"not valid JSON ({e.msg})", "malformed JSON") from e


def json_layout(path: Path) -> str:
    """``"lines"`` for JSON lines (one object per line, as the hub's ``train.json``), ``"array"`` for one JSON
    array (the direct-download format, or a list of records); decided by the first non-blank character."""
    with open(path, encoding="utf-8") as f:
        while True:
            ch = f.read(1)
            if not ch:
                return "lines"  # empty file: no rows either way
            if not ch.isspace():
                return "array" if ch == "[" else "lines"


def iter_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a parquet file; the row is the 1-based record number."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield i, rec


def parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def iter_csv(stream: io.TextIOBase, name: str) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header and the rows of a CSV stream; a row's number is the line on which its record starts (the
    header is line 1), so quoted fields that span lines still point at the right place."""
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(name, 1, None, "empty file: no header line", "missing column") from None

    def rows() -> Iterator[tuple[int, dict]]:
        start = reader.line_num + 1
        for values in reader:
            if not values:  # blank line
                start = reader.line_num + 1
                continue
            if len(values) != len(header):
                yield start, DataFormatError(name, start, None, f"expected {len(header)} fields, found "
                                             f"{len(values)}", "malformed CSV")
            else:
                yield start, dict(zip(header, values))
            start = reader.line_num + 1

    return header, rows()
