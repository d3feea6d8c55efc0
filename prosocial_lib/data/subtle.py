"""The "subtle" contexts: everyday small talk whose last user turn reveals, in passing, something that needs caution
or intervention (the paper's first claim is that a socially aware model notices these). Test only.

:func:`load_subtle` returns one row per context with these columns (the book's own schema, modelled on
ProsocialDialog's safety columns):

- ``id`` (str, unique), ``set`` (str, ``"subtle"``), ``topic`` (str, e.g. driving, animals, health);
- ``history`` (list[str]: alternating user / assistant turns, user first and last, so an odd number, at least 3);
- ``safety_label`` (one of the five ProsocialDialog labels) and ``safety_annotations`` (3 votes that give it by
  ProsocialDialog's aggregation rule);
- ``rots`` (list[str], the rules of thumb at stake) and ``reason`` (str: what the last turn reveals and why it
  matters).

Sources: ``"embedded"`` (``samples/subtle/test.jsonl``, written for this book; NOT upstream data) or a local
``.jsonl`` / ``.json`` file in any record layout of :mod:`~prosocial_lib.data.jsonfiles`. Used by chapter 00 (the
data) and by the evaluation chapters as a third context set next to "adversarial" and "casual".
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import datasets

from .checks import read_history_records, record_columns, require_rows
from .errors import DataFormatError, LoadReport, _set_last_report
from .labels import SAFETY_LABELS, SAFETY_VOTES, aggregate_safety_votes, normalise_split
from .readers import SAMPLES_DIR

EMBEDDED_FILE = SAMPLES_DIR / "subtle" / "test.jsonl"
SUBTLE_NOTICE = ("subtle contexts: written for this book (everyday chats whose last user turn reveals a risk in "
                 "passing); not part of any upstream dataset")

COLUMNS: tuple[str, ...] = ("id", "set", "history", "safety_label", "safety_annotations", "rots", "reason", "topic")
FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "set": datasets.Value("string"),
    "history": datasets.Sequence(datasets.Value("string")),
    "safety_label": datasets.Value("string"),
    "safety_annotations": datasets.Sequence(datasets.Value("string")),
    "rots": datasets.Sequence(datasets.Value("string")),
    "reason": datasets.Value("string"),
    "topic": datasets.Value("string"),
})


def _str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) and v.strip() for v in x)


def validate_subtle_row(rec: Any, file: str, row: int) -> dict:
    """Check one record and return it with the columns in order. Raises :class:`DataFormatError` naming ``file``,
    ``row`` and the field for a missing column, a wrong type, an empty text, a history that does not alternate
    user / assistant ending with the user (an odd number of turns, at least 3), an unknown label or vote, or a
    label that contradicts its votes."""
    def fail(field: str | None, problem: str, reason: str) -> DataFormatError:
        return DataFormatError(file, row, field, problem, reason)

    out = record_columns(rec, COLUMNS, file, row)
    for col in ("id", "set", "reason", "topic", "safety_label"):
        if not isinstance(out[col], str) or not out[col].strip():
            raise fail(col, f"expected a non-empty string, got {out[col]!r:.60}", "wrong type")
    history = out["history"]
    if not _str_list(history):
        raise fail("history", f"expected a list of non-empty strings, got {history!r:.80}", "wrong type")
    if len(history) < 3 or len(history) % 2 == 0:
        raise fail("history", f"expected alternating user / assistant turns that start and end with the user (an "
                   f"odd number, at least 3), got {len(history)} turns", "bad history")
    if not _str_list(out["rots"]):
        raise fail("rots", f"expected a list of non-empty strings, got {out['rots']!r:.80}", "wrong type")
    if out["safety_label"] not in SAFETY_LABELS:
        raise fail("safety_label", f"unknown safety label {out['safety_label']!r}; expected one of "
                   f"{', '.join(SAFETY_LABELS)}", "unknown safety label")
    votes = out["safety_annotations"]
    if not (isinstance(votes, list) and len(votes) == 3 and all(v in SAFETY_VOTES for v in votes)):
        raise fail("safety_annotations", f"expected 3 votes from {', '.join(SAFETY_VOTES)}, got {votes!r:.80}",
                   "bad votes")
    if aggregate_safety_votes(votes) != out["safety_label"]:
        raise fail("safety_label", f"label {out['safety_label']!r} contradicts its votes {votes}, which give "
                   f"{aggregate_safety_votes(votes)!r}", "label contradicts votes")
    return out


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, _mtime: float, _size: int, strict: bool) -> tuple[tuple[dict, ...], LoadReport]:
    rows, report = read_history_records(path, validate_subtle_row, what="subtle contexts", columns=COLUMNS,
                                        strict=strict)
    return tuple(rows), report


def load_subtle(source: str = "embedded", split: str = "test", *, strict: bool = True,
                max_rows: int | None = None) -> datasets.Dataset:
    """The subtle contexts as a ``datasets.Dataset`` with :data:`COLUMNS`, in file order.

    ``source``: ``"embedded"`` (the book's set, written for this book) | a local ``.jsonl`` / ``.json`` file.
    ``split``: only ``"test"`` exists. ``max_rows`` keeps the first rows.

    Raises :class:`~prosocial_lib.data.errors.DataFormatError` (file, row, field) for a bad row (see
    :func:`validate_subtle_row`), a repeated id, an empty or unreadable file; ``FileNotFoundError`` for a missing
    file; ``ValueError`` for a split other than test. ``strict=False`` skips bad rows instead and says how many in
    a warning and in :func:`~prosocial_lib.data.errors.last_load_report`.

    Example::

        ds = load_subtle()                 # 130 contexts
        ds[0]["history"][-1]               # the user turn that reveals the risk
    """
    split = normalise_split(split, ("test",))
    path = EMBEDDED_FILE if source == "embedded" else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"subtle contexts: no file at {path} (source {source!r}: 'embedded' or a .jsonl / "
                                ".json file)")
    stat = path.stat()
    rows, report = _read_cached(str(path), stat.st_mtime, stat.st_size, strict)
    report = copy.deepcopy(report)
    require_rows(report, str(path), split, strict)
    _set_last_report(report)
    report.warn_if_skipped()
    if max_rows is not None:
        rows = rows[: max(0, int(max_rows))]
    description = SUBTLE_NOTICE if source == "embedded" else f"subtle contexts from {source}"
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=FEATURES,
                                      info=datasets.DatasetInfo(description=description, features=FEATURES))
