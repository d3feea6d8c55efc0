"""Reading the upstream file formats; every problem becomes a :class:`~prosocial_lib.data.errors.DataFormatError`.

A reader yields ``(row, record)`` pairs with the 1-based row an error message should cite; a record that cannot
even be parsed comes out as a ``DataFormatError`` in place of the record, so the loader decides whether to raise
(strict) or count and skip it. A file that cannot be read at all (an empty or truncated parquet file, a broken zip,
a UTF-16 file) raises one ``DataFormatError`` naming the file, never a pyarrow / zipfile / csv traceback.

Text is UTF-8, with or without a byte-order mark (Notepad, PowerShell and Excel's "CSV UTF-8" write one). Bytes
that are not UTF-8 (Latin-1 / Windows-1252 from a spreadsheet, a cut multi-byte character) are kept as lone
surrogates while reading (``errors="surrogateescape"``, PEP 383) and reported per row by :func:`undecodable`.
JSON files are read by :mod:`prosocial_lib.data.jsonfiles`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .errors import DataFormatError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

#: Said wherever the embedded sample shows up: it imitates the upstream schema, it is not the upstream data.
EMBEDDED_NOTICE = ("embedded sample: written for this book in the exact upstream schema; it is NOT the real "
                   "ProsocialDialog / MIC data (the gpu preset loads the real data from the hub)")

_SPLIT_WORDS = {"train": "train", "training": "train", "valid": "validation", "validation": "validation",
                "val": "validation", "dev": "validation", "test": "test"}
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

#: How to fix a file that is not UTF-8; part of every encoding error.
RESAVE_HINT = ("re-save the file as UTF-8 (Excel: Save As > 'CSV UTF-8'; LibreOffice or a text editor: "
               "character set / encoding 'UTF-8'; or convert it: iconv -f WINDOWS-1252 -t UTF-8 IN > OUT)")
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))
_NOT_UTF8 = re.compile("[\udc80-\udcff\x00]")
CSV_FIELD_LIMIT = 2**31 - 1  # csv's default is 131,072 characters; a long MIC answer must still load


# ---------------------------------------------------------------------- file names and splits
def split_of_path(path: Path) -> str | None:
    """The split a file's name (or its folder's name) stands for: ``train-00000.jsonl`` -> "train",
    ``valid.json`` -> "validation", ``default/test/0000.parquet`` -> "test"; None when it names none."""
    for part in (path.name, path.parent.name):
        for word in re.split(r"[-_.\s]+", part.lower()):
            if word in _SPLIT_WORDS:
                return _SPLIT_WORDS[word]
    return None


def split_files(folder: Path, split: str, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[Path]:
    """The data files under ``folder`` (searched recursively, hidden ones left out) whose name ends in one of
    ``suffixes`` and that belong to ``split`` (:func:`split_of_path`), sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [p for p in files if split_of_path(p.relative_to(folder)) == split]


# ---------------------------------------------------------------------- text and encodings
def undecodable(text: str) -> str | None:
    """Where ``text`` (decoded with ``errors="surrogateescape"``) holds a byte that is not UTF-8, or a NUL:
    e.g. ``"byte 0xe9 at column 12"``; None when the text is clean."""
    m = _NOT_UTF8.search(text)
    if m is None:
        return None
    if m.group() == "\x00":
        return f"a NUL byte at column {m.start() + 1}: UTF-16 saved without a byte-order mark?"
    return f"byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1}"


def encoding_error(name: str, row: int | None, field: str | None, where: str) -> DataFormatError:
    """The error for text that is not UTF-8: names the byte and says how to re-save the file."""
    return DataFormatError(name, row, field, f"not valid UTF-8 ({where}); {RESAVE_HINT}", "not UTF-8")


