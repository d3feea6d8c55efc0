"""The label vocabularies of ProsocialDialog and MIC, and the rule that turns three safety votes into a label.

ProsocialDialog (Kim et al., 2022) asks three crowdworkers whether a context is "casual", "needs caution" or
"needs intervention" and aggregates their votes into five labels (method.md section 5):

- any "needs intervention" vote                      -> ``__needs_intervention__``
- three "casual" votes                               -> ``__casual__``
- otherwise 1 / 2 / 3 "needs caution" votes         -> ``__possibly_needs_caution__`` /
                                                        ``__probably_needs_caution__`` / ``__needs_caution__``
"""

from __future__ import annotations

from collections.abc import Sequence

#: The five ProsocialDialog safety labels, from harmless to most severe.
SAFETY_LABELS: tuple[str, ...] = (
    "__casual__",
    "__possibly_needs_caution__",
    "__probably_needs_caution__",
    "__needs_caution__",
    "__needs_intervention__",
)

#: How severe each label is, in [0, 1]: the "socially aware" weight of a negative grows with it.
SAFETY_SEVERITY: dict[str, float] = {label: i / (len(SAFETY_LABELS) - 1) for i, label in enumerate(SAFETY_LABELS)}

#: Upstream shares of the five labels over all of ProsocialDialog (Kim et al., 2022): 17 / 13 / 15 / 42 / 13 %.
UPSTREAM_LABEL_SHARES: dict[str, float] = dict(zip(SAFETY_LABELS, (0.17, 0.13, 0.15, 0.42, 0.13)))

#: The three values a single annotator's vote can take.
SAFETY_VOTES: tuple[str, ...] = ("casual", "needs caution", "needs intervention")

#: The four upstream sources of ProsocialDialog contexts.
PROSOCIAL_SOURCES: tuple[str, ...] = ("socialchemistry", "sbic", "ethics_amt", "ethics_reddit")

#: The six moral foundations in MIC's order (the order of the ``moral-vector`` entries).
MORAL_FOUNDATIONS: tuple[str, ...] = ("care", "fairness", "liberty", "loyalty", "authority", "sanctity")

#: MIC ``A_agrees``: does the answer agree with the rule of thumb?
MIC_AGREEMENT: dict[int, str] = {0: "disagrees", 1: "neutral", 2: "agrees"}

#: MIC ``rot-agree``: how many people would agree with the rule of thumb (-1 = not annotated).
MIC_CONSENSUS: dict[int, str] = {1: "<1%", 2: "5-25%", 3: "~50%", 4: "75-90%", 5: ">99%"}

#: MIC ``violation-severity``: how bad it is to violate the rule of thumb (-1 = not annotated).
MIC_SEVERITY: dict[int, str] = {1: "fine", 2: "unfavorable", 3: "bad", 4: "horrible", 5: "worst"}

#: MIC's three chatbots.
MIC_CHATBOTS: tuple[str, ...] = ("blenderbot", "dialoGPT", "gpt-neo")


def aggregate_safety_votes(votes: Sequence[str]) -> str:
    """The ProsocialDialog label implied by three annotator votes (rule in the module docstring).

    >>> aggregate_safety_votes(["needs caution", "needs intervention", "casual"])
    '__needs_intervention__'
    >>> aggregate_safety_votes(["casual", "needs caution", "needs caution"])
    '__probably_needs_caution__'
    """
    votes = list(votes)
    if len(votes) != 3:
        raise ValueError(f"expected 3 safety votes, got {len(votes)}: {votes!r}")
    unknown = [v for v in votes if v not in SAFETY_VOTES]
    if unknown:
        raise ValueError(f"unknown safety vote {unknown[0]!r}; expected one of {', '.join(SAFETY_VOTES)}")
    if "needs intervention" in votes:
        return "__needs_intervention__"
    caution = votes.count("needs caution")
    return SAFETY_LABELS[caution]  # 0 -> casual, 1 -> possibly, 2 -> probably, 3 -> needs caution


def collapse_safety_label(label: str) -> str:
    """Five labels -> three classes: ``"casual"``, ``"caution"`` (the three caution levels) or ``"intervention"``."""
    if label not in SAFETY_LABELS:
        raise ValueError(f"unknown safety label {label!r}; expected one of {', '.join(SAFETY_LABELS)}")
    if label == "__casual__":
        return "casual"
    if label == "__needs_intervention__":
        return "intervention"
    return "caution"


def normalise_split(split: str, names: Sequence[str] = ("train", "validation", "test")) -> str:
    """Map the split aliases ("valid", "dev", "validation", "val") onto the name a dataset uses for them."""
    s = str(split).strip().lower()
    held_out = next((n for n in names if n in ("validation", "dev", "valid", "val")), None)
    if s in ("valid", "dev", "validation", "val") and held_out is not None:
        return held_out
    if s in names:
        return s
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(names)} (aliases: valid, dev, val)")
