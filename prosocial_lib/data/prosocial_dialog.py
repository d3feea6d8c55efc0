"""ProsocialDialog (Kim et al., EMNLP 2022): adversarial contexts, safety labels, rules of thumb, prosocial replies.

:func:`load_prosocial_dialog` returns the hub's columns whatever the source:

- ``"embedded"``: the book's sample in ``samples/prosocial_dialog/{split}-0000N.jsonl`` (written for this book in
  the upstream schema; NOT the real data);
- ``"allenai/prosocial-dialog"``: the real data from the Hugging Face hub (online);
- a local path: a ``.json`` / ``.jsonl`` file in any layout of :mod:`~prosocial_lib.data.jsonfiles` (JSON lines as
  on the hub, a JSON array of records, a JSON object of columns as ``DataFrame.to_dict(orient="list")`` and
  DialogStudio write, or the direct-download format: one JSON array of dialogues, each a list of turns with
  ``text`` and ``labels``, converted with ``dialogue_id`` = the dialogue's position in the file and
  ``response_id`` = the turn's position), a ``.parquet`` file, or a folder of such split files (``train.json``,
  ``valid.json``, ``train-00000-of-00001.parquet``, ``default/test/0000.parquet``, ...).

Every row is validated (:func:`validate_row`); a turn may appear once per split, across all its files; rows come
back sorted by ``(dialogue_id, response_id)``.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from .checks import Place, empty_file_error, leak_problems, require_rows
from .errors import DataFormatError, LoadReport, _set_last_report
from .jsonfiles import read_json
from .labels import SAFETY_LABELS, SAFETY_VOTES, aggregate_safety_votes, normalise_split
from .readers import EMBEDDED_NOTICE, SAMPLES_DIR, iter_parquet, split_files, split_of_path

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


def _is_null(x: Any) -> bool:
    """None, or the NaN pandas writes for a missing value (``json.dumps(df.to_dict(orient="list"))``)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_safety(out: dict, fail: Callable[[str, str, str], DataFormatError]) -> None:
    """The safety label, its three votes, and that the votes give the label (as upstream aggregates them)."""
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
    if _is_null(out["rots"]):
        out["rots"] = []
    if not _is_str_list(out["rots"]):
        raise fail("rots", f"expected a list of strings, got {out['rots']!r:.80}", "wrong type")
    _check_safety(out, fail)
    reasons = out["safety_annotation_reasons"]
    if _is_null(reasons):
        out["safety_annotation_reasons"] = reasons = []
    if not _is_str_list(reasons):
        raise fail("safety_annotation_reasons", f"expected a list of strings, got {reasons!r:.80}", "wrong type")
    if not isinstance(out["source"], str):
        raise fail("source", f"expected a string, got {type(out['source']).__name__}", "wrong type")
    if _is_null(out["etc"]):
        out["etc"] = None
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
def _is_record(obj: dict) -> bool:
    """A hub record, as opposed to a JSON object of columns (whose ``context`` is a list, or with pandas'
    ``to_dict()`` an object keyed by row)."""
    return "context" in obj and not isinstance(obj["context"], (list, dict))


def _iter_file(path: Path) -> Iterator[tuple[int, Any]]:
    """``(row, record)`` pairs of one local file in any supported layout (errors as items or raised)."""
    suffix = path.suffix.lower()
    name = str(path)
    if suffix == ".parquet":
        yield from iter_parquet(path, COLUMNS)
    elif suffix in (".json", ".jsonl"):
        layout, items = read_json(path, _is_record)
        if layout != "dialogues":
            yield from items
            return
        for i, dialogue in items:  # the direct-download format
            if isinstance(dialogue, DataFormatError):
                yield i, dialogue
            else:
                yield from direct_download_to_hub(dialogue, name, i)
    else:
        raise DataFormatError(name, None, None, f"unsupported file type {suffix!r}: expected .json, .jsonl or "
                              ".parquet", "unsupported file")


Seen = dict[tuple[int, int], tuple[str, int]]  # (dialogue_id, response_id) -> (file, row) where it was first read


def validate_records(records: Iterable[tuple[int, Any]], file: str, report: LoadReport, strict: bool,
                     seen: Seen | None = None) -> list[dict]:
    """Validate ``(row, record)`` pairs; raise at the first bad one (strict) or count it in ``report``.

    Also rejects a second row with the same ``(dialogue_id, response_id)``: pass one ``seen`` dict for all files
    of a split, so a turn repeated in another file is caught and both places are named.
    """
    rows: list[dict] = []
    seen = {} if seen is None else seen
    for row, rec in records:
        report.rows_read += 1
        try:
            if isinstance(rec, DataFormatError):
                raise rec
            out = validate_row(rec, file, row)
            key = (out["dialogue_id"], out["response_id"])
            if key in seen:
                first_file, first_row = seen[key]
                at = f"row {first_row}" if first_file == file else f"{first_file} row {first_row}"
                raise DataFormatError(file, row, "response_id", f"duplicate turn: dialogue {key[0]} response "
                                      f"{key[1]} already appeared in {at}", "duplicate turn")
            seen[key] = (file, row)
        except DataFormatError as err:
            if strict:
                raise
            report.skip(err)
            continue
        rows.append(out)
    return rows


@functools.lru_cache(maxsize=32)
def _read_files_cached(files: tuple[tuple[str, float, int], ...], strict: bool, label: str, split: str
                       ) -> tuple[tuple[dict, ...], LoadReport, Seen]:
    report = LoadReport(source=label, split=split)
    rows: list[dict] = []
    seen: Seen = {}
    for path, _mtime, _size in files:
        before = report.rows_read
        rows.extend(validate_records(_iter_file(Path(path)), path, report, strict, seen))
        if report.rows_read == before:
            report.fail_or_note(empty_file_error(path), strict)
    report.rows_kept = len(rows)
    return tuple(rows), report, seen


