"""DailyDialog (Li et al., IJCNLP 2017) in each layout it is distributed in, validated and detokenised.

Layouts of a local copy (a file, or a folder searched recursively for the split's files):

- the original release (``ijcnlp_dailydialog.zip`` from the authors' page): ``dialogues_{split}.txt``, one
  conversation per line, each utterance ended by ``__eou__``; read from the extracted folder, from
  ``{split}.zip`` or from the outer zip holding the split zips (the layout the hub's old loading script read);
- the hub's parquet conversion (``li2017dailydialog/daily_dialog``, revision ``refs/convert/parquet``:
  ``default/train/0000.parquet``) and JSON exports of it (``datasets.Dataset.to_json``, pandas): a ``dialog``
  column holding the utterances, beside ``act`` and ``emotion``, in any layout of
  :mod:`~prosocial_lib.data.jsonfiles`;
- ParlAI's version (``parlai/tasks/dailydialog``: ``train.json``, ``valid.json``, ``test.json``): JSON lines with a
  ``dialogue`` list of turns, each with ``text``, ``act`` and ``emotion``.

``dialog`` must be a list of strings (ParlAI: turns with a string ``text``); anything else is a
:class:`~prosocial_lib.data.errors.DataFormatError` naming file, row and field. The upstream text is tokenised
("I ’ m not sure . Let me check my calendar ."); :func:`detokenize` makes it natural text, as the other sources
are, so that a contrast between DailyDialog and ProsocialDialog text cannot be won on spacing.
"""

from __future__ import annotations

import functools
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from .checks import empty_file_error
from .errors import DataFormatError, LoadReport
from .jsonfiles import read_json
from .readers import encoding_error, iter_parquet, open_text, split_files, undecodable, wrap_text, zip_errors

HUB_ID = "li2017dailydialog/daily_dialog"
HUB_REVISION = "refs/convert/parquet"  # the hub repo's main branch only has a loading script
EOU = "__eou__"
SUFFIXES = (".jsonl", ".json", ".parquet", ".txt", ".zip")

# DailyDialog splits a contraction into three tokens ("I ’ m", "don ' t"), which the Moses detokeniser leaves
_SPLIT_CONTRACTION = re.compile(r"(?<=\w) ([’']) (?=(?:s|t|m|d|re|ve|ll)\b)", re.IGNORECASE)

Item = tuple[str, int, Any]  # (file, row, record | DataFormatError)


@functools.lru_cache(maxsize=1)
def _moses():
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang="en")


def detokenize(text: str) -> str:
    """DailyDialog's tokenised text -> natural text, with the Moses detokeniser (``sacremoses``) after joining
    the split contractions DailyDialog writes: ``" I ’ m not sure . "`` -> ``"I’m not sure."``. Natural text
    stays as it is."""
    tokens = _SPLIT_CONTRACTION.sub(r"\1", " ".join(str(text).split())).split()
    return _moses().detokenize(tokens, unescape=False) if tokens else ""


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 50 else shown[:47] + '...'}"


def dialog_of(rec: Any, file: str, row: int) -> list[str] | DataFormatError:
    """The utterances of one DailyDialog record, detokenised: ``{"dialog": [...]}`` (hub), ``{"dialogue":
    [{"text": ...}, ...]}`` (ParlAI) or a bare list of utterances (a JSON array of dialogues, the ``__eou__`` text).
    Returns (does not raise) a :class:`DataFormatError` naming ``file``, ``row`` and the field for anything else."""
    def fail(field: str | None, problem: str, reason: str = "wrong type") -> DataFormatError:
        return DataFormatError(file, row, field, problem, reason)

    parlai = isinstance(rec, dict) and "dialog" not in rec and "dialogue" in rec
    field = "dialogue" if parlai else "dialog"
    if isinstance(rec, list):
        turns = rec
    elif not isinstance(rec, dict):
        return fail(None, f"expected an object with a 'dialog' list, got {_describe(rec)}")
    elif field not in rec:
        return fail("dialog", "missing column 'dialog' (the utterances of one conversation)", "missing column")
    else:
        turns = rec[field]
    if not isinstance(turns, list):
        return fail(field, f"expected a list of utterances (strings), got {_describe(turns)}")
    texts = []
    for j, turn in enumerate(turns, start=1):
        text = turn.get("text") if parlai and isinstance(turn, dict) else turn
        if not isinstance(text, str):
            wanted = "an object with a string 'text'" if parlai else "a string"
            return fail(field, f"utterance {j}: expected {wanted}, got {_describe(turn)}")
        texts.append(detokenize(text))
    return texts


# ---------------------------------------------------------------------- readers of the layouts
def _is_record(obj: dict) -> bool:
    """A DailyDialog record, as opposed to a JSON object of columns (a list of dialogs, or pandas' object keyed by
    row)."""
    value = obj.get("dialog", obj.get("dialogue"))
    return ("dialog" in obj or "dialogue" in obj) and not isinstance(value, dict) and not (
        isinstance(value, list) and value and all(isinstance(v, list) for v in value))


