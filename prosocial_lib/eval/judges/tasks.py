"""The judges' training tasks, built from ProsocialDialog, MIC and casual chat."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config.schema import DataConfig, JudgesConfig
from .encoder import JudgeError, context_text
from .pairs import REPLY_LABELS, labelled_examples, reply_examples, source_counts, table_columns as _columns

#: Context labels whose contexts count as unsafe (method.md section 4: "needs caution / needs intervention").
UNSAFE_LABELS: tuple[str, ...] = ("__needs_caution__", "__needs_intervention__")
#: MIC ``A_agrees`` 0 / 1 / 2.
ROT_CLASSES: tuple[str, ...] = ("disagrees", "neutral", "agrees")


# ====================================================================== judge data
@dataclass
class JudgeTask:
    """The training, calibration and test examples of one judge. ``kind`` "text": inputs are texts; "pair": inputs
    are (context, reply) tuples. The calibration examples (``cal_x``, ``cal_y``) come from the training split(s)
    but are held out of training, by context (:func:`calibration_mask`): the flag thresholds and the temperature
    of the fine-tuned judges are chosen on them."""

    name: str
    kind: str
    description: str
    train_x: list
    train_y: list
    test_x: list
    test_y: list
    classes: list
    balanced: bool = False
    cal_x: list = field(default_factory=list)
    cal_y: list = field(default_factory=list)
    construction: dict = field(default_factory=dict)  # reply pairs per label and source (:func:`~.pairs.source_counts`)

    def texts(self) -> list[str]:
        """Every text the task embeds (both sides of a pair), train, calibration then test, in order."""
        xs = [*self.train_x, *self.cal_x, *self.test_x]
        return [t for x in xs for t in (x if self.kind == "pair" else (x,))]


def prosocial_examples(turns: Any, casual_replies: Sequence[str], *, context_turns: int = 1) -> dict[str, tuple[list, list]]:
    """The ProsocialDialog-based examples of the text judges of one split, as ``{head: (inputs, labels)}``.

    ``turns`` has ProsocialDialog turn columns (``history``, ``response``, ``safety_label``, ``rots``: see
    :func:`~prosocial_lib.data.dialogue_turns`); ``casual_replies`` are replies from casual chat.

    Args:
        turns: ProsocialDialog turns (a ``datasets.Dataset``, a dict of lists or a list of dicts).
        casual_replies: replies from casual chat (safe texts of the reply-alone judge).
        context_turns: how many last turns a judge reads (:func:`~.encoder.context_text`).

    Returns:
        ``{"safety_5way" | "safety_3way": (contexts, labels), "reply_safety": (texts, 0/1)}``: the context
        judges' examples, and the reply-alone judge's (unsafe contexts = 1 against gold responses, casual replies
        and rules of thumb = 0).
    """
    cols = _columns(turns, ("history", "response", "safety_label", "rots"))
    contexts = [context_text(h, context_turns) for h in cols["history"]]
    labels = cols["safety_label"]
    unsafe = [lab in UNSAFE_LABELS for lab in labels]
    out: dict[str, tuple[list, list]] = {}
    out["safety_5way"] = (list(contexts), list(labels))
    out["safety_3way"] = (list(contexts), [_collapse(lab) for lab in labels])
    safe_texts = [*cols["response"], *(str(r) for r in casual_replies),
                  *dict.fromkeys(rot for rots in cols["rots"] for rot in (rots or []))]
    out["reply_safety"] = ([*contexts, *safe_texts], [int(u) for u in unsafe] + [0] * len(safe_texts))
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


HEAD_DESCRIPTIONS: dict[str, tuple[str, str, bool]] = {
    # name: (kind, what it predicts, class-balanced)
    "safety_5way": ("text", "context -> 5 ProsocialDialog safety labels (Canary-lite)", False),
    "safety_3way": ("text", "context -> casual / caution / intervention", False),
    "reply_safety": ("text", "reply alone -> unsafe in itself (1) or not (0)", True),
    "reply_6way": ("pair", "(context, reply) -> prosocial / condoning / neutral / fine / preachy / incoherent", False),
    "rot_agreement": ("pair", "(question, reply) -> disagrees / neutral / agrees with the rule of thumb (MIC)", False),
}


def calibration_mask(inputs: Sequence, share: float) -> np.ndarray:
    """Which examples are held out for calibration: those whose context (a text, or a pair's first element)
    hashes (SHA-1) into the lowest ``share`` of the range, so every pair of one context lands on the same side and
    the choice does not depend on the order or the seed.

    Args:
        inputs: texts or ``(context, reply)`` tuples.
        share: the share to hold out, in [0, 1).

    Returns:
        ``(len(inputs),)`` bool mask (True = calibration).

    Raises:
        JudgeError: a share outside [0, 1).
    """
    if not 0 <= share < 1:
        raise JudgeError(f"judges.calibration_share must lie in [0, 1), got {share}")
    keys = [x[0] if isinstance(x, tuple | list) else x for x in inputs]
    return np.array([int(hashlib.sha1(str(k).encode()).hexdigest()[:8], 16) / 16 ** 8 < share for k in keys],
                    dtype=bool)


def cap_per_label(xs: Sequence, ys: Sequence, cap: int | None, seed: int = 0) -> tuple[list, list]:
    """At most ``cap`` examples per label: a seeded random sample, kept in input order (None: all)."""
    if cap is None:
        return list(xs), list(ys)
    rng = np.random.default_rng([seed, 617])
    labels = np.asarray([str(y) for y in ys], dtype=object)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == lab))[:cap]
                                   for lab in dict.fromkeys(labels)] or [np.zeros(0, int)])).astype(int)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def make_tasks(train: dict[str, tuple[list, list]], test: dict[str, tuple[list, list]], *,
               calibration_share: float = 0.0) -> list[JudgeTask]:
    """Pair the train and test examples of each head into :class:`JudgeTask` objects, holding
    ``calibration_share`` of the training examples out for calibration (:func:`calibration_mask`).

    Args:
        train: ``{head: (inputs, labels)}`` from the judge training split(s).
        test: the same from the test split.
        calibration_share: share of the training contexts held out for calibration.

    Returns:
        One task per head in ``train``, with its kind, description and class order.
    """
    from ...data.labels import SAFETY_LABELS

    order = {"safety_5way": list(SAFETY_LABELS), "safety_3way": ["casual", "caution", "intervention"],
             "rot_agreement": list(ROT_CLASSES), "reply_6way": list(REPLY_LABELS)}
    tasks = []
    for name, (kind, desc, balanced) in HEAD_DESCRIPTIONS.items():
        if name not in train:
            continue
        (tx, ty), (vx, vy) = train[name], test.get(name, ([], []))
        cal = calibration_mask(tx, calibration_share)
        classes = order.get(name, [0, 1])
        tasks.append(JudgeTask(name, kind, desc, [x for x, c in zip(tx, cal) if not c],
                               [y for y, c in zip(ty, cal) if not c], list(vx), list(vy), classes, balanced,
                               cal_x=[x for x, c in zip(tx, cal) if c], cal_y=[y for y, c in zip(ty, cal) if c]))
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
    examples = prosocial_examples(turns, list(casual["response"]), context_turns=settings.context_turns)
    mic = load_mic(data.mic_source, split, max_rows=cap)
    examples["rot_agreement"] = mic_rot_examples(mic)
    pairs, labels, sources = reply_examples(turns, casual, mic, context_turns=settings.context_turns, seed=seed,
                                            incoherent_share=settings.incoherent_share)
    examples["reply_6way"] = (list(zip(pairs, sources)), labels)  # sources dropped once the cap is applied
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
    for examples in (train, test):  # the reply judge's constructed pairs: balanced by a cap per label
        examples["reply_6way"] = cap_per_label(*examples["reply_6way"], settings.max_pairs_per_label, seed)
    if settings.labelled_pairs:  # pairs labelled by reading: training contexts only, the same cap, repeated
        from ...data.judge_check import load_judge_train

        pairs, labels, sources = labelled_examples(load_judge_train(), context_turns=settings.context_turns)
        tagged, labels = cap_per_label(list(zip(pairs, sources)), labels, settings.max_pairs_per_label, seed)
        train["reply_6way"][0].extend(tagged * settings.labelled_repeat)
        train["reply_6way"][1].extend(labels * settings.labelled_repeat)
    construction = source_counts(train["reply_6way"][1], [src for _, src in train["reply_6way"][0]])
    for examples in (train, test):
        examples["reply_6way"] = ([pair for pair, _ in examples["reply_6way"][0]], examples["reply_6way"][1])
    tasks = make_tasks(train, test, calibration_share=settings.calibration_share)
    for task in tasks:
        if task.name == "reply_6way":
            task.construction = construction
    return tasks


def tasks_digest(tasks: Sequence[JudgeTask]) -> str:
    """A hash of every example and label: judges trained on other data are not reused.

    Args:
        tasks: the judge tasks.

    Returns:
        A hex SHA-256 digest (64 characters), streamed over the tasks.
    """
    h = hashlib.sha256()
    for t in tasks:
        h.update(json.dumps([t.name, t.kind, t.train_x, t.train_y, t.cal_x, t.cal_y, t.test_x, t.test_y],
                            default=str).encode())
    return h.hexdigest()[:16]