@functools.lru_cache(maxsize=32)
def _first_turns(files: tuple[tuple[str, float, int], ...]) -> dict[tuple[str, str], Place]:
    """{(context, response) of each dialogue's turn 0: (file, row, dialogue_id)}; bad rows and files are passed
    over (this only looks for the same dialogue in another split)."""
    out: dict[tuple[str, str], Place] = {}
    for path, _mtime, _size in files:
        try:
            for row, rec in _iter_file(Path(path)):
                if isinstance(rec, dict) and rec.get("response_id") == 0 and isinstance(rec.get("context"), str) \
                        and isinstance(rec.get("response"), str):
                    out.setdefault((rec["context"], rec["response"]), (path, row, rec.get("dialogue_id")))
        except DataFormatError:
            continue
    return out


def _split_leaks(folder: Path, split: str, rows: Iterable[dict], seen: Seen, pattern: str | None = None
                 ) -> list[str]:
    """Messages for dialogues of ``split`` whose first turn also opens a dialogue of another split in ``folder``."""
    mine = {(r["context"], r["response"]): (*seen[(r["dialogue_id"], 0)], r["dialogue_id"])
            for r in rows if r["response_id"] == 0 and (r["dialogue_id"], 0) in seen}
    others = {}
    for other in SPLITS:
        if other != split:
            files = sorted(folder.glob(pattern.format(split=other))) if pattern else split_files(folder, other)
            others[other] = _first_turns(_file_key(files))
    return leak_problems(mine, others, split)


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
def _read_source(source: str, split: str, strict: bool) -> tuple[tuple[dict, ...], LoadReport, str, str]:
    """(rows, report, description, name for errors) of one split; the report is a fresh copy."""
    if source == "embedded":
        files = sorted(EMBEDDED_DIR.glob(f"{split}-*.jsonl"))
        if not files:
            raise FileNotFoundError(f"the embedded ProsocialDialog sample has no {split!r} files in {EMBEDDED_DIR}"
                                    f" (expected {split}-00000.jsonl, ...): is the package installed completely?")
        rows, report, seen = _read_files_cached(_file_key(files), strict, "ProsocialDialog (embedded sample)", split)
        report = copy.deepcopy(report)  # the cached one stays untouched
        for message in _split_leaks(EMBEDDED_DIR, split, rows, seen, pattern="{split}-*.jsonl"):
            report.problem(message)
        return rows, report, f"ProsocialDialog, {EMBEDDED_NOTICE}", str(EMBEDDED_DIR)
    if is_hub_id(source):
        hub = _load_hub_dataset(source, split)
        report = LoadReport(source=f"ProsocialDialog ({source})", split=split)
        records = hub.to_list() if hasattr(hub, "to_list") else list(hub)
        rows = validate_records(enumerate(records, start=1), f"{source} [{split}]", report, strict)
        report.rows_kept = len(rows)
        return tuple(rows), report, f"ProsocialDialog from the hub ({source})", source
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ProsocialDialog source {source!r} is neither 'embedded', a hub id nor an "
                                f"existing file or folder")
    files = _resolve_local(path, split)
    rows, report, seen = _read_files_cached(_file_key(files), strict, f"ProsocialDialog ({source})", split)
    report = copy.deepcopy(report)
    if path.is_dir():
        for message in _split_leaks(path, split, rows, seen):
            report.problem(message)
    return rows, report, f"ProsocialDialog from {source}", source


def load_prosocial_dialog(source: str = "embedded", split: str = "train", *, strict: bool = True,
                          max_rows: int | None = None) -> datasets.Dataset:
    """ProsocialDialog rows with the hub's columns, validated, sorted by ``(dialogue_id, response_id)``.

    ``source``: ``"embedded"`` (the book's sample, NOT the real data) | ``"allenai/prosocial-dialog"`` (hub) | a
    local file or folder: ``.jsonl`` / ``.json`` in any layout of :mod:`~prosocial_lib.data.jsonfiles` (JSON lines
    as on the hub, a JSON array of records, a JSON object of columns, the direct-download array of dialogues) or
    ``.parquet``. ``split``: train | validation | test (aliases valid, dev). ``max_rows`` keeps the first rows of
    the sorted data (earlier turns of a dialogue come first, so every kept turn keeps its history).

    Raises :class:`~prosocial_lib.data.errors.DataFormatError` (file, row, field) for a bad row, the same
    ``(dialogue_id, response_id)`` twice in a split (in one file or two), an unreadable or empty file, text that
    is not UTF-8 and a split with no rows; ``FileNotFoundError`` for a missing source. ``strict=False`` skips bad
    rows and notes whole-file problems instead; how many and why is in
    :func:`~prosocial_lib.data.errors.last_load_report` and a warning. A dialogue whose first turn also opens a
    dialogue of another split of the same folder is warned about (split leakage) in both modes.
    """
    split = normalise_split(split, SPLITS)
    rows, report, description, name = _read_source(str(source), split, strict)
    require_rows(report, name, split, strict)
    _set_last_report(report)
    report.warn_if_skipped()
    ordered = sorted(rows, key=lambda r: (r["dialogue_id"], r["response_id"]))
    if max_rows is not None:
        ordered = ordered[: max(0, int(max_rows))]
    columns = {c: [r[c] for r in ordered] for c in COLUMNS}
    info = datasets.DatasetInfo(description=description, features=FEATURES)
    return datasets.Dataset.from_dict(columns, features=FEATURES, info=info)
