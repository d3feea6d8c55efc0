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

from .config import Config

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


def _user_context(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


# ---------------------------------------------------------------------- stage 1: MIC
def build_stage1_groups(mic_ds, cfg: Config, *, max_groups: int | None = -1, seed: int | None = None,
                        where: str = "MIC") -> list[dict[str, Any]]:
    """Stage-1 groups from MIC rows (one per prompt; rules in the module docstring).

    ``max_groups`` defaults to ``cfg.stage1.max_groups`` (None = all); ``seed`` to ``cfg.data.seed``. The groups
    come in a seeded random order, so a cap takes a random subset of prompts.
    """
    max_groups = cfg.stage1.max_groups if max_groups == -1 else max_groups
    seed = cfg.data.seed if seed is None else seed
    k, alpha = cfg.loss.num_negatives, cfg.loss.social_alpha
    report = BuildReport(stage=1)
    rows = _rows(mic_ds)

    # 1. per prompt, per distinct answer: its annotations
    prompts: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for i, row in enumerate(rows):
        q = _text(row, "Q", where, i)
        a = _text(row, "A", where, i)
        prompts.setdefault(q, {}).setdefault(a, []).append((i, row))
    report.candidates = len(prompts)

    candidates = []  # (q, positive, positive_origin, rot, own negatives [(answer, severity, info)])
    pool = []  # every violating answer of every prompt, for padding: (prompt, answer, severity)
    for q, answers in prompts.items():
        aligned, violating, rewrites = [], [], []
        for a, annots in answers.items():
            agrees = [_int(r, "A_agrees", where, i, (0, 1, 2)) for i, r in annots]
            if 0 in agrees:
                worst = None
                for (i, r), ag in zip(annots, agrees):
                    if ag != 0:
                        continue
                    sev = _int(r, "violation-severity", where, i, (-1, 1, 2, 3, 4, 5))
                    agr = _int(r, "rot-agree", where, i, (-1, 1, 2, 3, 4, 5))
                    s = mic_severity(sev, agr)
                    if worst is None or s > worst[0]:
                        worst = (s, sev, agr, _text(r, "rot", where, i, required=False), r)
                    rw = _text(r, "worker_answer", where, i, required=False)
                    if rw and rw != a:
                        rewrites.append((rw, _text(r, "rot", where, i, required=False)))
                violating.append((a, worst))
                pool.append((q, a, worst[0]))
            elif 2 in agrees:
                rot = next((_text(r, "rot", where, i, required=False) for (i, r), ag in zip(annots, agrees)
                            if ag == 2), "")
                aligned.append((a, rot))
        if aligned:
            positive, rot = aligned[0]
            origin = "aligned_answer"
        elif rewrites:
            positive, rot = rewrites[0]
            origin = "worker_rewrite"
        else:
            report.skipped["prompt has no aligned answer and no rewrite"] += 1
            continue
        own = [(a, w) for a, w in violating if a != positive]
        if not own:
            report.skipped["prompt has no violating answer"] += 1
            continue
        own.sort(key=lambda aw: -aw[1][0])  # the most severe violation first (stable: data order breaks ties)
        rot = own[0][1][3] or rot  # the rule the worst negative violates is what the contrast is about
        candidates.append((q, positive, origin, rot, own))

    # 2. a seeded order, a cap, then negatives (padding from other prompts' violations)
    rng = _rng(seed, 1)
    order = rng.permutation(len(candidates))
    if max_groups is not None and len(candidates) > max_groups:
        report.notes.append(f"kept {max_groups} of {len(candidates)} possible groups (max_groups)")
        order = order[:max_groups]
    groups = []
    for idx in order:
        q, positive, origin, rot, own = candidates[idx]
        chosen = own[:k]
        negatives = [a for a, _ in chosen]
        severity = [w[0] for _, w in chosen]
        origins = ["same_prompt"] * len(chosen)
        if len(negatives) < k and cfg.stage1.fill_negatives:
            taken = set(negatives) | {positive}
            others = [j for j, (q2, a2, _) in enumerate(pool) if q2 != q and a2 not in taken]
            for j in rng.permutation(len(others))[: k - len(negatives)]:
                _, a2, s2 = pool[others[j]]
                negatives.append(a2)
                severity.append(s2)
                origins.append("other_prompt")
            if len(negatives) < k:
                report.skipped["negative slots left empty (too few violating answers to pad from)"] += (
                    k - len(negatives))
        system = f"Rule of thumb: {rot}" if (cfg.stage1.rot_in_context and rot) else None
        worst = chosen[0][1]
        meta = {"stage": 1, "kind": "mic", "prompt": q, "rot": rot, "positive_origin": origin,
                "neg_origin": origins, "violation_severity": worst[1], "rot_agree": worst[2],
                "chatbot": worst[4].get("chatbot")}
        groups.append(make_group(_user_context(q, system), positive, negatives, severity, alpha, meta))
    report.groups = len(groups)
    _finish(report)
    return groups


# ---------------------------------------------------------------------- stage 2: ProsocialDialog + casual chat
def _history_messages(history: list[str]) -> list[dict[str, str]]:
    from .data.dialogue import history_to_messages
    return history_to_messages(list(history))


def _turns(prosocial_ds):
    """Per-turn rows (history, response, safety_label, ...): accepts hub rows or ``dialogue_turns`` output."""
    cols = prosocial_ds.column_names if hasattr(prosocial_ds, "column_names") else list(prosocial_ds[0])
    if "history" in cols:
        return _rows(prosocial_ds)
    from .data.dialogue import dialogue_turns
    return _rows(dialogue_turns(prosocial_ds))


def build_stage2_groups(prosocial_ds, casual_ds, cfg: Config, *, max_groups: int | None = -1,
                        seed: int | None = None, where: str = "ProsocialDialog") -> list[dict[str, Any]]:
    """Stage-2 groups from ProsocialDialog turns and a casual-chat dataset (rules in the module docstring).

    ``prosocial_ds``: hub-column rows (turned into per-turn histories with ``data.dialogue_turns``) or its
    output; ``casual_ds``: rows ``(history: list[str], response, source)`` or None. ``max_groups`` defaults to
    ``cfg.stage2.max_groups`` (None = every unsafe turn plus casual ones in proportion); ``casual_fraction``
    of them come from casual contexts.
    """
    from .data.labels import SAFETY_SEVERITY

    max_groups = cfg.stage2.max_groups if max_groups == -1 else max_groups
    seed = cfg.data.seed if seed is None else seed
    k, alpha, frac = cfg.loss.num_negatives, cfg.loss.social_alpha, cfg.stage2.casual_fraction
    report = BuildReport(stage=2)

    unsafe, casual = [], []  # contexts: dicts with messages, positive, severity, source, dialogue
    casual_replies: list[tuple[str, Any]] = []  # (reply, dialogue key) that chat along
    preachy_replies: list[tuple[str, float, Any]] = []  # (reply, severity of its context, dialogue key)
    for i, row in enumerate(_turns(prosocial_ds)):
        label = row.get("safety_label")
        if label not in SAFETY_SEVERITY:
            raise GroupBuildError(f"{where}, turn {i}, field 'safety_label': unknown label {label!r}; "
                                  f"expected one of {', '.join(SAFETY_SEVERITY)}")
        response = _text(row, "response", where, i, required=False)
        history = row.get("history") or []
        if not response or not history:
            report.skipped["turn without response or history"] += 1
            continue
        sev = float(SAFETY_SEVERITY[label])
        key = ("pd", row.get("dialogue_id"))
        ctx = {"history": history, "positive": response, "severity": sev, "label": label, "dialogue": key,
               "source": row.get("source") or "prosocial_dialog", "response_id": row.get("response_id")}
        if sev == 0.0:
            casual.append(ctx)
            casual_replies.append((response, key))
        else:
            unsafe.append(ctx)
            preachy_replies.append((response, sev, key))
    for i, row in enumerate(_rows(casual_ds) if casual_ds is not None else []):
        response = _text(row, "response", "casual chat", i, required=False)
        history = row.get("history") or []
        if not response or not history:
            report.skipped["casual chat row without response or history"] += 1
            continue
        key = ("casual", i)
        casual.append({"history": history, "positive": response, "severity": 0.0, "label": "__casual__",
                       "dialogue": key, "source": row.get("source") or "casual", "response_id": None})
        casual_replies.append((response, key))
    report.candidates = len(unsafe) + len(casual)

    # how many of each kind
    rng = _rng(seed, 2)
    if max_groups is None:
        n_unsafe = len(unsafe) if frac < 1 else 0
        n_casual = len(casual) if frac >= 1 else min(len(casual), round(n_unsafe * frac / (1 - frac)))
    else:
        n_casual = round(max_groups * frac)
        n_unsafe = max_groups - n_casual
    for kind, want, have in (("unsafe", n_unsafe, len(unsafe)), ("casual", n_casual, len(casual))):
        if want > have:
            report.warnings.append(f"wanted {want} {kind} groups, the data has {have} {kind} contexts")
    n_unsafe, n_casual = min(n_unsafe, len(unsafe)), min(n_casual, len(casual))
    if n_unsafe and not casual_replies:
        raise GroupBuildError(f"{where}: no casual replies to use as negatives for unsafe contexts "
                              "(no casual ProsocialDialog turns and no casual-chat rows)")
    if n_casual and not preachy_replies:
        raise GroupBuildError(f"{where}: no unsafe-context replies to use as preachy negatives for casual contexts")
    pick_unsafe = rng.permutation(len(unsafe))[:n_unsafe]
    pick_casual = rng.permutation(len(casual))[:n_casual]
    picked = [("unsafe", unsafe[j]) for j in pick_unsafe] + [("casual", casual[j]) for j in pick_casual]
    picked = [picked[j] for j in rng.permutation(len(picked))]

    groups = []
    for kind, ctx in picked:
        if kind == "unsafe":
            pool = casual_replies
        else:
            pool = preachy_replies
        negatives, severity = _sample_negatives(pool, ctx, k, rng, kind)
        if len(negatives) < k:
            report.skipped["negative slots left empty (reply pool too small)"] += k - len(negatives)
        meta = {"stage": 2, "kind": kind, "safety_label": ctx["label"], "context_severity": ctx["severity"],
                "source": ctx["source"], "dialogue": list(ctx["dialogue"]), "response_id": ctx["response_id"],
                "neg_origin": ["casual_reply" if kind == "unsafe" else "unsafe_context_reply"] * len(negatives)}
        groups.append(make_group(_history_messages(ctx["history"]), ctx["positive"], negatives, severity,
                                 alpha, meta))
    report.groups = len(groups)
    _finish(report)
    return groups


def _sample_negatives(pool: list[tuple], ctx: dict[str, Any], k: int, rng: np.random.Generator,
                      kind: str) -> tuple[list[str], list[float]]:
    """K distinct replies from ``pool`` that are not the positive and not from the context's own dialogue.

    Draws candidates in a seeded order and stops at K, so the cost does not grow with the pool."""
    negatives: list[str] = []
    severity: list[float] = []
    seen = {ctx["positive"]}
    n = len(pool)
    # a few random draws usually suffice; fall back to a full permutation for tiny pools
    draws = rng.integers(0, n, size=min(n, 4 * k + 8)) if n > 16 * k else rng.permutation(n)

    def candidates():
        yield from draws
        if n > 16 * k:  # unlucky draws: finish with a full pass (drawn only when needed)
            yield from rng.permutation(n)

    for j in candidates():
        item = pool[int(j)]
        reply, key = item[0], item[-1]
        if reply in seen or key == ctx["dialogue"]:
            continue
        seen.add(reply)
        negatives.append(reply)
        severity.append(ctx["severity"] if kind == "unsafe" else float(item[1]))
        if len(negatives) == k:
            break
    return negatives, severity


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


def group_table(group: dict[str, Any]):
    """One group as a small table (role, text, severity, weight) to show in a chapter."""
    import pandas as pd
    rows = [{"role": f"context ({m['role']})", "text": m["content"], "severity": None, "weight": None}
            for m in group["context_messages"]]
    rows.append({"role": "positive", "text": group["positive"], "severity": None, "weight": None})
    origins = group["meta"].get("neg_origin") or [""] * len(group["negatives"])
    for j, (neg, sev, w) in enumerate(zip(group["negatives"], group["neg_severity"], group["neg_weights"])):
        origin = f", {origins[j]}" if j < len(origins) and origins[j] else ""
        rows.append({"role": f"negative {j + 1}{origin}", "text": neg, "severity": round(sev, 3),
                     "weight": round(w, 3)})
    return pd.DataFrame(rows)
