"""ProsocialDialog (Kim et al., EMNLP 2022): adversarial contexts, safety labels, rules of thumb, prosocial replies.

:func:`load_prosocial_dialog` returns the hub's columns whatever the source:

- ``"embedded"``: the book's sample in ``samples/prosocial_dialog/{split}-0000N.jsonl`` (written for this book in
  the upstream schema; NOT the real data);
- ``"allenai/prosocial-dialog"``: the real data from the Hugging Face hub (online);
- a local path: a hub-format ``.json`` (JSON lines) / ``.jsonl`` / ``.parquet`` file, a folder of such split files
  (``train.json``, ``valid.json``, ``train-00000-of-00001.parquet``, ``default/test/0000.parquet``, ...), or the
  direct-download format (one JSON array of dialogues, each a list of turns with ``text`` and ``labels``), which
  is converted: ``dialogue_id`` = the dialogue's position in the file, ``response_id`` = the turn's position.

Every row is validated (:func:`validate_row`); rows come back sorted by ``(dialogue_id, response_id)``.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from .errors import DataFormatError, LoadReport, _set_last_report
from .labels import SAFETY_LABELS, SAFETY_VOTES, aggregate_safety_votes, normalise_split
from .readers import (EMBEDDED_NOTICE, SAMPLES_DIR, iter_json_lines, iter_parquet, json_layout, parquet_columns,
                      read_json_document, split_files, split_of_path)

HUB_ID = "allenai/prosocial-dialog"
EMBEDDED_DIR = SAMPLES_DIR / "prosocial_dialog"
SPLITS = ("train", "validation", "test")

#: The hub's columns, in the hub's order.
COLUMNS: tuple[str, ...] = ("context", "response", "rots", "safety_label", "safety_annotations",
                            "safety_annotation_reasons", "source", "etc", "dialogue_id", "response_id",
                            "episode_done")

FEATURES = datasets.Features({
    "context": datasets.Value("string"),
    "response": datasets.Value("string"),
    "rots": datasets.Sequence(datasets.Value("string")),
    "safety_label": datasets.Value("string"),
    "safety_annotations": datasets.Sequence(datasets.Value("string")),
    "safety_annotation_reasons": datasets.Sequence(datasets.Value("string")),
    "source": datasets.Value("string"),
    "etc": datasets.Value("string"),
    "dialogue_id": datasets.Value("int64"),
    "response_id": datasets.Value("int64"),
    "episode_done": datasets.Value("bool"),
})


# ---------------------------------------------------------------------- validation of one row
def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_row(rec: Any, file: str, row: int) -> dict:
    """Check one hub-format record and return it normalised (``rots`` None -> [], columns in hub order).

    Raises :class:`DataFormatError` naming ``file``, ``row`` and the field for a missing column, a wrong type, an
    empty text, an unknown safety label or vote, or a label that contradicts its three votes.
    """
    def fail(field: str | None, problem: str, reason: str) -> DataFormatError:
        return DataFormatError(file, row, field, problem, reason)

    if not isinstance(rec, dict):
        raise fail(None, f"expected a JSON object, got {type(rec).__name__}", "wrong type")
    for col in COLUMNS:
        if col not in rec:
            raise fail(col, f"missing column {col!r}", "missing column")
    out = {c: rec[c] for c in COLUMNS}
    for col in ("context", "response"):
        if not isinstance(out[col], str):
            raise fail(col, f"expected a string, got {type(out[col]).__name__}", "wrong type")
        if not out[col].strip():
            raise fail(col, "empty text", "empty text")
    if out["rots"] is None:
        out["rots"] = []
    if not _is_str_list(out["rots"]):
        raise fail("rots", f"expected a list of strings, got {out['rots']!r:.80}", "wrong type")
    label = out["safety_label"]
    if not isinstance(label, str):
        raise fail("safety_label", f"expected a string, got {type(label).__name__}", "wrong type")
    if label not in SAFETY_LABELS:
        raise fail("safety_label", f"unknown safety label {label!r}; expected one of {', '.join(SAFETY_LABELS)}",
                   "unknown safety label")
    votes = out["safety_annotations"]
    if not _is_str_list(votes):
        raise fail("safety_annotations", f"expected a list of strings, got {votes!r:.80}", "wrong type")
    if len(votes) != 3:
        raise fail("safety_annotations", f"expected 3 votes, got {len(votes)}", "wrong vote count")
    bad = [v for v in votes if v not in SAFETY_VOTES]
    if bad:
        raise fail("safety_annotations", f"unknown safety vote {bad[0]!r}; expected one of "
                   f"{', '.join(SAFETY_VOTES)}", "unknown safety vote")
    implied = aggregate_safety_votes(votes)
    if implied != label:
        raise fail("safety_label", f"label {label!r} contradicts its votes {votes}, which give {implied!r}",
                   "label contradicts votes")
    reasons = out["safety_annotation_reasons"]
    if reasons is None:
        out["safety_annotation_reasons"] = reasons = []
    if not _is_str_list(reasons):
        raise fail("safety_annotation_reasons", f"expected a list of strings, got {reasons!r:.80}", "wrong type")
    if not isinstance(out["source"], str):
        raise fail("source", f"expected a string, got {type(out['source']).__name__}", "wrong type")
    if out["etc"] is not None and not isinstance(out["etc"], str):
        raise fail("etc", f"expected a string or null, got {type(out['etc']).__name__}", "wrong type")
    for col in ("dialogue_id", "response_id"):
        if not _is_int(out[col]):
            raise fail(col, f"expected an integer, got {out[col]!r:.40}", "wrong type")
        if out[col] < 0:
            raise fail(col, f"expected a non-negative integer, got {out[col]}", "out of range")
    if not isinstance(out["episode_done"], bool):
        raise fail("episode_done", f"expected true or false, got {out['episode_done']!r:.40}", "wrong type")
    return out


def direct_download_to_hub(dialogue: Any, file: str, dialogue_no: int) -> Iterator[tuple[int, Any]]:
    """One dialogue of the direct-download format (a list of turns with ``text`` and ``labels``) -> hub records.

    ``dialogue_id`` = ``dialogue_no - 1``, ``response_id`` = the turn's index, ``episode_done`` taken from the turn
    (or True on the last turn when absent). Errors cite the dialogue's 1-based record number and say which turn.
    """
    if not isinstance(dialogue, list):
        yield dialogue_no, DataFormatError(file, dialogue_no, None, "expected a dialogue (a list of turns), got "
                                           f"{type(dialogue).__name__}", "wrong type")
        return
    for j, turn in enumerate(dialogue):
        where = f"turn {j + 1} of dialogue {dialogue_no}: "
        if not isinstance(turn, dict):
            yield dialogue_no, DataFormatError(file, dialogue_no, None, where + "expected an object",
                                               "wrong type")
            continue
        missing = [c for c in ("text", "labels") if c not in turn]
        if missing:
            yield dialogue_no, DataFormatError(file, dialogue_no, missing[0], where + f"missing column "
                                               f"{missing[0]!r}", "missing column")
            continue
        labels = turn["labels"]
        if not (_is_str_list(labels) and len(labels) >= 1):
            yield dialogue_no, DataFormatError(file, dialogue_no, "labels", where + "expected a list holding "
                                               f"the response, got {labels!r:.80}", "wrong type")
            continue
        rec = {k: v for k, v in turn.items() if k not in ("text", "labels")}
        rec["context"] = turn["text"]
        rec["response"] = labels[0]
        rec["dialogue_id"] = dialogue_no - 1
        rec["response_id"] = j
        rec.setdefault("episode_done", j == len(dialogue) - 1)
        rec.setdefault("etc", None)
        yield dialogue_no, rec


# ---------------------------------------------------------------------- reading files
def _iter_file(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    name = str(path)
    if suffix == ".parquet":
        cols = parquet_columns(path)
        missing = [c for c in COLUMNS if c not in cols]
        if missing:
            raise DataFormatError(name, None, missing[0], f"missing column {missing[0]!r} (the file has "
                                  f"{', '.join(cols)})", "missing column")
        yield from iter_parquet(path)
    elif suffix == ".jsonl" or (suffix == ".json" and json_layout(path) == "lines"):
        yield from iter_json_lines(path)
    elif suffix == ".json":
        doc = read_json_document(path)
        if not isinstance(doc, list):
            raise DataFormatError(name, None, None, "expected a JSON array of dialogues (direct-download format) "
                                  "or one JSON object per line (hub format)", "wrong type")
        if all(isinstance(d, dict) for d in doc):  # a list of hub records
            yield from enumerate(doc, start=1)
        else:  # the direct-download format: a list of dialogues
            for i, dialogue in enumerate(doc, start=1):
                yield from direct_download_to_hub(dialogue, name, i)
    else:
        raise DataFormatError(name, None, None, f"unsupported file type {suffix!r}: expected .json, .jsonl or "
                              ".parquet", "unsupported file")


def validate_records(records: Iterable[tuple[int, Any]], file: str, report: LoadReport, strict: bool) -> list[dict]:
    """Validate ``(row, record)`` pairs; raise at the first bad one (strict) or count it in ``report``.
    Also rejects a second row with the same ``(dialogue_id, response_id)``."""
    rows: list[dict] = []
    seen: dict[tuple[int, int], int] = {}
    for row, rec in records:
        report.rows_read += 1
        try:
            if isinstance(rec, DataFormatError):
                raise rec
            out = validate_row(rec, file, row)
            key = (out["dialogue_id"], out["response_id"])
            if key in seen:
                raise DataFormatError(file, row, "response_id", f"duplicate turn: dialogue {key[0]} response "
                                      f"{key[1]} already appeared in row {seen[key]}", "duplicate turn")
            seen[key] = row
        except DataFormatError as err:
            if strict:
                raise
            report.skip(err)
            continue
        rows.append(out)
    return rows


@functools.lru_cache(maxsize=32)
def _read_files_cached(files: tuple[tuple[str, float, int], ...], strict: bool, label: str, split: str
                       ) -> tuple[tuple[dict, ...], LoadReport]:
    report = LoadReport(source=label, split=split)
    rows: list[dict] = []
    for path, _mtime, _size in files:
        rows.extend(validate_records(_iter_file(Path(path)), path, report, strict))
    report.rows_kept = len(rows)
    return tuple(rows), report


def _file_key(paths: list[Path]) -> tuple[tuple[str, float, int], ...]:
    return tuple((str(p), p.stat().st_mtime, p.stat().st_size) for p in paths)


def _resolve_local(path: Path, split: str) -> list[Path]:
    if path.is_dir():
        files = split_files(path, split)
        if not files:
            raise FileNotFoundError(f"no {split!r} files under {path}: expected names such as {split}.json, "
                                    f"{split}.jsonl, {split}-00000.jsonl or {split}-00000-of-00001.parquet")
        return files
    named = split_of_path(Path(path.name))  # the file name only: its folders may be named anything
    if named is not None and named != split:
        raise ValueError(f"{path} holds the {named!r} split but split={split!r} was asked for; pass the folder "
                         f"(or the {split!r} file) instead")
    return [path]


def _load_hub_dataset(hub_id: str, split: str):
    """The hub dataset (online). A separate function so tests can stand a local file in for the hub."""
    return datasets.load_dataset(hub_id, split=split)


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not an existing local path."""
    return (not os.path.exists(source)) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None \
        and not source.endswith((".json", ".jsonl", ".parquet", ".csv", ".zip"))


