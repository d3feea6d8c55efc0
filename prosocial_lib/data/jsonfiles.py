"""JSON files in each layout the datasets are distributed in, told apart by the parsed structure.

Layouts (:data:`LAYOUTS`):

- ``"lines"``: JSON lines, one object per line: the hub's ``train.json`` / ``.jsonl`` files and
  ``datasets.Dataset.to_json``; a ``.json`` file holding one record is read as one line;
- ``"records"``: one JSON array of objects: ``pandas.DataFrame.to_json(orient="records")``, ``json.dump`` of a list;
- ``"columns"``: one JSON object whose values are equal-length lists, one per column:
  ``pandas.DataFrame.to_dict(orient="list")``, ``datasets.Dataset.to_dict()`` and dialog collections such as
  DialogStudio's ``original_examples.json``;
- ``"dialogues"``: one JSON array of dialogues, each a list (ProsocialDialog's direct download: turns with ``text``
  and ``labels``; a DailyDialog dialogue: its utterances).

Anything else (a JSON object of objects, a bare string, a truncated document) is one
:class:`~prosocial_lib.data.errors.DataFormatError` for the whole file naming these layouts. The first character
decides nothing: a pretty-printed object of columns is not mistaken for JSON lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataFormatError
from .readers import encoding_error, open_text, undecodable

LAYOUTS = ("lines", "records", "columns", "dialogues")
LAYOUT_NAMES = ("JSON lines (one object per line), a JSON array of records, a JSON object of equal-length "
                "column lists (pandas to_dict(orient='list')), or a JSON array of dialogues (the direct-download "
                "format)")
_SNIFF_LINES = 1000  # how many lines may be tried when deciding whether a broken document is JSON lines

Item = tuple[int, Any]  # (row, record | dialogue | DataFormatError)


def parse_json(text: str, name: str, row: int | None) -> Any:
    """``json.loads(text)``, or a :class:`DataFormatError` (returned, not raised) naming ``name`` and ``row`` for
    malformed JSON, nesting too deep for the parser (``RecursionError``) or an integer too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return DataFormatError(name, row, None, f"not valid JSON ({e.msg})", "malformed JSON")
    except RecursionError:
        return DataFormatError(name, row, None, "not valid JSON (nested deeper than the JSON parser allows)",
                               "malformed JSON")
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        return DataFormatError(name, row, None, f"not valid JSON ({e})", "malformed JSON")


def _line_item(line: str, name: str, line_no: int) -> Any:
    where = undecodable(line)
    if where:
        return encoding_error(name, line_no, None, where)
    return parse_json(line, name, line_no)


def iter_json_lines(path: Path) -> Iterator[Item]:
    """One JSON value per line of a file; the row is the line number. Blank lines are ignored and a byte-order
    mark at the start of any line is dropped (``cat`` of two files keeps the second one's). A line that is not
    JSON or not UTF-8 comes back as a :class:`DataFormatError`."""
    name = str(path)
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.lstrip("\ufeff")
            if line.strip():
                yield line_no, _line_item(line, name, line_no)


def _lines_of_text(text: str, name: str) -> Iterator[Item]:
    for line_no, line in enumerate(text.split("\n"), start=1):  # "\n" only: U+2028 may sit inside a string
        line = line.lstrip("\ufeff")
        if line.strip():
            yield line_no, _line_item(line, name, line_no)


def _looks_like_json_lines(text: str) -> bool:
    """A text that is not one JSON document is JSON lines when it is a single line or when one of its first
    lines is a JSON object on its own (the lines of a broken pretty-printed document never are)."""
    lines = [line for line in (x.lstrip("\ufeff").strip() for x in text.split("\n")) if line]
    if len(lines) == 1:
        return True
    return any(isinstance(parse_json(line, "", None), dict) for line in lines[:_SNIFF_LINES])


