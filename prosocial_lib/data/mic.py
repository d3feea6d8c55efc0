"""MIC, the Moral Integrity Corpus (Ziems et al., ACL 2022): chatbot answers to AskReddit prompts, each judged
against a rule of thumb (RoT) with moral foundations, agreement, consensus and violation severity.

:func:`load_mic` reads ``MIC.csv`` as its authors wrote it (``pandas.DataFrame.to_csv``: an unnamed index column
first, ``moral-vector`` as ``"[1.0, 0.0, ...]"``, missing codes as -1) from

- ``"embedded"``: the book's sample ``samples/mic/MIC.csv`` (written for this book in MIC's schema; NOT real MIC);
- a local ``MIC.csv`` (the official file: behind a data-use agreement, downloaded by hand), a folder holding it,
  or a ``.zip`` that contains it;
- ``"SALT-NLP/MIC"``: the hub repository, which wraps the same CSV in ``MIC.zip`` (online).

The split comes from the file's ``split`` column (train / dev / test, split by prompt-reply pair upstream).
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import datasets

from .checks import empty_file_error, require_rows, validate_each
from .errors import DataFormatError, LoadReport, _set_last_report
from .labels import MORAL_FOUNDATIONS
from .prosocial_dialog import is_hub_id
from .readers import EMBEDDED_NOTICE, SAMPLES_DIR, open_text, read_csv, wrap_text, zip_errors

HUB_ID = "SALT-NLP/MIC"
EMBEDDED_FILE = SAMPLES_DIR / "mic" / "MIC.csv"
SPLITS = ("train", "dev", "test")
DATA_USE_URL = "https://github.com/SALT-NLP/mic"  # README links the data-use agreement form and the download

REQUIRED: tuple[str, ...] = ("chatbot", "Q", "A", "rot", "moral", "moral-vector", "A_agrees", "rot-agree",
                             "violation-severity", "split")
#: Output columns: the required ones plus the collapsed scales, QA and the worker's rewrite (None when absent).
COLUMNS: tuple[str, ...] = ("chatbot", "Q", "A", "rot", "moral", "moral-vector", "A_agrees", "rot-agree",
                            "violation-severity", "rot-agree-collapsed", "violation-severity-collapsed", "QA",
                            "split", "worker_answer")

FEATURES = datasets.Features({
    "chatbot": datasets.Value("string"),
    "Q": datasets.Value("string"),
    "A": datasets.Value("string"),
    "rot": datasets.Value("string"),
    "moral": datasets.Value("string"),
    "moral-vector": datasets.Sequence(datasets.Value("int64")),
    "A_agrees": datasets.Value("int64"),
    "rot-agree": datasets.Value("int64"),
    "violation-severity": datasets.Value("int64"),
    "rot-agree-collapsed": datasets.Value("int64"),
    "violation-severity-collapsed": datasets.Value("int64"),
    "QA": datasets.Value("string"),
    "split": datasets.Value("string"),
    "worker_answer": datasets.Value("string"),
})

_MAX_VECTOR_CHARS = 200  # "[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]" has 30

_RANGES = {"A_agrees": (0, 1, 2), "rot-agree": (-1, 1, 2, 3, 4, 5), "violation-severity": (-1, 1, 2, 3, 4, 5),
           "rot-agree-collapsed": (1, 2, 3), "violation-severity-collapsed": (1, 2, 3)}


def missing_file_message(path: str | Path) -> str:
    return (f"MIC.csv not found at {path}. The official MIC is released under a data-use agreement, so no "
            f"program can fetch it for you: sign the agreement linked from {DATA_USE_URL} (README: 'Data Use "
            f"Agreement'), download MIC.csv by hand from the link it gives, and pass its path as source. "
            f"Offline, source='embedded' loads the book's sample (written for this book, not the real MIC).")


def collapse_scale(value: int) -> int:
    """MIC's ``*-collapsed`` columns: drop the bottom of a 1-5 scale, ``clip(value - 2, 1, 3)`` (as upstream)."""
    return min(max(value - 2, 1), 3)


# ---------------------------------------------------------------------- validation of one row
def _parse_int(value: Any, file: str, row: int, field: str) -> int:
    if isinstance(value, bool):
        raise DataFormatError(file, row, field, f"expected an integer, got {value!r}", "wrong type")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise DataFormatError(file, row, field, f"expected an integer, got {text!r:.40}", "wrong type") from None
    if not number.is_integer():
        raise DataFormatError(file, row, field, f"expected an integer, got {text!r:.40}", "wrong type")
    return int(number)


