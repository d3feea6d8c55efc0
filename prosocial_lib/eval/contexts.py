"""Context sets for the audit and the evaluation: adversarial, casual, and a user's own contexts."""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any

from ..config.schema import DataConfig
from ..data.errors import DataFormatError

#: Columns of a context set (a ``datasets.Dataset``), whatever its source.
CONTEXT_COLUMNS: tuple[str, ...] = ("context_id", "history", "context", "response", "safety_label", "rots",
                                    "source")


# ---------------------------------------------------------------------- context sets
def _context_set(rows: list[dict[str, Any]]):
    import datasets
    features = datasets.Features({
        "context_id": datasets.Value("string"), "history": datasets.Sequence(datasets.Value("string")),
        "context": datasets.Value("string"), "response": datasets.Value("string"),
        "safety_label": datasets.Value("string"), "rots": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string")})
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in CONTEXT_COLUMNS}, features=features)


def _turn_rows(turns, split: str) -> list[dict[str, Any]]:
    cols = turns[:]
    return [{"context_id": f"prosocial-{split}-{d}-{r}", "history": list(h), "context": h[-1], "response": resp,
             "safety_label": lab, "rots": list(rots or []), "source": src}
            for d, r, h, resp, lab, rots, src in zip(cols["dialogue_id"], cols["response_id"], cols["history"],
                                                     cols["response"], cols["safety_label"], cols["rots"],
                                                     cols["source"])]


#: The context sets of the audit and the evaluation, in the order the chapters show them.
CONTEXT_SETS: tuple[str, ...] = ("adversarial", "casual", "subtle")


def build_context_sets(data: DataConfig, num_contexts: int, *, seed: int = 0, split: str = "test",
                       sets: tuple[str, ...] | list[str] = CONTEXT_SETS) -> dict[str, Any]:
    """``{name: Dataset}`` for each of ``sets`` (default :data:`CONTEXT_SETS`), with :data:`CONTEXT_COLUMNS`, at
    most ``num_contexts`` contexts each.

    - ``adversarial``: turns of ProsocialDialog's ``split`` (``data.prosocial_source``, capped at
      ``data.max_eval_examples`` rows) whose context is not ``__casual__``, with their dialogue history;
    - ``casual``: real casual chat (``data.casual_source``: chitchat-dataset or DailyDialog conversations of that
      split); casual ProsocialDialog turns only when ``casual_source`` is ``"prosocial"`` or when there is too
      little casual chat;
    - ``subtle``: the subtle contexts (``data.subtle_source``, :func:`~prosocial_lib.data.load_subtle`): everyday
      chats whose last user turn reveals a risk in passing, the situations the paper says models miss.

    Seeded by ``seed`` (``Config.seed``): the same arguments give the same contexts. An adversarial or subtle
    set with fewer candidates than asked for is used whole (the subtle set has 130 contexts; a warning only for
    the adversarial one, whose size depends on ``data.max_eval_examples``). The audit (chapter 01,
    ``audit.num_contexts``) and the comparison (chapter 04) draw their contexts here.

    Raises:
        ValueError: an unknown name in ``sets``.
    """
    unknown = [s for s in sets if s not in CONTEXT_SETS]
    if unknown:
        raise ValueError(f"unknown context set(s) {unknown}; choose from {', '.join(CONTEXT_SETS)}")
    out: dict[str, Any] = {}
    turns = _prosocial_turns(data, split) if {"adversarial", "casual"} & set(sets) else []
    for name in sets:
        if name == "adversarial":
            unsafe = [r for r in turns if r["safety_label"] != "__casual__"]
            rows = _sample(unsafe, num_contexts, seed, "adversarial (non-casual ProsocialDialog turns)")
        elif name == "casual":
            rows = _casual_rows(data, split, num_contexts, seed, turns)
        else:
            rows = _subtle_rows(data, num_contexts, seed)
        out[name] = _context_set(rows)
    return out


def _prosocial_turns(data: DataConfig, split: str) -> list[dict[str, Any]]:
    from ..data.dialogue import dialogue_turns
    from ..data.prosocial_dialog import load_prosocial_dialog
    return _turn_rows(dialogue_turns(load_prosocial_dialog(data.prosocial_source, split,
                                                           max_rows=data.max_eval_examples)), split)


