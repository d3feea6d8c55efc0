"""Contrastive groups: one context, its prosocial reply, and K weighted "socially aware" negatives.

This module is the data side of the socially aware n-pair loss (method.md sections 2.1 and 3). A **group** is a
:class:`ContrastiveGroup` with exactly these fields (the trainer, the DPO baseline and the chapters all consume
it; :meth:`ContrastiveGroup.to_dict` / :meth:`ContrastiveGroup.from_dict` convert to and from plain dicts)::

    context_messages  list of chat messages ({"role", "content"}) that the reply answers
    positive          the prosocial reply (str)
    negatives         K replies that the model should rank below the positive (list[str])
    neg_weights       w_j = 1 + alpha * neg_severity_j, one per negative (list[float])
    neg_severity      how bad each negative is, normalised to [0, 1] (list[float])
    meta              provenance: stage, kind, where the positive and each negative came from, ...

**Stage 1 (MIC).** One group per AskReddit prompt ``Q``. An answer *violates* when any of its annotations has
``A_agrees == 0``; it is *aligned* when none does and at least one has ``A_agrees == 2``. The positive is an aligned
answer, else the crowdworker rewrite (``worker_answer``) of a violating one. The negatives are the prompt's
violating answers, the most severe first. Their severity combines how bad the violation is and how many people hold
the rule of thumb::

    neg_severity = (violation_severity - 1) / 4  *  (rot_agree - 1) / 4        (both 1..5 -> [0, 1])

so a violation counts fully only when it is severe ("worst") *and* the rule is near-universal (">99%"); a value
of -1 (not annotated) counts as the midpoint 0.5. With several violated rules of thumb an answer takes the worst.
A prompt with fewer than K violating answers is padded with violating answers of *other* prompts when
``stage1.fill_negatives`` is on (``meta["neg_origin"]`` says ``"other_prompt"``); otherwise the group keeps fewer
negatives and the collator masks the empty slots. Prompts without a positive or without any violating answer
of their own cannot form a contrast and are skipped; the :class:`BuildReport` each builder returns counts them.

**Stage 2 (ProsocialDialog + casual chat).** One group per dialogue turn; the context is the dialogue history up
to that turn and the positive is the gold reply. What counts as a bad reply depends on the context:

- *unsafe* context (any label but ``__casual__``): negatives are replies that go along with or ignore the problem,
  from the sources in ``stage2.negative_sources`` (:mod:`prosocial_lib.groups.stage2`; reconstructed). By
  default they go along with a *similar* unsafe context, so they differ from the positive in stance rather than
  topic: the user's own next unsafe turn in the nearest ProsocialDialog contexts (``near_topic``) and MIC answers
  that violate their rule of thumb, of the nearest MIC questions (``near_topic_mic``). The first version's source,
  casual replies taken from casual contexts (``casual_reply``: casual ProsocialDialog turns without rules of
  thumb and the casual-chat source; a casual turn that keeps its rules of thumb has a RoT-grounded reply, which is
  kept out of this pool and counted in ``BuildReport.excluded``), is a switch for the ablation. Their severity is
  the context's safety-label severity (``SAFETY_SEVERITY``: casual 0 .. needs intervention 1): the more the
  context needs intervention, the worse it is to go along.
- *casual* context (casual ProsocialDialog turns and casual-chat turns, ``stage2.casual_fraction`` of the groups):
  negatives are preachy, rule-of-thumb replies - gold replies of unsafe contexts (``preachy``). Their severity is
  the label severity of the context they were written for: an intervention reply is the most out of place in
  small talk.

The caller may add negatives of its own per context (``extra_negatives``, e.g. the model's replies that a judge
flagged); :class:`BuildReport` counts the negatives of each source.

``alpha = 0`` (``loss.social_alpha``) makes every weight 1. Everything is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

GROUP_KEYS = ("context_messages", "positive", "negatives", "neg_weights", "neg_severity", "meta")
REQUIRED_KEYS = ("context_messages", "positive", "negatives")  # the others have defaults (weight 1, severity 0)


class GroupBuildError(ValueError):
    """A row that cannot be turned into a group (names the dataset, the row and the field)."""


@dataclass(frozen=True)
class ContrastiveGroup:
    """One context, its prosocial reply and K weighted negatives: one term of the n-pair loss (method.md 2-3).

    Args:
        context_messages: the chat messages (``{"role", "content"}``) the reply answers, oldest first.
        positive: the prosocial reply ``y+``.
        negatives: the K replies the model should rank below the positive, ``y-_1..y-_K`` (K may be 0).
        neg_weights: ``w_j = 1 + alpha * neg_severity_j``, one per negative (the social weights, method.md 2.1).
        neg_severity: how bad each negative is, in [0, 1], one per negative.
        meta: provenance: ``stage``, ``kind`` ("mic" | "unsafe" | "casual"), ``neg_origin`` (one per negative) ...

    Built by :func:`make_group` (the builders :func:`~prosocial_lib.groups.stage1.build_stage1_groups` and
    :func:`~prosocial_lib.groups.stage2.build_stage2_groups`) or from a dict with :meth:`from_dict` (your own
    groups, e.g. a JSONL file read by :func:`~prosocial_lib.groups.io.read_groups`). Chapters 02 and 03 show them.
    """

    context_messages: list[dict[str, str]]
    positive: str
    negatives: list[str] = field(default_factory=list)
    neg_weights: list[float] = field(default_factory=list)
    neg_severity: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``meta["kind"]``: "mic" (stage 1), "unsafe" or "casual" (stage 2); "" when unknown."""
        return self.meta.get("kind", "")

    def to_dict(self) -> dict[str, Any]:
        """The group as a plain JSON-ready dict with the keys :data:`GROUP_KEYS` (copies, not views)."""
        return {"context_messages": [dict(m) for m in self.context_messages], "positive": self.positive,
                "negatives": list(self.negatives), "neg_weights": list(self.neg_weights),
                "neg_severity": list(self.neg_severity), "meta": dict(self.meta)}

    def with_negatives(self, k: int) -> "ContrastiveGroup":
        """The same group with at most its first ``k`` negatives (and their weights and severities)."""
        return dataclasses.replace(self, negatives=list(self.negatives)[:k], neg_weights=list(self.neg_weights)[:k],
                                   neg_severity=list(self.neg_severity)[:k])

    @classmethod
    def from_dict(cls, d: Any, where: str = "group") -> "ContrastiveGroup":
        """A group from a dict with the keys :data:`GROUP_KEYS` (``neg_weights`` default to 1, ``neg_severity`` to
        0, ``meta`` to {}), checked with :meth:`check`.

        Raises:
            GroupBuildError: not a dict, a missing or unknown key, or a bad value; the message starts with
                ``where`` (e.g. ``"groups.jsonl, row 3"``) and names the field.
        """
        if isinstance(d, cls):
            return d.check(where)
        if not isinstance(d, Mapping):
            raise GroupBuildError(f"{where}: expected a dict (a group), got {type(d).__name__}")
        for key in REQUIRED_KEYS:
            if key not in d:
                raise GroupBuildError(f"{where}: missing field {key!r} (a group needs {', '.join(REQUIRED_KEYS)})")
        unknown = [k for k in d if k not in GROUP_KEYS]
        if unknown:
            raise GroupBuildError(f"{where}: unknown field {unknown[0]!r} (a group has {', '.join(GROUP_KEYS)})")
        negatives = d["negatives"]
        n = len(negatives) if isinstance(negatives, list) else 0
        weights = d.get("neg_weights")
        group = cls(context_messages=d["context_messages"], positive=d["positive"], negatives=negatives,
                    neg_weights=[1.0] * n if weights is None else weights,
                    neg_severity=d.get("neg_severity") if d.get("neg_severity") is not None else [0.0] * n,
                    meta=d.get("meta") if d.get("meta") is not None else {})
        return group.check(where)

    def check(self, where: str = "group") -> "ContrastiveGroup":
        """The group itself when its values can train (non-empty context with string roles and contents, a
        non-empty positive and negatives, one finite weight >= 0 and one severity per negative, a dict meta).

        Raises:
            GroupBuildError: naming ``where`` and the field, e.g. ``"group 1: negatives[1] must be ..."``.
        """
        msgs = self.context_messages
        if not isinstance(msgs, list) or not msgs:
            raise GroupBuildError(f"{where}: field 'context_messages' must be a non-empty list of chat messages")
        for j, m in enumerate(msgs):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(
                    m.get("content"), str):
                raise GroupBuildError(f"{where}: context_messages[{j}] must have string 'role' and 'content', "
                                      f"got {m!r}")
        if not isinstance(self.positive, str) or not self.positive.strip():
            raise GroupBuildError(f"{where}: field 'positive' must be a non-empty string, got {self.positive!r}")
        if not isinstance(self.negatives, list):
            raise GroupBuildError(f"{where}: field 'negatives' must be a list of strings")
        for j, neg in enumerate(self.negatives):
            if not isinstance(neg, str) or not neg.strip():
                raise GroupBuildError(f"{where}: negatives[{j}] must be a non-empty string, got {neg!r}")
        for name in ("neg_weights", "neg_severity"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != len(self.negatives):
                size = len(values) if isinstance(values, list) else type(values).__name__
                raise GroupBuildError(f"{where}: field {name!r} has {size} entries for {len(self.negatives)} "
                                      "negatives")
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   or v < 0]
            if bad:
                raise GroupBuildError(f"{where}: field {name!r} must hold finite numbers >= 0, got {bad[0]!r}")
        if not isinstance(self.meta, dict):
            raise GroupBuildError(f"{where}: field 'meta' must be a dict, got {type(self.meta).__name__}")
        return self


