"""Contrastive groups: one context, its prosocial reply, and K weighted "socially aware" negatives.

This module is the data side of the socially aware n-pair loss (method.md sections 2.1 and 3). A **group** is a
plain dict with exactly these keys (the trainer, the DPO baseline and the chapters all consume it)::

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
of their own cannot form a contrast and are skipped; :func:`last_build_report` counts them.

**Stage 2 (ProsocialDialog + casual chat).** One group per dialogue turn; the context is the dialogue history up
to that turn and the positive is the gold reply. What counts as a bad reply depends on the context:

- *unsafe* context (any label but ``__casual__``): negatives are replies that ignore or condone the problem -
  casual replies taken from casual contexts (casual ProsocialDialog turns and the casual-chat source). Their
  severity is the context's safety-label severity (``SAFETY_SEVERITY``: casual 0 .. needs intervention 1): the
  more the context needs intervention, the worse it is to chat along.
- *casual* context (casual ProsocialDialog turns and casual-chat turns, ``stage2.casual_fraction`` of the groups):
  negatives are preachy, rule-of-thumb replies - gold replies of unsafe contexts. Their severity is the label
  severity of the context they were written for: an intervention reply is the most out of place in small talk.

``alpha = 0`` (``loss.social_alpha``) makes every weight 1. Everything is deterministic given the seed.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

GROUP_KEYS = ("context_messages", "positive", "negatives", "neg_weights", "neg_severity", "meta")


class GroupBuildError(ValueError):
    """A row that cannot be turned into a group (names the dataset, the row and the field)."""


@dataclass
class BuildReport:
    """What a builder did: groups made and rows/contexts skipped by reason (nothing is dropped silently)."""

    stage: int
    candidates: int = 0
    groups: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # by design (e.g. the max_groups cap): logged as info
    warnings: list[str] = field(default_factory=list)  # the data gave less than asked for: logged as warnings

    def summary(self) -> str:
        head = f"stage {self.stage}: {self.groups} groups from {self.candidates} candidates"
        if not self.skipped:
            return head
        return head + ", skipped " + "; ".join(f"{n} x {why}" for why, n in self.skipped.most_common())

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "candidates": self.candidates, "groups": self.groups,
                "skipped": dict(self.skipped), "notes": list(self.notes), "warnings": list(self.warnings)}


_LAST_REPORT: BuildReport | None = None


def last_build_report() -> BuildReport | None:
    """The :class:`BuildReport` of the most recent ``build_stage*_groups`` call."""
    return _LAST_REPORT


def _finish(report: BuildReport) -> None:
    global _LAST_REPORT
    _LAST_REPORT = report
    if report.skipped or report.warnings:
        log.warning("%s%s", report.summary(), "".join(f"; {n}" for n in report.warnings + report.notes))
    elif report.notes:
        log.info("%s%s", report.summary(), "".join(f"; {n}" for n in report.notes))


# ---------------------------------------------------------------------- weights
def social_weight(severity: float, alpha: float) -> float:
    """``w = 1 + alpha * severity`` (method.md 2.1); the same rule as ``losses.social_weights`` for one value."""
    return 1.0 + float(alpha) * float(severity)


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
               neg_severity: list[float], alpha: float, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a group dict (the one place that fixes its keys and computes the weights)."""
    if len(negatives) != len(neg_severity):
        raise ValueError(f"{len(negatives)} negatives but {len(neg_severity)} severities")
    sev = [float(s) for s in neg_severity]
    return {
        "context_messages": [dict(m) for m in context_messages],
        "positive": positive,
        "negatives": list(negatives),
        "neg_weights": [social_weight(s, alpha) for s in sev],
        "neg_severity": sev,
        "meta": dict(meta or {}),
    }


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
def groups_frame(groups: list[dict[str, Any]]):
    """One row per negative: group index, kind, negative text, severity, weight, origin (for plots)."""
    import pandas as pd
    rows = []
    for g_i, g in enumerate(groups):
        origins = g["meta"].get("neg_origin") or [""] * len(g["negatives"])
        for j, (neg, sev, w) in enumerate(zip(g["negatives"], g["neg_severity"], g["neg_weights"])):
            rows.append({"group": g_i, "kind": g["meta"].get("kind", ""), "slot": j + 1, "negative": neg,
                         "severity": sev, "weight": w, "origin": origins[j] if j < len(origins) else ""})
    return pd.DataFrame(rows, columns=["group", "kind", "slot", "negative", "severity", "weight", "origin"])


def summarize_groups(groups: list[dict[str, Any]], bins: int = 5) -> dict[str, Any]:
    """Counts the chapters show: groups, groups by kind, negatives per group, the weight histogram, origins."""
    n_negs = [len(g["negatives"]) for g in groups]
    weights = np.array([w for g in groups for w in g["neg_weights"]], dtype=float)
    if weights.size:
        lo, hi = float(weights.min()), float(weights.max())
        counts, edges = np.histogram(weights, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    else:
        counts, edges = np.zeros(0, dtype=int), np.zeros(0)
    origins = Counter(o for g in groups for o in (g["meta"].get("neg_origin") or []))
    return {
        "groups": len(groups),
        "by_kind": dict(Counter(g["meta"].get("kind", "") for g in groups)),
        "negatives": int(sum(n_negs)),
        "negatives_per_group": {int(k): int(v) for k, v in sorted(Counter(n_negs).items())},
        "mean_negatives": float(np.mean(n_negs)) if n_negs else 0.0,
        "weight_mean": float(weights.mean()) if weights.size else float("nan"),
        "weight_min": float(weights.min()) if weights.size else float("nan"),
        "weight_max": float(weights.max()) if weights.size else float("nan"),
        "weight_hist": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "negative_origin": dict(origins),
        "positive_origin": dict(Counter(g["meta"]["positive_origin"] for g in groups
                                        if "positive_origin" in g["meta"])),
    }