def _casual_rows(data: DataConfig, split: str, n: int, seed: int, turns: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """``n`` casual contexts: real casual chat, topped up with casual ProsocialDialog turns if it runs short."""
    from ..data.casual import load_casual
    chat: list[dict[str, Any]] = []
    if data.casual_source not in ("prosocial", "prosocial_casual"):
        ds = load_casual(data.casual_source, split, seed=seed, max_rows=n, prosocial_source=data.prosocial_source)
        cols = ds[:] if len(ds) else {"history": [], "response": [], "source": []}
        chat = [{"context_id": f"{src}-{split}-{i}", "history": list(h), "context": h[-1], "response": resp,
                 "safety_label": "", "rots": [], "source": src}
                for i, (h, resp, src) in enumerate(zip(cols["history"], cols["response"], cols["source"]))]
        chat = _sample(chat, n, seed, None)
    if len(chat) < n:  # too little casual chat: top up with casual ProsocialDialog turns
        chat += _sample([r for r in turns if r["safety_label"] == "__casual__"], n - len(chat), seed, None)
    if len(chat) < n:
        warnings.warn(f"casual context set: only {len(chat)} contexts available, {n} asked for "
                      f"(num_contexts)", stacklevel=3)
    return chat


def _subtle_rows(data: DataConfig, n: int, seed: int) -> list[dict[str, Any]]:
    from ..data.subtle import load_subtle
    cols = load_subtle(data.subtle_source)[:]
    rows = [{"context_id": i, "history": list(h), "context": h[-1], "response": "", "safety_label": lab,
             "rots": list(rots), "source": "subtle"}
            for i, h, lab, rots in zip(cols["id"], cols["history"], cols["safety_label"], cols["rots"])]
    return _sample(rows, n, seed, None)


def _sample(rows: list[dict[str, Any]], n: int, seed: int, what: str | None) -> list[dict[str, Any]]:
    if what and len(rows) < n:
        warnings.warn(f"{what}: only {len(rows)} contexts available, {n} asked for (num_contexts); "
                      "using all of them", stacklevel=3)
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in picked]


def load_contexts_jsonl(path: str | Path, default_set: str | None = None) -> dict[str, Any]:
    """A user's own contexts: one JSON object per line with ``context`` (a string: one user turn) or ``history``
    (a list of turns, oldest first, the user's last), optionally ``set`` (context set name; default: the file's
    stem), ``id`` and ``response`` (a gold reply, for BLEU/F1). Blank lines are ignored; anything else that is not
    such an object raises :class:`~prosocial_lib.data.DataFormatError` naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"contexts file {str(path)!r} does not exist")
    default_set = default_set or path.stem
    sets: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(str(path), line_no, None, f"not valid JSON ({e.msg})", "bad json") from e
            if not isinstance(obj, dict):
                raise DataFormatError(str(path), line_no, None, f"expected a JSON object, got {type(obj).__name__}",
                                      "not an object")
            has_ctx, has_hist = "context" in obj, "history" in obj
            if has_ctx == has_hist:
                raise DataFormatError(str(path), line_no, "context", "give exactly one of 'context' (a string) or "
                                      "'history' (a list of strings)", "missing field")
            if has_ctx:
                if not isinstance(obj["context"], str) or not obj["context"].strip():
                    raise DataFormatError(str(path), line_no, "context", "must be a non-empty string, got "
                                          f"{obj['context']!r:.60}", "bad type")
                history = [obj["context"]]
            else:
                history = obj["history"]
                if (not isinstance(history, list) or not history
                        or not all(isinstance(t, str) and t.strip() for t in history)):
                    raise DataFormatError(str(path), line_no, "history", "must be a non-empty list of non-empty "
                                          f"strings, got {history!r:.60}", "bad type")
            for key in ("set", "id", "response"):
                if key in obj and not isinstance(obj[key], (str, int) if key == "id" else str):
                    raise DataFormatError(str(path), line_no, key, f"must be a string, got {obj[key]!r:.60}",
                                          "bad type")
            name = obj.get("set") or default_set
            rows = sets.setdefault(name, [])
            rows.append({"context_id": str(obj.get("id", f"{path.stem}-{line_no}")), "history": history,
                         "context": history[-1], "response": obj.get("response", ""), "safety_label": "",
                         "rots": [], "source": path.name})
    if not sets:
        raise DataFormatError(str(path), None, None, "no contexts in the file", "empty")
    for name, rows in sets.items():
        ids = [r["context_id"] for r in rows]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise DataFormatError(str(path), None, "id", f"context id {dup!r} appears twice in set {name!r}",
                                  "duplicate id")
    return {name: _context_set(rows) for name, rows in sets.items()}


# ---------------------------------------------------------------------- running
def _contexts_digest(ds) -> str:
    cols = ds[:]
    payload = json.dumps([cols["context_id"], cols["history"]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
