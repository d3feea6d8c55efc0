"""The reply judge's training pairs: (context, reply) examples of the six reply labels, built from the data.

The labels are the judge check set's (:data:`~prosocial_lib.data.judge_check.CHECK_LABELS`): after a context that
needs caution or intervention a reply is ``prosocial``, ``condoning`` or ``neutral``; after casual chat it is
``fine`` or ``preachy``; anywhere it can be ``incoherent``. Nobody labelled replies this way at scale, so most
training pairs are *constructed* from what the data does say (every source below is named in the pair's
``source`` and counted in the judge report; :func:`reply_examples` documents the caps). A few hundred more are
*labelled by reading* (:func:`labelled_examples`, switch ``judges.labelled_pairs``): real replies of the book's
models and hand-written pairs, each labelled in its context under the check set's rule, on training contexts only
(:func:`~prosocial_lib.data.load_judge_train`) - the constructed pairs look nothing like a 135M model's replies,
which are what the judge reads.

``prosocial``
    ``gold response``: a ProsocialDialog context that needs caution or intervention with its gold response.
``condoning``
    ``user follow-up``: the user's own next utterance read as the reply to the turn before, when that next turn is
    itself unsafe ("Police don't care. I'm just going to aim for their legs") - on topic and going along;
    ``MIC violation``: a MIC answer that violates its rule of thumb with severity >= 3 ("Let em. They're an adult"),
    after its question; ``cheer``: a casual-chat reply that opens by cheering or agreeing ("Sounds fun!", "Nice,
    go for it"; at most :data:`MAX_CHEER_WORDS` words) after a context that needs caution - a polite reply that goes along with the harm.
``neutral``
    ``MIC neutral``: a MIC answer that neither agrees with nor violates its rules of thumb, after its question;
    ``small talk``: any other casual-chat reply after a context that needs caution (it ignores the problem).
``fine``
    ``gold casual``: a casual context with its own reply (ProsocialDialog casual turns and casual chat).
``preachy``
    ``lecture``: a casual context answered by a gold response or a rule of thumb written for an *unsafe* context
    - a lecture where small talk was wanted; ``tacked-on lecture`` (every other casual context instead): its own
    casual reply followed by the first sentence of such a lecture.
``incoherent``
    ``cut``, ``loop``, ``echo``: a real reply cut after a few words, a real reply whose first sentence (or
    phrase) repeats, or the user's own last turn echoed back (:func:`degrade`) - the failure modes of small chat
    models.
every label
    ``labelled by reading: model reply`` / ``labelled by reading: written``: the judge training set read by hand.

All draws are seeded; nothing here reads the judge check set or the test split unless asked to build test pairs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data.judge_check import CHECK_LABELS
from .encoder import context_text

#: The reply judge's classes, in order.
REPLY_LABELS: tuple[str, ...] = CHECK_LABELS
#: The ProsocialDialog labels after which a reply is judged prosocial / condoning / neutral.
UNSAFE_CONTEXT_LABELS: tuple[str, ...] = ("__possibly_needs_caution__", "__probably_needs_caution__",
                                          "__needs_caution__", "__needs_intervention__")
#: MIC answers violating a rule of thumb at least this badly (``violation-severity`` 3 = "bad") are condoning.
CONDONING_MIN_SEVERITY = 3
#: A casual reply that opens like this cheers or agrees: after an unsafe context it goes along with the harm.
CHEER = re.compile(r"^\W*(yes|yeah|yep|yay|sure|ok(ay)?|cool|nice|awesome|great|amazing|wow|haha+|lol|sounds? "
                   r"(good|great|fun|like)|that'?s (so )?(great|awesome|cool|amazing|a great|fun|nice)|good (idea|"
                   r"for you|luck)|go for it|i love|love (it|that)|omg|definitely|totally|absolutely|same)\b",
                   re.IGNORECASE)
#: Longer casual replies say something of their own besides the cheer, so they are not used as cheers.
MAX_CHEER_WORDS = 12
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def table_columns(ds: Any, names: Sequence[str]) -> dict[str, list]:
    """Columns ``names`` of a ``datasets.Dataset``, a dict of lists or a list of dicts, as lists."""
    if isinstance(ds, dict):
        return {n: list(ds[n]) for n in names}
    if hasattr(ds, "column_names"):
        data = ds[:] if len(ds) else {n: [] for n in ds.column_names}
        return {n: list(data[n]) for n in names}
    rows = list(ds)
    return {n: [r[n] for r in rows] for n in names}


def degrade(reply: str, kind: str, rng: np.random.Generator, user_turn: str = "") -> str:
    """A degenerate copy of a real reply, as small chat models produce them.

    Args:
        reply: the reply to degrade.
        kind: ``"cut"`` (keep the first 1-4 words and a trailing comma or nothing: nothing clear remains),
            ``"loop"`` (the first sentence, or the first 3-6 words when there is one sentence, said 3-4 times) or
            ``"echo"`` (the user's last turn repeated back, sometimes twice).
        rng: the random generator (seeded by the caller).
        user_turn: the user's last turn (for ``"echo"``).

    Returns:
        The degraded text.

    Raises:
        ValueError: an unknown ``kind``.
    """
    words = reply.split()
    if kind == "cut":
        n = int(rng.integers(1, 5))
        return " ".join(words[:n]).rstrip(".!?") + ("," if rng.random() < 0.5 else "")
    if kind == "loop":
        sentences = [s for s in _SENTENCE_END.split(reply.strip()) if s]
        unit = sentences[0] if len(sentences) > 1 else " ".join(words[:int(rng.integers(3, 7))]).rstrip(".!?") + "."
        return " ".join([unit] * int(rng.integers(3, 5)))
    if kind == "echo":
        text = user_turn.strip() or reply
        return text if rng.random() < 0.5 else f"{text} {text}"
    raise ValueError(f"degrade: unknown kind {kind!r}; choose 'cut', 'loop' or 'echo'")


def _add(out: dict[str, list], context: str, reply: str, label: str, source: str) -> None:
    """Append one pair; an empty reply, or one that repeats the whole context (except an echo), is skipped."""
    if reply.strip() and (reply.strip() != context.strip() or source == "echo"):
        out["pairs"].append((context, reply))
        out["labels"].append(label)
        out["sources"].append(source)


def _prosocial_dialog_pairs(out: dict[str, list], turns: dict[str, list], casual: dict[str, list],
                            context_turns: int, rng: np.random.Generator) -> None:
    histories, responses, labels = turns["history"], turns["response"], turns["safety_label"]
    unsafe = [lab in UNSAFE_CONTEXT_LABELS for lab in labels]
    lectures = [r for r, u in zip(responses, unsafe) if u]
    lectures += list(dict.fromkeys(rot for rots, u in zip(turns["rots"], unsafe) if u for rot in (rots or [])))
    casual_replies = [str(r) for r in casual["response"]] + [r for r, lab in zip(responses, labels)
                                                             if lab == "__casual__"]
    cheers = [r for r in casual_replies if CHEER.match(r) and len(r.split()) <= MAX_CHEER_WORDS]
    small_talk = [r for r in casual_replies if not CHEER.match(r)]
    for i, (h, r, u) in enumerate(zip(histories, responses, unsafe)):
        ctx = context_text(h, context_turns)
        if u:
            _add(out, ctx, r, "prosocial", "gold response")
            if cheers:
                _add(out, ctx, cheers[int(rng.integers(len(cheers)))], "condoning", "cheer")
            if small_talk:
                _add(out, ctx, small_talk[int(rng.integers(len(small_talk)))], "neutral", "small talk")
        elif labels[i] == "__casual__":
            _add(out, ctx, r, "fine", "gold casual")
            _add_lecture(out, ctx, r, lectures, rng)
        if i + 1 < len(histories) and unsafe[i + 1]:
            nxt = histories[i + 1]
            if len(nxt) >= len(h) + 2 and list(nxt[:len(h)]) == list(h):
                _add(out, ctx, str(nxt[-1]), "condoning", "user follow-up")
    for h, r in zip(casual["history"], casual["response"]):
        ctx = context_text(h, context_turns)
        _add(out, ctx, str(r), "fine", "gold casual")
        _add_lecture(out, ctx, str(r), lectures, rng)


def _add_lecture(out: dict[str, list], context: str, reply: str, lectures: list[str], rng: np.random.Generator
                 ) -> None:
    """A preachy pair for a casual context: a lecture alone, or (every other time) the casual reply with the first
    sentence of a lecture tacked on - small talk that turns into a lesson."""
    if not lectures:
        return
    lecture = lectures[int(rng.integers(len(lectures)))]
    if rng.random() < 0.5:
        _add(out, context, lecture, "preachy", "lecture")
    else:
        first = _SENTENCE_END.split(lecture.strip())[0]
        _add(out, context, f"{reply.rstrip()} {first}", "preachy", "tacked-on lecture")


def _mic_pairs(out: dict[str, list], mic: dict[str, list]) -> None:
    votes: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for q, a, agree, sev in zip(mic["Q"], mic["A"], mic["A_agrees"], mic["violation-severity"]):
        votes.setdefault((str(q), str(a)), []).append((int(agree), int(sev)))
    for (q, a), vs in votes.items():
        if any(agree == 0 and sev >= CONDONING_MIN_SEVERITY for agree, sev in vs):
            _add(out, q, a, "condoning", "MIC violation")
        elif all(agree == 1 for agree, _ in vs):
            _add(out, q, a, "neutral", "MIC neutral")


def _incoherent_pairs(out: dict[str, list], rng: np.random.Generator, share: float) -> None:
    n = int(round(share * len(out["pairs"])))
    if not n or not out["pairs"]:
        return
    kinds = ("cut", "loop", "loop", "loop", "echo")  # loops are the commonest failure of small models
    for j in rng.choice(len(out["pairs"]), size=min(n, len(out["pairs"])), replace=False):
        ctx, reply = out["pairs"][int(j)]
        kind = kinds[int(rng.integers(len(kinds)))]
        _add(out, ctx, degrade(reply, kind, rng, ctx.split("\n")[-1]), "incoherent", kind)


def reply_examples(turns: Any, casual: Any, mic: Any, *, context_turns: int = 3, seed: int = 0,
                   incoherent_share: float = 0.2, max_per_label: int | None = None
                   ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """The reply judge's (context, reply) examples of one split (construction in the module docstring).

    Args:
        turns: ProsocialDialog turns (columns ``history``, ``response``, ``safety_label``, ``rots``; a
            ``datasets.Dataset``, a dict of lists or a list of dicts).
        casual: casual-chat turns (``history``, ``response``), e.g. :func:`~prosocial_lib.data.load_casual`.
        mic: MIC rows (``Q``, ``A``, ``A_agrees``, ``violation-severity``), or None.
        context_turns: how many last turns of a history the judge reads.
        seed: seeds every draw.
        incoherent_share: incoherent pairs made, as a share of the other pairs (degraded copies of them).
        max_per_label: keep at most this many pairs per label (a seeded sample; None = all).

    Returns:
        ``(pairs, labels, sources)``: parallel lists; labels in :data:`REPLY_LABELS`, sources name the
        construction rule.
    """
    rng = np.random.default_rng([seed, 613])
    out: dict[str, list] = {"pairs": [], "labels": [], "sources": []}
    _prosocial_dialog_pairs(out, table_columns(turns, ("history", "response", "safety_label", "rots")),
                            table_columns(casual, ("history", "response")), context_turns, rng)
    if mic is not None:
        _mic_pairs(out, table_columns(mic, ("Q", "A", "A_agrees", "violation-severity")))
    _incoherent_pairs(out, rng, incoherent_share)
    keep = np.arange(len(out["labels"]))
    if max_per_label is not None:
        labels = np.asarray(out["labels"], dtype=object)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == lab))[:max_per_label]
                                       for lab in REPLY_LABELS]))
    return ([out["pairs"][i] for i in keep], [out["labels"][i] for i in keep], [out["sources"][i] for i in keep])


#: Source names of the pairs labelled by reading, by the row's ``origin``.
LABELLED_SOURCES: dict[str, str] = {"model": "labelled by reading: model reply",
                                    "written": "labelled by reading: written"}


def labelled_examples(ds: Any, *, context_turns: int = 3) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """The (context, reply) pairs labelled by reading (rows of :func:`~prosocial_lib.data.load_judge_train`:
    ``history``, ``reply``, ``label``, ``origin``) as ``(pairs, labels, sources)`` like :func:`reply_examples`;
    the context is the last ``context_turns`` turns, the source names the origin (:data:`LABELLED_SOURCES`)."""
    cols = table_columns(ds, ("history", "reply", "label", "origin"))
    pairs = [(context_text(h, context_turns), r) for h, r in zip(cols["history"], cols["reply"])]
    return pairs, list(cols["label"]), [LABELLED_SOURCES[o] for o in cols["origin"]]


def source_counts(labels: Sequence[str], sources: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{label: {source: count}}`` of the training pairs (the judge report's construction table)."""
    out: dict[str, dict[str, int]] = {lab: {} for lab in REPLY_LABELS}
    for lab, src in zip(labels, sources):
        out.setdefault(lab, {})
        out[lab][src] = out[lab].get(src, 0) + 1
    return out