def as_groups(items: Iterable[Any], where: str = "group") -> list[ContrastiveGroup]:
    """Groups or group dicts -> checked :class:`ContrastiveGroup` objects (``where`` + `` i`` names each one).

    Raises:
        GroupBuildError: see :meth:`ContrastiveGroup.from_dict`.
    """
    return [ContrastiveGroup.from_dict(g, f"{where} {i}") for i, g in enumerate(items)]


@dataclass
class BuildReport:
    """What a builder did: groups made and rows/contexts skipped by reason (nothing is dropped silently).

    Returned next to the groups by ``build_stage1_groups`` / ``build_stage2_groups`` (chapters 02 and 03 print
    :meth:`summary`; a stage's ``metrics.json`` keeps :meth:`to_dict`).
    """

    stage: int
    candidates: int = 0
    groups: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # by design (e.g. the max_groups cap): logged as info
    warnings: list[str] = field(default_factory=list)  # the data gave less than asked for: logged as warnings
    # replies kept out of a pool of negatives by reason (their turn may still be a context): by design, logged as info
    excluded: Counter = field(default_factory=Counter)
    # stage 2: the configured negative sources (and the caller's extra ones), the negatives each gave per kind of
    # context ({"unsafe": Counter({"near_topic": 86, ...}), "casual": ...}) and the mean cosine between a context and
    # the anchor of its near-topic negatives, per source
    negative_sources: list[str] = field(default_factory=list)
    negatives: dict[str, Counter] = field(default_factory=dict)
    similarity: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: groups made, candidates seen, the skips and the replies kept out of a negative pool, by
        reason, most frequent first, and (stage 2) the negatives per kind of context and source."""
        head = f"stage {self.stage}: {self.groups} groups from {self.candidates} candidates"
        if self.skipped:
            head += ", skipped " + "; ".join(f"{n} x {why}" for why, n in self.skipped.most_common())
        if self.excluded:
            head += ", kept out of the negatives " + "; ".join(f"{n} x {why}" for why, n in self.excluded.most_common())
        if self.negatives:
            head += "; negatives " + "; ".join(
                f"{kind}: " + ", ".join(f"{n} {source}" for source, n in counts.most_common())
                for kind, counts in self.negatives.items())
        return head

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {"stage": self.stage, "candidates": self.candidates, "groups": self.groups,
                "skipped": dict(self.skipped), "excluded": dict(self.excluded), "notes": list(self.notes),
                "warnings": list(self.warnings), "negative_sources": list(self.negative_sources),
                "negatives": {kind: dict(c) for kind, c in self.negatives.items()},
                "similarity": dict(self.similarity)}


def _finish(report: BuildReport) -> BuildReport:
    """Log the report (warnings when something was skipped or missing, else info for notes) and return it."""
    if report.skipped or report.warnings:
        log.warning("%s%s", report.summary(), "".join(f"; {n}" for n in report.warnings + report.notes))
    elif report.notes or report.excluded:
        log.info("%s%s", report.summary(), "".join(f"; {n}" for n in report.notes))
    return report


# ---------------------------------------------------------------------- weights
def social_weight(severity: float, alpha: float) -> float:
    """``w = 1 + alpha * severity`` (method.md 2.1); the same rule as ``losses.social_weights`` for one value.

    Raises:
        ValueError: ``alpha`` negative, NaN or infinite, or ``severity`` outside [0, 1] (or NaN).
    """
    alpha, severity = float(alpha), float(severity)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha (loss.social_alpha) must be a finite number >= 0, got {alpha}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    return 1.0 + alpha * severity


def mic_severity(violation_severity: int, rot_agree: int) -> float:
    """MIC annotations -> a negative's severity in [0, 1]: ``(sev - 1) / 4 * (agree - 1) / 4``; -1 (missing)
    counts as the midpoint 0.5 of its factor.

    >>> mic_severity(5, 5), mic_severity(1, 5), mic_severity(3, -1)
    (1.0, 0.0, 0.25)
    """
    def norm(v: int) -> float:
        return 0.5 if v == -1 else (v - 1) / 4.0
    return norm(violation_severity) * norm(rot_agree)


def make_group(context_messages: list[dict[str, str]], positive: str, negatives: list[str],
               neg_severity: list[float], alpha: float, meta: dict[str, Any] | None = None) -> ContrastiveGroup:
    """Assemble a :class:`ContrastiveGroup`: the one place that computes the weights ``w = 1 + alpha * severity``.

    Args:
        context_messages: chat messages the reply answers (copied).
        positive: the prosocial reply.
        negatives: the K negatives.
        neg_severity: one severity in [0, 1] per negative.
        alpha: ``loss.social_alpha``; 0 makes every weight 1.
        meta: provenance (copied).

    Returns:
        The group (``neg_weights`` computed, ``neg_severity`` as floats).

    Raises:
        ValueError: ``negatives`` and ``neg_severity`` differ in length.

    Example:
        >>> make_group([{"role": "user", "content": "hi"}], "hello!", ["go away"], [0.5], alpha=1.0).neg_weights
        [1.5]
    """
    if len(negatives) != len(neg_severity):
        raise ValueError(f"{len(negatives)} negatives but {len(neg_severity)} severities")
    sev = [float(s) for s in neg_severity]
    return ContrastiveGroup(context_messages=[dict(m) for m in context_messages], positive=positive,
                            negatives=list(negatives), neg_weights=[social_weight(s, alpha) for s in sev],
                            neg_severity=sev, meta=dict(meta or {}))


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *salt]))


def _rows(ds) -> list[dict[str, Any]]:
    """A Dataset (or a list of dicts) as a list of row dicts (``ds[:]`` is columnar in datasets 5.x)."""
    if isinstance(ds, list):
        return ds
    return ds.to_list()


def _text(row: dict[str, Any], key: str, where: str, i: int, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        raise GroupBuildError(f"{where}, row {i}, field {key!r}: expected a string, got {value!r}")
    value = value.strip()
    if required and not value:
        raise GroupBuildError(f"{where}, row {i}, field {key!r}: empty")
    return value


def _int(row: dict[str, Any], key: str, where: str, i: int, allowed: Iterable[int]) -> int:
    value = row.get(key)
    try:
        iv = int(value)
        ok = iv == value or (isinstance(value, str) and str(iv) == value.strip())
    except (TypeError, ValueError):
        ok = False
    allowed = tuple(allowed)
    if not ok or iv not in allowed:
        raise GroupBuildError(f"{where}, row {i}, field {key!r}: expected one of {allowed}, got {value!r}")
    return iv


# ---------------------------------------------------------------------- summaries for the chapters
def groups_frame(groups: Sequence[ContrastiveGroup]):
    """One row per negative, for the weight plots of chapters 02 and 03.

    Returns:
        A DataFrame with columns group (index), kind, slot (1..K), negative (text), severity, weight, origin.
    """
    import pandas as pd
    rows = []
    for g_i, g in enumerate(groups):
        origins = g.meta.get("neg_origin") or [""] * len(g.negatives)
        for j, (neg, sev, w) in enumerate(zip(g.negatives, g.neg_severity, g.neg_weights)):
            rows.append({"group": g_i, "kind": g.kind, "slot": j + 1, "negative": neg,
                         "severity": sev, "weight": w, "origin": origins[j] if j < len(origins) else ""})
    return pd.DataFrame(rows, columns=["group", "kind", "slot", "negative", "severity", "weight", "origin"])


def summarize_groups(groups: Sequence[ContrastiveGroup], bins: int = 5) -> dict[str, Any]:
    """Counts chapters 02 and 03 show (and a stage's ``metrics.json`` keeps).

    Args:
        groups: the groups.
        bins: bins of the weight histogram.

    Returns:
        A JSON-ready dict: groups, by_kind, negatives, negatives_per_group, mean_negatives, weight_mean /
        weight_min / weight_max (NaN without negatives), weight_hist (edges, counts), negative_origin,
        positive_origin.
    """
    n_negs = [len(g.negatives) for g in groups]
    weights = np.array([w for g in groups for w in g.neg_weights], dtype=float)
    if weights.size:
        lo, hi = float(weights.min()), float(weights.max())
        counts, edges = np.histogram(weights, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    else:
        counts, edges = np.zeros(0, dtype=int), np.zeros(0)
    origins = Counter(o for g in groups for o in (g.meta.get("neg_origin") or []))
    return {
        "groups": len(groups),
        "by_kind": dict(Counter(g.kind for g in groups)),
        "negatives": int(sum(n_negs)),
        "negatives_per_group": {int(k): int(v) for k, v in sorted(Counter(n_negs).items())},
        "mean_negatives": float(np.mean(n_negs)) if n_negs else 0.0,
        "weight_mean": float(weights.mean()) if weights.size else float("nan"),
        "weight_min": float(weights.min()) if weights.size else float("nan"),
        "weight_max": float(weights.max()) if weights.size else float("nan"),
        "weight_hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "negative_origin": dict(origins),
        "positive_origin": dict(Counter(g.meta["positive_origin"] for g in groups
                                        if "positive_origin" in g.meta)),
    }
