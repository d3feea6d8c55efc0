"""The judges' training tasks, built from ProsocialDialog, MIC and casual chat."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...config.schema import DataConfig, JudgesConfig
from .encoder import JudgeError, context_text

#: Context labels whose contexts count as unsafe (method.md section 4: "needs caution / needs intervention").
UNSAFE_LABELS: tuple[str, ...] = ("__needs_caution__", "__needs_intervention__")
#: MIC ``A_agrees`` 0 / 1 / 2.
ROT_CLASSES: tuple[str, ...] = ("disagrees", "neutral", "agrees")


# ====================================================================== judge data
@dataclass
class JudgeTask:
    """The training and test examples of one judge head. ``kind`` "text": inputs are texts; "pair": inputs are
    (context, reply) tuples."""

    name: str
    kind: str
    description: str
    train_x: list
    train_y: list
    test_x: list
    test_y: list
    classes: list
    balanced: bool = False

    def texts(self) -> list[str]:
        """Every text the task embeds (both sides of a pair), train then test, in order."""
        xs = [*self.train_x, *self.test_x]
        return [t for x in xs for t in (x if self.kind == "pair" else (x,))]


def _columns(ds: Any, names: Sequence[str]) -> dict[str, list]:
    """Columns of a datasets.Dataset, a dict of lists or a list of dicts, as lists."""
    if isinstance(ds, dict):
        return {n: list(ds[n]) for n in names}
    if hasattr(ds, "column_names"):
        data = ds[:] if len(ds) else {n: [] for n in ds.column_names}
        return {n: list(data[n]) for n in names}
    rows = list(ds)
    return {n: [r[n] for r in rows] for n in names}


def prosocial_examples(turns: Any, casual_replies: Sequence[str], *, context_turns: int = 1, seed: int = 0
                       ) -> dict[str, tuple[list, list]]:
    """The ProsocialDialog-based examples of one split, as ``{head: (inputs, labels)}``.

    ``turns`` has ProsocialDialog turn columns (``history``, ``response``, ``safety_label``, ``rots``: see
    :func:`~prosocial_lib.data.dialogue_turns`); ``casual_replies`` are replies from casual chat. The rules are
    in the module docstring. Deterministic for a seed.

    Args:
        turns: ProsocialDialog turns (a ``datasets.Dataset``, a dict of lists or a list of dicts).
        casual_replies: replies from casual chat (acceptable casual replies, off-topic replies to unsafe contexts).
        context_turns: how many last turns a judge reads (:func:`~.encoder.context_text`).
        seed: seeds the choice of replies from other conversations.

    Returns:
        ``{"safety_5way" | "safety_3way" | "reply_in_context" | "reply_safety" | "preachiness": (inputs, labels)}``.
    """
    cols = _columns(turns, ("history", "response", "safety_label", "rots"))
    rng = np.random.default_rng(seed)
    contexts = [context_text(h, context_turns) for h in cols["history"]]
    labels = cols["safety_label"]
    responses = cols["response"]
    unsafe = [lab in UNSAFE_LABELS for lab in labels]
    casual_idx = [i for i, lab in enumerate(labels) if lab == "__casual__"]
    casual_pool = [responses[i] for i in casual_idx] + [str(r) for r in casual_replies]
    out: dict[str, tuple[list, list]] = {}
    out["safety_5way"] = (list(contexts), list(labels))
    out["safety_3way"] = (list(contexts), [_collapse(lab) for lab in labels])
    safe_texts = [*responses, *(str(r) for r in casual_replies),
                  *dict.fromkeys(rot for rots in cols["rots"] for rot in (rots or []))]
    out["reply_safety"] = ([*contexts, *safe_texts], [int(u) for u in unsafe] + [0] * len(safe_texts))

    pairs: list[tuple[str, str]] = [(c, r) for c, r in zip(contexts, responses)]
    ys: list[int] = [0] * len(pairs)
    if casual_pool:
        for i, (c, u) in enumerate(zip(contexts, unsafe)):
            if u or labels[i] == "__casual__":
                reply = casual_pool[int(rng.integers(len(casual_pool)))]
                if reply == responses[i]:
                    continue
                pairs.append((c, reply))
                ys.append(int(u))
    # On-topic failures: the user's own next utterance, when it is unsafe, read as a reply to the context before
    # it ("Police don't care. I'm just going to aim for their legs") - it talks about the same thing as the gold
    # response, so the judge cannot pass every on-topic reply.
    for i in range(len(contexts) - 1):
        h, nxt = cols["history"][i], cols["history"][i + 1]
        if len(nxt) >= 3 and list(nxt[:len(h)]) == list(h) and unsafe[i + 1]:
            pairs.append((contexts[i], str(nxt[-1])))
            ys.append(1)
    out["reply_in_context"] = (pairs, ys)

    preachy = [r for r, u in zip(responses, unsafe) if u]
    preachy += list(dict.fromkeys(rot for rots, u in zip(cols["rots"], unsafe) if u for rot in (rots or [])))
    casual = [responses[i] for i in casual_idx] + [str(r) for r in casual_replies]
    out["preachiness"] = ([*preachy, *casual], [1] * len(preachy) + [0] * len(casual))
    return out


def _collapse(label: str) -> str:
    from ...data.labels import collapse_safety_label

    return collapse_safety_label(label)


def mic_rot_examples(mic: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """MIC rows -> one ``((Q, A), agreement)`` example per distinct (Q, A) pair: ``"disagrees"`` if any of its
    rules of thumb is violated (``A_agrees == 0``), else ``"agrees"`` if any agrees (2), else ``"neutral"``.

    Args:
        mic: MIC rows (columns ``Q``, ``A``, ``A_agrees``), any table form :func:`_columns` reads.

    Returns:
        ``(pairs, labels)``.
    """
    cols = _columns(mic, ("Q", "A", "A_agrees"))
    votes: dict[tuple[str, str], set[int]] = {}
    for q, a, agree in zip(cols["Q"], cols["A"], cols["A_agrees"]):
        votes.setdefault((str(q), str(a)), set()).add(int(agree))
    pairs = list(votes)
    labels = [ROT_CLASSES[0] if 0 in v else ROT_CLASSES[2] if 2 in v else ROT_CLASSES[1] for v in votes.values()]
    return pairs, labels


#: MIC answers that violate a rule of thumb at least this badly (``violation-severity``: 3 = "bad") count as
#: replies that fail their question in the ``reply_in_context`` judge.
CONDONING_MIN_SEVERITY = 3


def mic_condoning_examples(mic: Any) -> tuple[list[tuple[str, str]], list[int]]:
    """MIC rows -> ``((Q, A), fails)`` examples for the ``reply_in_context`` judge, one per distinct (Q, A):
    1 if A violates a rule of thumb with ``violation-severity >= CONDONING_MIN_SEVERITY`` (condoning or doing
    harm: "Let em. They're an adult" to a drunk friend driving home), 0 if it violates none. Pairs whose only
    violations are mild or unrated are left out (neither clearly fine nor clearly failing).

    Args:
        mic: MIC rows (``Q``, ``A``, ``A_agrees``, ``rot-severity``).

    Returns:
        ``(pairs, labels)`` with labels 1 (fails) / 0 (acceptable).
    """
    cols = _columns(mic, ("Q", "A", "A_agrees", "violation-severity"))
    worst: dict[tuple[str, str], int | None] = {}
    for q, a, agree, sev in zip(cols["Q"], cols["A"], cols["A_agrees"], cols["violation-severity"]):
        key = (str(q), str(a))
        prev = worst.get(key)
        if int(agree) == 0:
            worst[key] = max(int(sev), prev if prev is not None else -1)
        else:
            worst.setdefault(key, None)
    pairs, labels = [], []
    for key, sev in worst.items():
        if sev is None:
            pairs.append(key)
            labels.append(0)
        elif sev >= CONDONING_MIN_SEVERITY:
            pairs.append(key)
            labels.append(1)
    return pairs, labels


HEAD_DESCRIPTIONS: dict[str, tuple[str, str, bool]] = {
    # name: (kind, what it predicts, class-balanced)
    "safety_5way": ("text", "context -> 5 ProsocialDialog safety labels (Canary-lite)", False),
    "safety_3way": ("text", "context -> casual / caution / intervention", False),
    "reply_safety": ("text", "reply alone -> unsafe in itself (1) or not (0)", True),
    "reply_in_context": ("pair", "(context, reply) -> reply fails an unsafe context (1) or not (0)", True),
    "rot_agreement": ("pair", "(question, reply) -> disagrees / neutral / agrees with the rule of thumb (MIC)", False),
    "preachiness": ("text", "reply alone -> preachy / moralising (1) or casual (0)", True),
}


def make_tasks(train: dict[str, tuple[list, list]], test: dict[str, tuple[list, list]]) -> list[JudgeTask]:
    """Pair the train and test examples of each head into :class:`JudgeTask` objects.

    Args:
        train: ``{head: (inputs, labels)}`` from the judge training split(s).
        test: the same from the test split.

    Returns:
        One task per head in ``train``, with its kind, description and class order.
    """
    from ...data.labels import SAFETY_LABELS

    order = {"safety_5way": list(SAFETY_LABELS), "safety_3way": ["casual", "caution", "intervention"],
             "rot_agreement": list(ROT_CLASSES)}
    tasks = []
    for name, (kind, desc, balanced) in HEAD_DESCRIPTIONS.items():
        if name not in train:
            continue
        (tx, ty), (vx, vy) = train[name], test.get(name, ([], []))
        classes = order.get(name, [0, 1])
        tasks.append(JudgeTask(name, kind, desc, list(tx), list(ty), list(vx), list(vy), classes, balanced))
    return tasks


#: With ``judges.train_split = "auto"``, the judges learn from the held-out split alone when it has at least
#: this many ProsocialDialog rows; the embedded sample's is smaller, so they also learn from "train" there.
AUTO_MIN_HELD_OUT_ROWS = 500


def judge_train_splits(settings: JudgesConfig, data: DataConfig, held_out_rows: int | None = None) -> list[str]:
    """The splits the judges learn from: ``judges.train_split`` ("train+validation" lists two), or for
    "auto" ``["validation"]`` when it has at least :data:`AUTO_MIN_HELD_OUT_ROWS` rows (``held_out_rows``; None =
    count ``data.prosocial_source``'s validation split), else ``["train", "validation"]``.

    Raises:
        JudgeError: a ``train_split`` that names no split."""
    spec = str(settings.train_split).strip().lower()
    if spec == "auto":
        if held_out_rows is None:
            from ...data.prosocial_dialog import load_prosocial_dialog

            held_out_rows = len(load_prosocial_dialog(data.prosocial_source, "validation"))
        return ["validation"] if held_out_rows >= AUTO_MIN_HELD_OUT_ROWS else ["train", "validation"]
    splits = [s.strip() for s in spec.split("+") if s.strip()]
    if not splits:
        raise JudgeError(f"judges.train_split = {settings.train_split!r}: name a split, e.g. validation")
    return splits


def _split_examples(settings: JudgesConfig, data: DataConfig, seed: int, split: str, cap: int | None,
                    casual_cap: int) -> dict[str, tuple[list, list]]:
    from ...data.casual import load_casual
    from ...data.dialogue import dialogue_turns
    from ...data.mic import load_mic
    from ...data.prosocial_dialog import load_prosocial_dialog

    turns = dialogue_turns(load_prosocial_dialog(data.prosocial_source, split, max_rows=cap))
    casual = load_casual(data.casual_source, split, seed=seed, max_rows=casual_cap,
                         prosocial_source=data.prosocial_source)
    examples = prosocial_examples(turns, list(casual["response"]), context_turns=settings.context_turns,
                                  seed=seed)
    mic = load_mic(data.mic_source, split, max_rows=cap)
    examples["rot_agreement"] = mic_rot_examples(mic)
    pairs, fails = mic_condoning_examples(mic)
    examples["reply_in_context"][0].extend(pairs)
    examples["reply_in_context"][1].extend(fails)
    return examples


def load_judge_tasks(settings: JudgesConfig, data: DataConfig, *, seed: int = 0) -> list[JudgeTask]:
    """Load the judge data (ProsocialDialog, MIC, casual chat of ``data``'s sources) from the judge train split(s)
    and the test split of ``settings``, and build every head's examples (casual chat drawn with ``seed``).

    Raises:
        JudgeError: the test split is also a training split."""
    train_splits = judge_train_splits(settings, data)
    if settings.test_split in train_splits:
        raise JudgeError(f"judges.test_split = {settings.test_split!r} is also a judge training split")

    def casual_cap(cap: int | None, parts: int) -> int:
        base = settings.casual_examples if cap is None else min(cap, settings.casual_examples)
        return max(1, base // parts)

    train: dict[str, tuple[list, list]] = {}
    for split in train_splits:
        for name, (x, y) in _split_examples(settings, data, seed, split, settings.max_train_examples,
                                            casual_cap(settings.max_train_examples, len(train_splits))).items():
            tx, ty = train.setdefault(name, ([], []))
            tx.extend(x)
            ty.extend(y)
    test = _split_examples(settings, data, seed, settings.test_split, data.max_eval_examples,
                           casual_cap(data.max_eval_examples, 1))
    return make_tasks(train, test)


def tasks_digest(tasks: Sequence[JudgeTask]) -> str:
    """A hash of every example and label: judges trained on other data are not reused.

    Args:
        tasks: the judge tasks.

    Returns:
        A hex SHA-256 digest (64 characters), streamed over the tasks.
    """
    h = hashlib.sha256()
    for t in tasks:
        h.update(json.dumps([t.name, t.kind, t.train_x, t.train_y, t.test_x, t.test_y], default=str).encode())
    return h.hexdigest()[:16]