# ---------------------------------------------------------------------- the loader
def load_prosocial_dialog(source: str = "embedded", split: str = "train", *, strict: bool = True,
                          max_rows: int | None = None) -> datasets.Dataset:
    """ProsocialDialog rows with the hub's columns, validated, sorted by ``(dialogue_id, response_id)``.

    ``source``: ``"embedded"`` (the book's sample, NOT the real data) | ``"allenai/prosocial-dialog"`` (hub) | a
    local file or folder in the hub or direct-download format. ``split``: train | validation | test (aliases valid,
    dev). ``strict=False`` skips bad rows instead of raising; how many and why is in
    :func:`~prosocial_lib.data.errors.last_load_report` and a warning. ``max_rows`` keeps the first rows of the
    sorted data (earlier turns of a dialogue come first, so every kept turn keeps its history).
    """
    split = normalise_split(split, SPLITS)
    source = str(source)
    if source == "embedded":
        files = sorted(EMBEDDED_DIR.glob(f"{split}-*.jsonl"))
        if not files:
            raise FileNotFoundError(f"the embedded ProsocialDialog sample has no {split!r} files in {EMBEDDED_DIR}"
                                    f" (expected {split}-00000.jsonl, ...): is the package installed completely?")
        rows, report = _read_files_cached(_file_key(files), strict, "ProsocialDialog (embedded sample)", split)
        description = f"ProsocialDialog, {EMBEDDED_NOTICE}"
    elif is_hub_id(source):
        hub = _load_hub_dataset(source, split)
        report = LoadReport(source=f"ProsocialDialog ({source})", split=split)
        records = hub.to_list() if hasattr(hub, "to_list") else list(hub)
        rows = validate_records(enumerate(records, start=1), f"{source} [{split}]", report, strict)
        report.rows_kept = len(rows)
        description = f"ProsocialDialog from the hub ({source})"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"ProsocialDialog source {source!r} is neither 'embedded', a hub id nor an "
                                    f"existing file or folder")
        files = _resolve_local(path, split)
        rows, report = _read_files_cached(_file_key(files), strict, f"ProsocialDialog ({source})", split)
        description = f"ProsocialDialog from {source}"
    report = copy.deepcopy(report)  # the cached one stays untouched
    _set_last_report(report)
    report.warn_if_skipped()
    ordered = sorted(rows, key=lambda r: (r["dialogue_id"], r["response_id"]))
    if max_rows is not None:
        ordered = ordered[: max(0, int(max_rows))]
    columns = {c: [r[c] for r in ordered] for c in COLUMNS}
    info = datasets.DatasetInfo(description=description, features=FEATURES)
    return datasets.Dataset.from_dict(columns, features=FEATURES, info=info)