def _parse_vector(value: Any, file: str, row: int) -> list[int]:
    field = "moral-vector"
    if isinstance(value, str):
        if len(value) > _MAX_VECTOR_CHARS:  # never hand a huge or deeply nested value to a parser
            raise DataFormatError(file, row, field, f"malformed moral-vector ({len(value)} characters, "
                                  f"starting {value[:20]!r}): expected six 0/1 entries like "
                                  "[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]", "malformed")
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise DataFormatError(file, row, field, f"malformed moral-vector {value!r:.60}: expected six 0/1 "
                                      "entries like [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]", "malformed") from None
    else:
        parsed = value
    if not isinstance(parsed, (list, tuple)) or len(parsed) != len(MORAL_FOUNDATIONS) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v in (0, 1) for v in parsed):
        raise DataFormatError(file, row, field, f"malformed moral-vector {value!r:.60}: expected six 0/1 entries "
                              f"(one per foundation: {', '.join(MORAL_FOUNDATIONS)})", "malformed")
    return [int(v) for v in parsed]


def _parse_moral(value: Any, file: str, row: int) -> list[str]:
    if value is None or (isinstance(value, float) and value != value):  # NaN from pandas
        return []
    text = str(value).strip()
    if not text:
        return []
    parts = text.split("|")
    bad = [p for p in parts if p not in MORAL_FOUNDATIONS]
    if bad or len(set(parts)) != len(parts):
        what = f"unknown foundation {bad[0]!r}" if bad else "a foundation appears twice"
        raise DataFormatError(file, row, "moral", f"malformed moral {text!r:.60}: {what}; expected '|'-joined "
                              f"names from {', '.join(MORAL_FOUNDATIONS)}", "malformed")
    return parts


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)


def validate_row(rec: dict, file: str, row: int) -> dict:
    """Check one MIC record (CSV strings or typed values) and return it typed, with the derived columns filled.

    Raises :class:`DataFormatError` naming ``file``, ``row`` and the field for a missing column, empty text, a
    non-integer code, an out-of-range code (``A_agrees`` not in 0..2, ``rot-agree`` / ``violation-severity`` not in
    1..5 or -1), a malformed ``moral`` / ``moral-vector`` or the two disagreeing, or an unknown split.
    """
    for col in REQUIRED:
        if col not in rec:
            raise DataFormatError(file, row, col, f"missing column {col!r}", "missing column")
    out: dict[str, Any] = {}
    for col in ("chatbot", "Q", "A", "rot"):
        text = _text(rec[col])
        if text is None or not text.strip():
            raise DataFormatError(file, row, col, "empty text", "empty text")
        out[col] = text
    morals = _parse_moral(rec["moral"], file, row)
    vector = _parse_vector(rec["moral-vector"], file, row)
    implied = [int(f in morals) for f in MORAL_FOUNDATIONS]
    if vector != implied:
        raise DataFormatError(file, row, "moral-vector", f"moral-vector {vector} contradicts moral "
                              f"{'|'.join(morals)!r}, which gives {implied}", "malformed")
    out["moral"] = "|".join(morals)
    out["moral-vector"] = vector
    for col in ("A_agrees", "rot-agree", "violation-severity"):
        out[col] = _parse_int(rec[col], file, row, col)
    for col in ("rot-agree", "violation-severity"):
        derived = f"{col}-collapsed"
        raw = _text(rec.get(derived))
        out[derived] = collapse_scale(out[col]) if raw is None or not raw.strip() else _parse_int(raw, file, row,
                                                                                                  derived)
    for col, allowed in _RANGES.items():
        if out[col] not in allowed:
            lo_hi = "0..2" if col == "A_agrees" else ("1..3" if col.endswith("collapsed") else "1..5 or -1")
            raise DataFormatError(file, row, col, f"{col} = {out[col]} is out of range: expected {lo_hi}",
                                  "out of range")
    split = (_text(rec["split"]) or "").strip()
    if split not in SPLITS:
        raise DataFormatError(file, row, "split", f"unknown split {split!r}; expected train, dev or test",
                              "unknown split")
    out["split"] = split
    qa = _text(rec.get("QA"))
    out["QA"] = qa if qa and qa.strip() else f"Q: {out['Q'].strip()} A: {out['A'].strip()}"
    worker = _text(rec.get("worker_answer"))
    out["worker_answer"] = worker if worker and worker.strip() else None
    return {c: out[c] for c in COLUMNS}


def validate_records(records: Iterable[tuple[int, Any]], file: str, report: LoadReport, strict: bool) -> list[dict]:
    return validate_each(records, lambda rec, row: validate_row(rec, file, row), report, strict)


# ---------------------------------------------------------------------- reading
def _read_csv_stream(stream: TextIO, name: str, strict: bool, label: str) -> tuple[list[dict], LoadReport]:
    header, rows = read_csv(stream, name)
    missing = [c for c in REQUIRED if c not in header]
    if missing:  # the whole file is unusable: raise even when strict=False
        raise DataFormatError(name, 1, missing[0], f"missing column {missing[0]!r} in the header (found: "
                              f"{', '.join(h or '<unnamed>' for h in header)})", "missing column")
    report = LoadReport(source=label, split="all")
    kept = validate_records(rows, name, report, strict)
    report.rows_kept = len(kept)
    if not rows:
        report.fail_or_note(empty_file_error(name, "only a header line"), strict)
    return kept, report


