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