def check_not_utf16(head: bytes, name: str) -> None:
    """Raise :class:`DataFormatError` when ``head`` (a file's first bytes) starts with a UTF-16 or UTF-32
    byte-order mark (Excel's "Unicode Text", Notepad's "UTF-16"): the whole file is in the wrong encoding."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            raise DataFormatError(name, 1, None, f"the file is {encoding} (it starts with a {encoding} byte-order "
                                  f"mark), not UTF-8; {RESAVE_HINT}", "not UTF-8")


def wrap_text(raw: io.BufferedIOBase, name: str) -> TextIO:
    """A text stream over a binary one: UTF-8 with an optional byte-order mark, undecodable bytes kept as
    surrogates, line endings untranslated (``newline=""``: ``\\n``, ``\\r\\n`` and old Mac ``\\r`` all end a line)."""
    check_not_utf16(raw.peek(4)[:4] if hasattr(raw, "peek") else b"", name)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


def open_text(path: Path) -> TextIO:
    """:func:`wrap_text` over a file on disk."""
    return wrap_text(open(path, "rb"), str(path))


# ---------------------------------------------------------------------- parquet
def iter_parquet(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Rows of a parquet file (the row is the 1-based record number), after checking ``required`` columns.

    Raises :class:`DataFormatError` naming the file for an empty (0-byte) or unreadable parquet file (truncated,
    or not parquet at all) and for a missing column. Uses ``pyarrow.parquet.read_table``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    if path.stat().st_size == 0:
        raise DataFormatError(name, None, None, "not a parquet file (0 bytes): the file is empty; download or "
                              "export it again", "unreadable file")
    try:
        table = pq.read_table(path)
        records = table.to_pylist()
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"^Could not open Parquet input source '.*?': ", "", first).split(". Either")[0]
        raise DataFormatError(name, None, None, f"not a readable parquet file ({first}): it may be truncated or "
                              "not parquet at all; download or export it again", "unreadable file") from e
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise DataFormatError(name, None, missing[0], f"missing column {missing[0]!r} (the file has "
                              f"{', '.join(table.column_names)})", "missing column")
    yield from enumerate(records, start=1)


# ---------------------------------------------------------------------- zip archives
@contextlib.contextmanager
def zip_errors(name: str) -> Iterator[None]:
    """Turn what :mod:`zipfile` raises on a broken archive (truncated, bad CRC, unsupported or encrypted member)
    into one :class:`DataFormatError` naming the archive."""
    try:
        yield
    except RecursionError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "encrypted" not in str(e):
            raise
        raise DataFormatError(name, None, None, f"not a valid zip archive ({e}): it may be truncated or damaged; "
                              "download it again, or extract it by hand and pass the extracted file",
                              "unreadable file") from e


# ---------------------------------------------------------------------- CSV
@contextlib.contextmanager
def csv_field_limit(limit: int = CSV_FIELD_LIMIT) -> Iterator[None]:
    """Raise :func:`csv.field_size_limit` while reading (the default, 131,072 characters, rejects long answers)."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def read_csv(stream: TextIO, name: str) -> tuple[list[str], list[tuple[int, dict | DataFormatError]]]:
    """The header and the rows of a CSV stream (from :func:`wrap_text`).

    A row's number is the line on which its record starts (the header is line 1), so quoted fields that span
    lines still point at the right place. A row with the wrong number of fields or with bytes that are not UTF-8
    comes back as a :class:`DataFormatError` naming row (and field); a CSV syntax error the reader cannot get past
    raises one, naming the line. Fields may be up to :data:`CSV_FIELD_LIMIT` characters. Uses :func:`csv.reader`.
    """
    reader = csv.reader(stream)
    rows: list[tuple[int, dict | DataFormatError]] = []
    with csv_field_limit():
        try:
            header = next(reader, None)
            if header is None:
                raise DataFormatError(name, None, None, "no rows: the file is empty (no header line)", "empty")
            bad = next((w for w in map(undecodable, header) if w), None)
            if bad:
                raise encoding_error(name, 1, None, bad)
            start = reader.line_num + 1
            for values in reader:
                if values:  # not a blank line
                    rows.append((start, _csv_record(header, values, name, start)))
                start = reader.line_num + 1
        except csv.Error as e:
            raise DataFormatError(name, reader.line_num, None, f"malformed CSV ({e})", "malformed CSV") from e
    return header, rows


def _csv_record(header: list[str], values: list[str], name: str, row: int) -> dict | DataFormatError:
    if len(values) != len(header):
        return DataFormatError(name, row, None, f"expected {len(header)} fields, found {len(values)}",
                               "malformed CSV")
    for col, value in zip(header, values):
        where = undecodable(value)
        if where:
            return encoding_error(name, row, col or None, where.replace("column", "character"))
    return dict(zip(header, values))