def _read_zip(path: str, strict: bool, label: str) -> tuple[list[dict], LoadReport]:
    with zip_errors(path), zipfile.ZipFile(path) as zf:
        members = [m for m in zf.namelist() if m.lower().endswith(".csv") and not m.startswith("__MACOSX")]
        member = next((m for m in members if Path(m).name == "MIC.csv"), members[0] if members else None)
        if member is None:
            raise DataFormatError(path, None, None, f"no CSV file inside (members: {', '.join(zf.namelist())}); "
                                  "extract MIC.csv by hand and pass its path", "unsupported file")
        with zf.open(member) as raw:
            name = f"{path}:{member}"
            return _read_csv_stream(wrap_text(raw, name), name, strict, label)


@functools.lru_cache(maxsize=16)
def _read_file_cached(path: str, _mtime: float, _size: int, strict: bool, label: str
                      ) -> tuple[tuple[dict, ...], LoadReport]:
    if Path(path).suffix.lower() == ".zip":
        rows, report = _read_zip(path, strict, label)
    else:
        with open_text(Path(path)) as f:
            rows, report = _read_csv_stream(f, path, strict, label)
    return tuple(rows), report


def _download_hub_zip(hub_id: str) -> str:
    """Path of ``MIC.zip`` from the hub repository (online). Separate so tests can stand a local zip in."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(hub_id, "MIC.zip", repo_type="dataset")
    except Exception as e:  # offline, gated or moved: say what to do instead
        raise FileNotFoundError(f"could not fetch MIC.zip from the hub repository {hub_id!r} ({type(e).__name__}: "
                                f"{e}). {missing_file_message('the hub')}") from e


def _resolve(source: str) -> tuple[Path, str, str]:
    """(file, label, description) for a source."""
    if source == "embedded":
        if not EMBEDDED_FILE.exists():
            raise FileNotFoundError(f"the embedded MIC sample is missing ({EMBEDDED_FILE}): is the package "
                                    "installed completely?")
        return EMBEDDED_FILE, "MIC (embedded sample)", f"MIC, {EMBEDDED_NOTICE}"
    if is_hub_id(source):
        return Path(_download_hub_zip(source)), f"MIC ({source})", f"MIC from the hub ({source})"
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "MIC.csv"
    if not path.exists():
        raise FileNotFoundError(missing_file_message(path))
    return path, f"MIC ({source})", f"MIC from {source}"


def load_mic(source: str = "embedded", split: str = "train", *, strict: bool = True,
             max_rows: int | None = None) -> datasets.Dataset:
    """MIC rows of one split with MIC's columns (see :data:`COLUMNS`), validated and typed.

    ``source``: ``"embedded"`` (the book's sample, NOT the real MIC) | a local ``MIC.csv`` / folder / ``.zip`` |
    ``"SALT-NLP/MIC"`` (hub). ``split``: train | dev | test (``validation`` and ``valid`` mean dev).
    ``max_rows`` keeps whole prompts (all answers to a question), in order of first appearance, while the total
    stays within ``max_rows``. The CSV is read as its authors wrote it (``pandas.DataFrame.to_csv``), UTF-8 with
    or without a byte-order mark; fields may be longer than the csv module's default limit.

    Raises :class:`~prosocial_lib.data.errors.DataFormatError` (file, row, field) for a bad row (see
    :func:`validate_row`), text that is not UTF-8, a broken CSV, zip or header, a file with no rows and a split
    with no rows; ``FileNotFoundError`` (saying how to get MIC) for a missing file. ``strict=False`` skips bad
    rows and notes whole-file problems instead; the counts are in
    :func:`~prosocial_lib.data.errors.last_load_report` and a warning.
    """
    split = "dev" if str(split).strip().lower() in ("validation", "valid", "val", "dev") else str(split).lower()
    if split not in SPLITS:
        raise ValueError(f"unknown MIC split {split!r}; choose train, dev (alias validation, valid) or test")
    source = str(source)
    path, label, description = _resolve(source)
    st = path.stat()
    rows, report = _read_file_cached(str(path), st.st_mtime, st.st_size, strict, label)
    report = copy.deepcopy(report)
    selected = [r for r in rows if r["split"] == split]
    report.split = split
    report.notes.append(f"{len(selected)} of the {report.rows_kept} valid rows are in split {split!r}")
    require_rows(report, str(path), split, strict, kept=len(selected))
    _set_last_report(report)
    report.warn_if_skipped()
    if max_rows is not None:
        sizes: dict[str, int] = {}
        for r in selected:
            sizes[r["Q"]] = sizes.get(r["Q"], 0) + 1
        keep, total = set(), 0
        for q, n in sizes.items():
            if total + n > max_rows:
                continue
            keep.add(q)
            total += n
        selected = [r for r in selected if r["Q"] in keep]
    columns = {c: [r[c] for r in selected] for c in COLUMNS}
    info = datasets.DatasetInfo(description=description, features=FEATURES)
    return datasets.Dataset.from_dict(columns, features=FEATURES, info=info)