def _document_error(text: str, name: str, err: DataFormatError) -> DataFormatError:
    for line_no, line in enumerate(text.split("\n"), start=1):
        where = undecodable(line)  # a byte that is not UTF-8 explains a parse error better than the parser
        if where:
            return encoding_error(name, line_no, None, where)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return DataFormatError(name, e.lineno, None, f"not valid JSON ({e.msg} at line {e.lineno} column "
                               f"{e.colno}); expected {LAYOUT_NAMES}", "malformed JSON")
    except (RecursionError, ValueError):
        pass
    return DataFormatError(name, None, None, f"{err.problem}; expected {LAYOUT_NAMES}", err.reason)


def _checked(name: str, row: int, value: Any) -> Any:
    """``value``, or an encoding error when one of its strings holds bytes that are not UTF-8."""
    stack = [(None, value)]
    while stack:
        field, v = stack.pop()
        if isinstance(v, str):
            where = undecodable(v)
            if where:
                return encoding_error(name, row, field, where.replace("column", "character"))
        elif isinstance(v, dict):
            stack.extend((k if field is None else field, x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((field, x) for x in v)
    return value


def columns_to_records(doc: dict, name: str) -> list[dict]:
    """A JSON object of equal-length column lists -> one record per position. Raises :class:`DataFormatError`
    (whole file) when the lists differ in length."""
    lengths = sorted(((len(v), k) for k, v in doc.items()), reverse=True)
    if lengths and lengths[0][0] != lengths[-1][0]:
        (n, longest), (m, shortest) = lengths[0], lengths[-1]
        raise DataFormatError(name, None, shortest, f"a JSON object of columns needs lists of one length: column "
                              f"{longest!r} has {n} values but {shortest!r} has {m}", "malformed JSON")
    n_rows = lengths[0][0] if lengths else 0
    return [{k: v[i] for k, v in doc.items()} for i in range(n_rows)]


def _layout_of_document(doc: Any, is_record: Callable[[dict], bool], one_line: bool) -> str | None:
    if isinstance(doc, list):
        return "dialogues" if any(isinstance(x, list) for x in doc) else "records"
    if isinstance(doc, dict):
        if is_record(doc):
            return "lines"  # one record: the same as a JSON-lines file of one line
        if doc and all(isinstance(v, list) for v in doc.values()):
            return "columns"
        if one_line:
            return "lines"  # a JSON-lines file of one (bad) record: its fields are checked by the loader
    return None


def read_json(path: Path, is_record: Callable[[dict], bool]) -> tuple[str, Iterator[Item]]:
    """The layout of a ``.json`` file (one of :data:`LAYOUTS`) and its items as ``(row, value)`` pairs: records
    (row = line for ``"lines"``, else the 1-based position) or, for ``"dialogues"``, the dialogues.

    ``is_record(obj)`` tells a record of the caller's dataset from a JSON object of columns (e.g. a ProsocialDialog
    record has a string ``context``; an object of columns has a list there). A value with bytes that are not
    UTF-8, or a line that is not JSON, comes back as a :class:`DataFormatError` item; a file in no layout raises
    one naming the layouts.
    """
    name = str(path)
    with open_text(path) as f:
        text = f.read()
    if not text.strip():
        return "lines", iter(())
    doc = parse_json(text, name, None)
    if isinstance(doc, DataFormatError):
        if _looks_like_json_lines(text):
            return "lines", _lines_of_text(text, name)
        raise _document_error(text, name, doc)
    layout = _layout_of_document(doc, is_record, one_line="\n" not in text.strip())
    if layout is None:
        kind = {dict: "a JSON object", list: "a JSON array"}.get(type(doc), f"a JSON {type(doc).__name__}")
        raise DataFormatError(name, None, None, f"{kind} in no supported layout (for pandas, write "
                              f"to_json(orient='records', lines=True)); expected {LAYOUT_NAMES}", "unsupported layout")
    if layout == "lines":
        return layout, iter([(1, _checked(name, 1, doc))])
    items = columns_to_records(doc, name) if layout == "columns" else doc
    return layout, ((i, _checked(name, i, item)) for i, item in enumerate(items, start=1))
