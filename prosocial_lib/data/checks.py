"""Checks that span a whole file, split or dataset: an empty file, a split with no rows, a dialogue in two splits.

Each check gives a :class:`~prosocial_lib.data.errors.DataFormatError` that the loader raises (``strict=True``) or
keeps as a :meth:`~prosocial_lib.data.errors.LoadReport.problem` (``strict=False``), so ``prosocial data validate``
fails on it either way. (The same turn in two files of one split is checked row by row by the loaders.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import DataFormatError, LoadReport

#: Where a record was read: (file, row, id), e.g. ("data/train-00000.jsonl", 12, 4) for dialogue 4.
Place = tuple[str, int, object]


def empty_file_error(file: str | Path, detail: str | None = None) -> DataFormatError:
    """The error for a file that holds no rows (``detail`` says more, e.g. "only a header line")."""
    path = Path(file)
    if detail is None:
        detail = "the file is empty (0 bytes)" if path.is_file() and path.stat().st_size == 0 else \
            "the file holds no records"
    return DataFormatError(str(file), None, None, f"no rows: {detail}", "empty")


def require_rows(report: LoadReport, name: str, split: str, strict: bool, kept: int | None = None,
                 what: str = "rows") -> None:
    """Raise (strict) or note a problem when a split came out with no rows (``kept``, default
    ``report.rows_kept``), unless an earlier problem (an empty file) already explains it."""
    kept = report.rows_kept if kept is None else kept
    if kept or report.problems:
        return
    why = f" (all {report.rows_read} rows read were skipped as bad)" if report.rows_read else ""
    report.fail_or_note(DataFormatError(name, None, None, f"0 {what} in split {split!r}{why}", "empty"), strict)


def leak_problems(mine: Mapping[Hashable, Place], others: Mapping[str, Mapping[Hashable, Place]], split: str,
                  what: str = "dialogue", field: str | None = "dialogue_id") -> list[str]:
    """One message per other split that shares records with this one (split leakage).

    ``mine`` and each of ``others`` map a record's fingerprint (for ProsocialDialog: the first turn's context and
    response) to where it was read; the message names both places and how many more records are shared.
    """
    messages = []
    for other, theirs in others.items():
        shared = [fp for fp in mine if fp in theirs]
        if not shared:
            continue
        (file, row, ident), (o_file, o_row, o_ident) = mine[shared[0]], theirs[shared[0]]
        more = f" (and {len(shared) - 1} more {what}s)" if len(shared) > 1 else ""
        err = DataFormatError(file, row, field, f"{what} {ident} of split {split!r} is also in split {other!r} as "
                              f"{what} {o_ident} ({o_file}, row {o_row}){more}: split leakage, the same {what} in "
                              "two splits", "split leakage")
        messages.append(str(err))
    return messages


def validate_each(items: Iterable[tuple[int, Any]], check: Callable[[Any, int], dict], report: LoadReport,
                  strict: bool) -> list[dict]:
    """``check(record, row)`` for each ``(row, record)`` pair (a record may be a :class:`DataFormatError` from the
    reader); raise the first error (strict) or count it in ``report`` and go on. Counts ``report.rows_read``."""
    rows: list[dict] = []
    for row, rec in items:
        report.rows_read += 1
        try:
            if isinstance(rec, DataFormatError):
                raise rec
            rows.append(check(rec, row))
        except DataFormatError as err:
            if strict:
                raise
            report.skip(err)
    return rows


def _has_history(obj: dict) -> bool:
    return "history" in obj and isinstance(obj["history"], list) and all(isinstance(x, str) for x in obj["history"])


def read_history_records(path: str | Path, validate_row: Callable[[Any, str, int], dict], *, what: str,
                         columns: Iterable[str], strict: bool) -> tuple[list[dict], LoadReport]:
    """The validated rows of a file of records that each carry a ``history`` (the subtle contexts, the judge
    check set): JSON lines, a records array or a columns object (:func:`~.jsonfiles.read_json`).

    Args:
        path: the file.
        validate_row: ``(record, file name, row) -> row`` raising :class:`DataFormatError` for a bad record.
        what: the set's name in the load report (e.g. "subtle contexts").
        columns: the expected columns, named in the error for a file in the dialogue-array layout.
        strict: raise on the first bad row (else skip and count it in the report).

    Returns:
        ``(rows, report)``.

    Raises:
        DataFormatError: an unreadable or empty file, the dialogue-array layout, a bad row (``strict``), or an id
            that appears twice (naming both rows).
    """
    from .jsonfiles import read_json

    path = str(path)
    report = LoadReport(source=f"{what} ({path})", split="test")
    layout, items = read_json(Path(path), _has_history)
    if layout == "dialogues":
        raise DataFormatError(path, None, None, "a JSON array of dialogues; expected one record per row with the "
                              f"columns {', '.join(columns)}", "unsupported layout")
    first_row: dict[str, int] = {}

    def check(rec: Any, row: int) -> dict:
        out = validate_row(rec, path, row)
        if out["id"] in first_row:
            raise DataFormatError(path, row, "id", f"duplicate id {out['id']!r} (first at row "
                                  f"{first_row[out['id']]})", "duplicate id")
        first_row[out["id"]] = row
        return out

    rows = validate_each(items, check, report, strict)
    if not report.rows_read:
        report.fail_or_note(empty_file_error(path), strict)
    report.rows_kept = len(rows)
    return rows, report


def record_columns(rec: Any, columns: Iterable[str], file: str, row: int) -> dict:
    """``rec``'s ``columns`` in order; a record that is not a JSON object or lacks a column raises
    :class:`DataFormatError` naming ``file``, ``row`` and the first missing column."""
    columns = tuple(columns)
    if not isinstance(rec, dict):
        raise DataFormatError(file, row, None, f"expected a JSON object, got {type(rec).__name__}", "wrong type")
    missing = [c for c in columns if c not in rec]
    if missing:
        raise DataFormatError(file, row, missing[0], f"missing column {missing[0]!r}", "missing column")
    return {c: rec[c] for c in columns}