def _iter_eou(stream: Any, name: str) -> Iterator[Item]:
    """The original ``dialogues_{split}.txt``: one conversation per line, utterances ended by ``__eou__``."""
    for line_no, line in enumerate(stream, start=1):
        line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        where = undecodable(line)
        if where:
            yield name, line_no, encoding_error(name, line_no, None, where)
        elif EOU not in line:
            yield name, line_no, DataFormatError(name, line_no, None, f"expected utterances each ended by {EOU!r} "
                                                 "(DailyDialog's dialogues_*.txt)", "malformed")
        else:
            parts = line.split(EOU)
            yield name, line_no, parts[:-1] if not parts[-1].strip() else parts


def _iter_zip_members(zf: zipfile.ZipFile, name: str, split: str, depth: int = 0) -> Iterator[Item]:
    for member in zf.namelist():
        base = PurePosixPath(member).name
        where = f"{name}:{member}"
        if base == f"dialogues_{split}.txt":
            with zf.open(member) as raw:
                yield from _iter_eou(wrap_text(raw, where), where)
        elif base == f"{split}.zip" and depth == 0:  # the outer release zip holds one zip per split
            with zipfile.ZipFile(io.BytesIO(zf.read(member))) as inner:
                yield from _iter_zip_members(inner, where, split, depth + 1)


def _iter_file(path: Path, split: str) -> Iterator[Item]:
    name, suffix = str(path), path.suffix.lower()
    if suffix == ".zip":
        with zip_errors(name), zipfile.ZipFile(path) as zf:
            yield from _iter_zip_members(zf, name, split)
    elif suffix == ".txt":
        with open_text(path) as f:
            yield from _iter_eou(f, name)
    elif suffix == ".parquet":
        yield from ((name, row, rec) for row, rec in iter_parquet(path))
    elif suffix in (".json", ".jsonl"):
        _layout, items = read_json(path, _is_record)
        yield from ((name, row, rec) for row, rec in items)
    else:
        raise DataFormatError(name, None, None, f"unsupported file type {suffix!r}: expected "
                              f"{', '.join(SUFFIXES)}", "unsupported file")


def local_files(path: Path, split: str) -> list[Path]:
    """The files of ``split`` in a local copy: ``path`` itself when it is a file; in a folder the split's data
    files (``dialogues_{split}.txt``, ``{split}.jsonl``, ``valid.json``, ``default/train/0000.parquet``, ...), or
    its ``{split}.zip`` when nothing is extracted. Raises ``FileNotFoundError`` when there are none."""
    if path.is_file():
        return [path]
    found = [f for f in split_files(path, split, SUFFIXES)
             if f.suffix.lower() != ".txt" or f.name == f"dialogues_{split}.txt"]
    extracted = [f for f in found if f.suffix.lower() != ".zip"]
    files = extracted or found
    if not files:
        raise FileNotFoundError(f"no {split!r} DailyDialog files under {path}: expected dialogues_{split}.txt, "
                                f"{split}.zip, {split}.jsonl, {split}.json or {split}/0000.parquet")
    return files


def read_local(path: Path, split: str, report: LoadReport, strict: bool) -> list[list[str]]:
    """The detokenised conversations of ``split`` in a local copy (see :func:`local_files`).

    Raises :class:`DataFormatError` (file, row, field) for a bad record, an unreadable file or a file with no
    conversations; with ``strict=False`` a bad record is counted in ``report`` and skipped, and an empty file is
    noted as a problem."""
    dialogs: list[list[str]] = []
    for file in local_files(path, split):
        n = 0
        for name, row, rec in _iter_file(file, split):
            n += 1
            _keep(rec if isinstance(rec, DataFormatError) else dialog_of(rec, name, row), dialogs, report, strict)
        if n == 0:
            report.fail_or_note(empty_file_error(file), strict)
    return dialogs


def read_hub_records(records: Any, split: str, report: LoadReport, strict: bool) -> list[list[str]]:
    """The detokenised conversations of hub records (rows with a ``dialog`` column), validated as local ones."""
    name = f"{HUB_ID} [{split}]"
    dialogs: list[list[str]] = []
    for row, rec in enumerate(records, start=1):
        _keep(dialog_of(rec, name, row), dialogs, report, strict)
    return dialogs


def _keep(dialog: list[str] | DataFormatError, dialogs: list[list[str]], report: LoadReport, strict: bool) -> None:
    """Append a valid conversation to ``dialogs``; raise a bad one (``strict``) or count and skip it."""
    if isinstance(dialog, DataFormatError):
        if strict:
            raise dialog
        report.rows_read += 1
        report.skip(dialog)
        return
    dialogs.append(dialog)
