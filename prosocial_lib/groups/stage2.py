"""Stage-2 groups from ProsocialDialog and casual chat (method.md section 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config.schema import LossConfig, StageConfig
from .types import BuildReport, ContrastiveGroup, GroupBuildError, _finish, _rng, _rows, _text, make_group

#: ``BuildReport.excluded`` reason: a casual turn with rules of thumb whose reply is not used as a chat-along negative.
ROT_GROUNDED_CASUAL = "casual turn with rules of thumb (a RoT-grounded reply, not chat-along)"


# ---------------------------------------------------------------------- stage 2: ProsocialDialog + casual chat
def _history_messages(history: list[str]) -> list[dict[str, str]]:
    from ..data.dialogue import history_to_messages
    return history_to_messages(list(history))


def _turns(prosocial_ds):
    """Per-turn rows (history, response, safety_label, ...): accepts hub rows or ``dialogue_turns`` output."""
    cols = prosocial_ds.column_names if hasattr(prosocial_ds, "column_names") else list(prosocial_ds[0])
    if "history" in cols:
        return _rows(prosocial_ds)
    from ..data.dialogue import dialogue_turns
    return _rows(dialogue_turns(prosocial_ds))


def build_stage2_groups(prosocial_ds, casual_ds, loss: LossConfig, stage: StageConfig, *, seed: int = 0,
                        max_groups: int | None = -1, where: str = "ProsocialDialog"
                        ) -> tuple[list[ContrastiveGroup], BuildReport]:
    """Stage-2 groups from ProsocialDialog turns and casual chat (rules in :mod:`prosocial_lib.groups.types`).

    Args:
        prosocial_ds: hub-column rows (turned into per-turn histories with ``data.dialogue_turns``) or its output.
        casual_ds: rows ``(history: list[str], response, source)``, or None.
        loss: the ``loss`` section: ``num_negatives`` (K) and ``social_alpha``.
        stage: the ``stage2`` section: ``max_groups`` and ``casual_fraction``.
        seed: the root seed (``Config.seed``); contexts and negatives are drawn with it.
        max_groups: cap on groups (default -1 = ``stage.max_groups``; None = every unsafe turn plus casual
            ones in proportion); ``casual_fraction`` of them come from casual contexts.
        where: names the data in error messages.

    Returns:
        ``(groups, report)``: the :class:`ContrastiveGroup` list (``meta["kind"]`` "unsafe" or "casual", in a
        seeded random order) and the :class:`BuildReport`.

    Raises:
        GroupBuildError: an unknown safety label, a non-string text, or no replies to take negatives from.

    Chapter 03 shows the groups and the report.
    """
    max_groups = stage.max_groups if max_groups == -1 else max_groups
    k, alpha, frac = loss.num_negatives, loss.social_alpha, stage.casual_fraction
    report = BuildReport(stage=2)
    unsafe, casual, casual_replies, preachy_replies = _contexts(prosocial_ds, casual_ds, where, report)
    report.candidates = len(unsafe) + len(casual)
    rng = _rng(seed, 2)
    n_unsafe, n_casual = _counts(len(unsafe), len(casual), max_groups, frac, report)
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
        pool = casual_replies if kind == "unsafe" else preachy_replies
        negatives, severity = _sample_negatives(pool, ctx, k, rng, kind)
        if len(negatives) < k:
            report.skipped["negative slots left empty (reply pool too small)"] += k - len(negatives)
        meta = {"stage": 2, "kind": kind, "safety_label": ctx["label"], "context_severity": ctx["severity"],
                "source": ctx["source"], "dialogue": list(ctx["dialogue"]), "response_id": ctx["response_id"],
                "neg_origin": ["casual_reply" if kind == "unsafe" else "unsafe_context_reply"] * len(negatives)}
        groups.append(make_group(_history_messages(ctx["history"]), ctx["positive"], negatives, severity,
                                 alpha, meta))
    report.groups = len(groups)
    return groups, _finish(report)


def _contexts(prosocial_ds, casual_ds, where: str, report: BuildReport):
    """The candidate contexts and the two reply pools.

    Returns ``(unsafe, casual, casual_replies, preachy_replies)``: contexts are dicts (history, positive,
    severity, label, dialogue, source, response_id); ``casual_replies`` ``(reply, dialogue key)`` chat along;
    ``preachy_replies`` ``(reply, severity of its context, dialogue key)`` are gold replies of unsafe contexts.

    A ``__casual__`` turn that keeps rules of thumb (inside an unsafe dialogue the speaker concedes, and the gold
    reply is still RoT-grounded guidance) stays a casual context but its reply is kept out of ``casual_replies``:
    as a negative of an unsafe context it would push the model away from a prosocial reply with the largest
    weight. ``report.excluded`` counts these replies (:data:`ROT_GROUNDED_CASUAL`).
    """
    from ..data.labels import SAFETY_SEVERITY

    unsafe, casual = [], []
    casual_replies: list[tuple[str, Any]] = []
    preachy_replies: list[tuple[str, float, Any]] = []
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
            if row.get("rots"):  # the speaker conceded but the reply still gives the rule: guidance, not chat
                report.excluded[ROT_GROUNDED_CASUAL] += 1
            else:
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
    return unsafe, casual, casual_replies, preachy_replies


def _counts(have_unsafe: int, have_casual: int, max_groups: int | None, frac: float,
            report: BuildReport) -> tuple[int, int]:
    """How many unsafe and casual groups to build; a shortfall is a warning in the report."""
    if max_groups is None:
        n_unsafe = have_unsafe if frac < 1 else 0
        n_casual = have_casual if frac >= 1 else min(have_casual, round(n_unsafe * frac / (1 - frac)))
    else:
        n_casual = round(max_groups * frac)
        n_unsafe = max_groups - n_casual
    for kind, want, have in (("unsafe", n_unsafe, have_unsafe), ("casual", n_casual, have_casual)):
        if want > have:
            report.warnings.append(f"wanted {want} {kind} groups, the data has {have} {kind} contexts")
    return min(n_unsafe, have_unsafe), min(n_casual, have_casual)


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
