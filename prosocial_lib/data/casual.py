"""Casual chat: (history, response) turns from everyday conversation, where a preachy reply is the failure.

Sources (``source`` column of the result):

- ``"chitchat"``: the ``chitchat-dataset`` package (MIT): 7,168 real human chats from the Chit Chat Challenge,
  offline. A message there is a list of lines one person sent in a row; the lines are joined into one turn,
  and consecutive messages of the same sender are merged too.
- ``"prosocial_casual"`` (``source="prosocial"``): the casual turns of ProsocialDialog (label ``__casual__``), with
  their dialogue history.
- ``"daily_dialog"``: DailyDialog (Li et al., 2017) from the hub (online), or a local copy in any layout it is
  distributed in (:mod:`~prosocial_lib.data.daily_dialog`), detokenised to natural text.

Splits are by conversation, so no conversation is in two splits: chitchat is cut 80/10/10 after a seeded
shuffle; ProsocialDialog and DailyDialog keep their own train/validation/test splits.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets

from . import daily_dialog
from .checks import require_rows
from .dialogue import dialogue_turns
from .errors import LoadReport, _set_last_report
from .labels import normalise_split
from .prosocial_dialog import is_hub_id, load_prosocial_dialog

DAILY_DIALOG_HUB_ID = daily_dialog.HUB_ID
DAILY_DIALOG_REVISION = daily_dialog.HUB_REVISION
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_MAX_HISTORY_TURNS = 4

FEATURES = datasets.Features({
    "history": datasets.Sequence(datasets.Value("string")),
    "response": datasets.Value("string"),
    "source": datasets.Value("string"),
})


def conversation_examples(turns: Sequence[str], max_history_turns: int = DEFAULT_MAX_HISTORY_TURNS
                          ) -> list[tuple[list[str], str]]:
    """Every (history, response) pair of one conversation: each turn after the first answers the last
    ``max_history_turns`` turns before it (oldest first)."""
    keep = max(1, int(max_history_turns))
    return [(list(turns[max(0, i - keep): i]), turns[i]) for i in range(1, len(turns))]


def merge_speaker_turns(messages: Iterable[tuple[str, str]]) -> tuple[list[str], int]:
    """``(sender, text)`` messages -> one turn per change of speaker, and the number of empty messages skipped.
    Consecutive messages of one sender become one turn (joined with a space)."""
    turns: list[str] = []
    senders: list[str] = []
    empty = 0
    for sender, text in messages:
        text = " ".join(str(text).split())
        if not text:
            empty += 1
            continue
        if senders and senders[-1] == sender:
            turns[-1] = f"{turns[-1]} {text}"
        else:
            turns.append(text)
            senders.append(sender)
    return turns, empty


def split_conversations(keys: Sequence[str], split: str, seed: int = 0,
                        fractions: Sequence[float] = SPLIT_FRACTIONS) -> list[str]:
    """The conversation keys of ``split`` after a seeded shuffle of the sorted keys, cut by ``fractions``."""
    order = sorted(keys)
    random.Random(seed).shuffle(order)
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    lo, hi = bounds[split]
    return order[lo:hi]


# ---------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=2)
def chitchat_conversations(path: str | None = None) -> dict[str, tuple[list[str], int]]:
    """{conversation id: (turns, empty lines skipped)} from chitchat-dataset (or a file in its format).

    A chitchat message is the list of lines one sender typed in a row; lines and consecutive messages of one
    sender are merged into one turn, so turns alternate speakers."""
    import chitchat_dataset

    raw = chitchat_dataset.Dataset(path) if path else chitchat_dataset.Dataset()
    convs: dict[str, tuple[list[str], int]] = {}
    for key, conv in raw.items():
        messages = [(line.get("sender", ""), line.get("text", "")) for message in conv["messages"]
                    for line in message]
        convs[key] = merge_speaker_turns(messages)
    return convs


def _load_daily_dialog_hub(split: str) -> datasets.Dataset:
    """DailyDialog from the hub (online). Separate so tests can stand a local file in for the hub."""
    return datasets.load_dataset(DAILY_DIALOG_HUB_ID, split=split, revision=DAILY_DIALOG_REVISION)


def _dialogs_to_rows(dialogs: Iterable[Sequence[str]], source: str, max_history_turns: int, report: LoadReport
                     ) -> list[dict]:
    """Examples from conversations whose turns alternate speakers. An empty turn is skipped and counted; it
    cuts the conversation there, since joining its neighbours would pair two turns of the same speaker."""
    rows = []
    for dialog in dialogs:
        texts = [" ".join(str(u).split()) for u in dialog]
        report.rows_read += len(texts)
        segment: list[str] = []
        for text in texts + [""]:
            if text:
                segment.append(text)
                continue
            for history, response in conversation_examples(segment, max_history_turns):
                rows.append({"history": history, "response": response, "source": source})
            segment = []
        empty = sum(1 for t in texts if not t)
        if empty:
            report.skipped["empty turn"] += empty
    return rows


# ---------------------------------------------------------------------- the loader
def _chitchat_rows(split: str, seed: int, max_history_turns: int) -> tuple[list[dict], LoadReport, str]:
    convs = chitchat_conversations()
    report = LoadReport(source="casual chat (chitchat-dataset)", split=split)
    chosen = split_conversations(list(convs), split, seed)
    rows = _dialogs_to_rows([convs[k][0] for k in chosen], "chitchat", max_history_turns, report)
    empty = sum(convs[k][1] for k in chosen)  # empty lines, dropped before merging a speaker's lines
    if empty:
        report.skipped["empty turn"] += empty
        report.rows_read += empty
    report.notes.append(f"{len(chosen)} of {len(convs)} conversations in split {split!r} (seed {seed})")
    return rows, report, "chitchat-dataset"


def _prosocial_rows(split: str, prosocial_source: str, max_history_turns: int, strict: bool
                    ) -> tuple[list[dict], LoadReport, str]:
    pd_rows = load_prosocial_dialog(prosocial_source, split, strict=strict)
    turns = dialogue_turns(pd_rows, max_history_turns=max_history_turns)
    label = f"casual turns of ProsocialDialog ({prosocial_source})"
    report = LoadReport(source=label, split=split, rows_read=len(turns))
    rows = [{"history": h, "response": r, "source": "prosocial_casual"}
            for h, r, lab in zip(turns["history"], turns["response"], turns["safety_label"]) if lab == "__casual__"]
    report.notes.append(f"{len(rows)} of {len(turns)} turns are labelled __casual__")
    return rows, report, label


def _daily_dialog_rows(source: str, split: str, max_history_turns: int, strict: bool
                       ) -> tuple[list[dict], LoadReport, str]:
    report = LoadReport(source=f"DailyDialog ({source})", split=split)
    if source == "daily_dialog" or is_hub_id(source):
        hub = _load_daily_dialog_hub(split)
        records = hub.to_list() if hasattr(hub, "to_list") else list(hub)
        dialogs = daily_dialog.read_hub_records(records, split, report, strict)
        name = DAILY_DIALOG_HUB_ID
    else:
        dialogs = daily_dialog.read_local(Path(source).expanduser(), split, report, strict)
        name = source
    return _dialogs_to_rows(dialogs, "daily_dialog", max_history_turns, report), report, name


def load_casual(source: str = "chitchat", split: str = "train", *, seed: int = 0, max_rows: int | None = None,
                max_history_turns: int = DEFAULT_MAX_HISTORY_TURNS, prosocial_source: str = "embedded",
                strict: bool = True) -> datasets.Dataset:
    """Casual-chat turns with columns ``history`` (list[str], oldest first, alternating speakers, ending with the
    utterance to answer), ``response`` and ``source``.

    ``source``: ``"chitchat"`` (offline, real chats) | ``"prosocial"`` (casual turns of ProsocialDialog from
    ``prosocial_source``) | ``"daily_dialog"`` (hub) or a local DailyDialog file or folder in any layout of
    :mod:`~prosocial_lib.data.daily_dialog` (detokenised). Empty turns are skipped and counted (a
    :class:`~prosocial_lib.data.errors.DataSkipWarning` and :func:`~prosocial_lib.data.errors.last_load_report`).
    ``max_rows`` keeps a seeded random sample of that many turns (so a small cap still spans many conversations).

    Raises :class:`~prosocial_lib.data.errors.DataFormatError` (file, row, field) for a bad DailyDialog record
    (``dialog`` not a list of strings, a line that is not JSON or not UTF-8), an unreadable or empty file and a
    split with no examples; ``strict=False`` skips bad records and notes the rest instead. ``FileNotFoundError``
    when a local copy holds no files of the split; ``ValueError`` for an unknown source.
    """
    split = normalise_split(split, SPLITS)
    source = str(source)
    if source == "chitchat":
        rows, report, name = _chitchat_rows(split, seed, max_history_turns)
    elif source in ("prosocial", "prosocial_casual"):
        rows, report, name = _prosocial_rows(split, prosocial_source, max_history_turns, strict)
    elif source == "daily_dialog" or is_hub_id(source) or Path(source).expanduser().exists():
        rows, report, name = _daily_dialog_rows(source, split, max_history_turns, strict)
    else:
        raise ValueError(f"unknown casual source {source!r}: choose 'chitchat', 'prosocial', 'daily_dialog' or a "
                         "local DailyDialog folder")
    report.rows_kept = len(rows)
    report.notes.append("rows read = utterances; rows kept = (history, response) examples built from them")
    require_rows(report, name, split, strict, what="(history, response) examples")
    _set_last_report(report)
    report.warn_if_skipped("empty turns" if set(report.skipped) <= {"empty turn"} else "rows")
    if max_rows is not None and len(rows) > max_rows:
        picked = sorted(random.Random(seed).sample(range(len(rows)), max(0, int(max_rows))))
        rows = [rows[i] for i in picked]
    columns = {c: [r[c] for r in rows] for c in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)
