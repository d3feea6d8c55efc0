"""Errors and load reports: bad input names its file, row and field; skipped rows are counted, never silent.

Every loader either raises :class:`DataFormatError` at the first bad row (``strict=True``) or skips bad rows and
records why in a :class:`LoadReport` (``strict=False``), warns with the counts, and keeps the report for
:func:`last_load_report`. That function is the one way to get a report: loaders return a plain
``datasets.Dataset`` so they compose with the rest of the Hugging Face stack.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class DataFormatError(ValueError):
    """A row that does not match the upstream schema.

    Attributes: ``file`` (path as given), ``row`` (1-based: the line in a JSON-lines or CSV file, where the CSV
    header is line 1, or the record number in a JSON array or parquet file; None for the whole file), ``field``
    (column name), ``problem`` (what is wrong) and ``reason`` (a short category used to count skipped rows).
    """

    def __init__(self, file: str, row: int | None, field: str | None, problem: str, reason: str = "invalid"):
        self.file = str(file)
        self.row = row
        self.field = field
        self.problem = problem
        self.reason = reason
        where = self.file if row is None else f"{self.file}, row {row}"
        what = f", field {field!r}" if field else ""
        super().__init__(f"{where}{what}: {problem}")

    @property
    def category(self) -> str:
        """The key under which a skipped row is counted, e.g. ``"unknown safety label (safety_label)"``."""
        return f"{self.reason} ({self.field})" if self.field else self.reason


class DataSkipWarning(UserWarning):
    """Rows or turns were skipped while loading; the message says how many and why."""


@dataclass
class LoadReport:
    """What one load did: rows read, rows kept, and the skipped rows counted by reason."""

    source: str
    split: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few error messages, to show the user
    notes: list[str] = field(default_factory=list)
    #: Whole-file or whole-split problems that ``strict=False`` let through (an empty file, a dialogue in two
    #: splits), one message each; ``prosocial data validate`` fails on them as on skipped rows.
    problems: list[str] = field(default_factory=list)

    MAX_EXAMPLES = 5

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, err: DataFormatError) -> None:
        self.skipped[err.category] += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(str(err))

    def problem(self, err: DataFormatError | str) -> None:
        """Record a whole-file or whole-split problem (strict=False): it is warned about and counted by
        ``prosocial data validate``, but no row is skipped for it."""
        message = str(err)
        if message not in self.problems:
            self.problems.append(message)

    def fail_or_note(self, err: DataFormatError, strict: bool) -> None:
        """Raise ``err`` (strict) or keep it as a :meth:`problem` (strict=False)."""
        if strict:
            raise err
        self.problem(err)

    def summary(self) -> str:
        head = f"{self.source} [{self.split}]: read {self.rows_read} rows, kept {self.rows_kept}"
        tail = f"; {len(self.problems)} problem(s)" if self.problems else ""
        if not self.skipped:
            return head + ", skipped none" + tail
        reasons = "; ".join(f"{n} x {reason}" for reason, n in self.skipped.most_common())
        return f"{head}, skipped {self.rows_skipped} ({reasons}){tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "rows_read": self.rows_read,
                "rows_kept": self.rows_kept, "rows_skipped": self.rows_skipped, "skipped": dict(self.skipped),
                "examples": list(self.examples), "notes": list(self.notes), "problems": list(self.problems)}

    def warn_if_skipped(self, what: str = "rows") -> None:
        """One :class:`DataSkipWarning` when rows were skipped or problems recorded (the caller's caller is named)."""
        problems = ": " + " | ".join(self.problems) if self.problems else ""
        if self.skipped:
            warnings.warn(f"skipped {self.rows_skipped} {what} - {self.summary()}{problems}", DataSkipWarning,
                          stacklevel=3)
        elif self.problems:
            warnings.warn(f"{self.source} [{self.split}]{problems}", DataSkipWarning, stacklevel=3)


_LAST = threading.local()


def _set_last_report(report: LoadReport) -> None:
    _LAST.report = report


def last_load_report() -> LoadReport | None:
    """The :class:`LoadReport` of the most recent ``load_*`` call in this thread (None before the first).

    >>> ds = load_prosocial_dialog("bad.jsonl", strict=False)   # doctest: +SKIP
    >>> last_load_report().skipped                              # doctest: +SKIP
    Counter({'unknown safety label (safety_label)': 2})
    """
    return getattr(_LAST, "report", None)
