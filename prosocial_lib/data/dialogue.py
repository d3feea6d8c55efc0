"""Record shapes later code needs: one row per turn with the dialogue history so far, and chat messages.

ProsocialDialog stores one row per (context, response) turn; a model answering turn k must see the whole
dialogue before it: ``[context_0, response_0, ..., context_{k-1}, response_{k-1}, context_k]``.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import datasets

from .errors import DataFormatError, DataSkipWarning

TURN_FEATURES = datasets.Features({
    "dialogue_id": datasets.Value("int64"),
    "response_id": datasets.Value("int64"),
    "history": datasets.Sequence(datasets.Value("string")),
    "response": datasets.Value("string"),
    "safety_label": datasets.Value("string"),
    "rots": datasets.Sequence(datasets.Value("string")),
    "source": datasets.Value("string"),
})

_NEEDED = ("context", "response", "dialogue_id", "response_id", "safety_label", "rots", "source")


def _columns(ds: Any) -> dict[str, list]:
    if isinstance(ds, datasets.Dataset):
        return ds[:] if len(ds) else {c: [] for c in ds.column_names}
    rows = list(ds)
    keys = rows[0].keys() if rows else _NEEDED
    return {k: [r.get(k) for r in rows] for k in keys}


def dialogue_turns(ds: datasets.Dataset | Sequence[dict], max_history_turns: int | None = None
                   ) -> datasets.Dataset:
    """ProsocialDialog rows -> one row per turn with ``history`` (earlier contexts and responses interleaved, then
    the current context), ``response``, ``safety_label``, ``rots``, ``source`` and the ids.

    Rows may come in any order (they are sorted by ``(dialogue_id, response_id)``). Call this on whole dialogues,
    before filtering by label: a dialogue whose earlier turns are missing gets a shorter history, and a
    :class:`DataSkipWarning` says how many dialogues that affected. ``max_history_turns`` keeps only the last N
    utterances of each history (None = all).
    """
    cols = _columns(ds)
    missing = [c for c in _NEEDED if c not in cols]
    if missing:
        raise DataFormatError("<dataset>", None, missing[0], f"missing column {missing[0]!r}: dialogue_turns "
                              "needs ProsocialDialog rows (load_prosocial_dialog)", "missing column")
    by_dialogue: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(cols["dialogue_id"]):
        by_dialogue[d].append(i)
    out: dict[str, list] = {k: [] for k in TURN_FEATURES}
    gaps = 0
    for d in sorted(by_dialogue):
        idx = sorted(by_dialogue[d], key=lambda i: cols["response_id"][i])
        ids = [cols["response_id"][i] for i in idx]
        for k in range(1, len(ids)):
            if ids[k] == ids[k - 1]:
                raise DataFormatError("<dataset>", idx[k] + 1, "response_id",
                                      f"dialogue {d} has two rows with response_id {ids[k]}", "duplicate turn")
        if ids != list(range(ids[-1] + 1)):
            gaps += 1
        past: list[str] = []
        for i in idx:
            history = past + [cols["context"][i]]
            if max_history_turns is not None:
                history = history[-max_history_turns:] if max_history_turns > 0 else history[-1:]
            out["dialogue_id"].append(d)
            out["response_id"].append(cols["response_id"][i])
            out["history"].append(history)
            out["response"].append(cols["response"][i])
            out["safety_label"].append(cols["safety_label"][i])
            out["rots"].append(list(cols["rots"][i] or []))
            out["source"].append(cols["source"][i])
            past = past + [cols["context"][i], cols["response"][i]]
    if gaps:
        warnings.warn(f"{gaps} dialogue(s) lack earlier turns (response_id does not run 0, 1, 2, ...): their "
                      "histories start late", DataSkipWarning, stacklevel=2)
    return datasets.Dataset.from_dict(out, features=TURN_FEATURES)


def history_to_messages(history: Sequence[str], response: str | None = None, system: str | None = None
                        ) -> list[dict[str, str]]:
    """Chat messages for a chat template: roles alternate so that the LAST history item is the user's; an
    optional system message comes first and an optional ``response`` is appended as the assistant's.

    >>> history_to_messages(["hi", "hello!", "how are you?"], response="fine")
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello!'},
     {'role': 'user', 'content': 'how are you?'}, {'role': 'assistant', 'content': 'fine'}]
    """
    history = list(history)
    if not history:
        raise ValueError("history is empty: there is nothing to answer")
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    n = len(history)
    for i, text in enumerate(history):
        messages.append({"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": text})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages
