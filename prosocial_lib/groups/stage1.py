"""Stage-1 groups from MIC: RoT-agreeing answers as positives, RoT-violating ones as negatives (method.md section 3)."""

from __future__ import annotations

from typing import Any

from ..config.schema import LossConfig, StageConfig
from .types import BuildReport, ContrastiveGroup, _finish, _int, _rng, _rows, _text, make_group, mic_severity


def _user_context(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


Candidate = tuple  # (prompt, positive, positive_origin, rot, own negatives [(answer, worst annotation)])


# ---------------------------------------------------------------------- stage 1: MIC
def build_stage1_groups(mic_ds, loss: LossConfig, stage: StageConfig, *, seed: int = 0, max_groups: int | None = -1,
                        where: str = "MIC") -> tuple[list[ContrastiveGroup], BuildReport]:
    """Stage-1 groups from MIC rows: one per prompt (rules in :mod:`prosocial_lib.groups.types`; method.md 3).

    Args:
        mic_ds: MIC rows (a ``datasets.Dataset`` or a list of dicts) with ``Q``, ``A``, ``rot``, ``A_agrees``,
            ``violation-severity``, ``rot-agree`` (and optionally ``worker_answer``, ``chatbot``).
        loss: the ``loss`` section: ``num_negatives`` (K) and ``social_alpha``.
        stage: the ``stage1`` section: ``max_groups``, ``fill_negatives``, ``rot_in_context``.
        seed: the root seed (``Config.seed``); the groups come in an order drawn with it.
        max_groups: cap on groups (default -1 = ``stage.max_groups``; None = all). The groups come in a
            seeded random order, so a cap takes a random subset of prompts.
        where: names the data in error messages.

    Returns:
        ``(groups, report)``: the :class:`ContrastiveGroup` list (``meta["kind"] == "mic"``) and the
        :class:`BuildReport` (prompts seen, skipped by reason, the cap).

    Raises:
        GroupBuildError: a row with a missing text or an impossible annotation (names ``where``, row and field).

    Chapter 02 shows the groups and the report.
    """
    max_groups = stage.max_groups if max_groups == -1 else max_groups
    report = BuildReport(stage=1)
    prompts = _answers_by_prompt(_rows(mic_ds), where)
    report.candidates = len(prompts)
    candidates, pool = _candidates(prompts, where, report)
    rng = _rng(seed, 1)
    order = rng.permutation(len(candidates))
    if max_groups is not None and len(candidates) > max_groups:
        report.notes.append(f"kept {max_groups} of {len(candidates)} possible groups (max_groups)")
        order = order[:max_groups]
    groups = [_group(candidates[idx], pool, rng, loss, stage, report) for idx in order]
    report.groups = len(groups)
    return groups, _finish(report)


def _answers_by_prompt(rows: list[dict[str, Any]], where: str) -> dict[str, dict[str, list[tuple[int, dict]]]]:
    """Per prompt, per distinct answer: its annotations ``(row index, row)``, in data order."""
    prompts: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for i, row in enumerate(rows):
        q = _text(row, "Q", where, i)
        a = _text(row, "A", where, i)
        prompts.setdefault(q, {}).setdefault(a, []).append((i, row))
    return prompts


def _candidates(prompts, where: str, report: BuildReport) -> tuple[list[Candidate], list[tuple[str, str, float]]]:
    """The prompts that can form a contrast, and the pool of every violating answer ``(prompt, answer,
    severity)`` for padding; prompts without a positive or without a violation of their own are counted."""
    candidates, pool = [], []
    for q, answers in prompts.items():
        aligned, violating, rewrites = _classify_answers(answers, where)
        pool += [(q, a, worst[0]) for a, worst in violating]
        if aligned:
            (positive, rot), origin = aligned[0], "aligned_answer"
        elif rewrites:
            (positive, rot), origin = rewrites[0], "worker_rewrite"
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
    return candidates, pool


def _classify_answers(answers, where: str):
    """One prompt's answers -> aligned ``(answer, rot)``, violating ``(answer, worst)`` with ``worst = (severity,
    violation-severity, rot-agree, rot, row)`` of its worst violation, and rewrites ``(worker_answer, rot)``."""
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
        elif 2 in agrees:
            rot = next((_text(r, "rot", where, i, required=False) for (i, r), ag in zip(annots, agrees)
                        if ag == 2), "")
            aligned.append((a, rot))
    return aligned, violating, rewrites


def _group(candidate: Candidate, pool, rng, loss: LossConfig, stage: StageConfig, report: BuildReport
           ) -> ContrastiveGroup:
    """One candidate prompt -> its group: its K most severe violations, padded from other prompts' ones."""
    k, alpha = loss.num_negatives, loss.social_alpha
    q, positive, origin, rot, own = candidate
    chosen = own[:k]
    negatives = [a for a, _ in chosen]
    severity = [w[0] for _, w in chosen]
    origins = ["same_prompt"] * len(chosen)
    if len(negatives) < k and stage.fill_negatives:
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
    system = f"Rule of thumb: {rot}" if (stage.rot_in_context and rot) else None
    worst = chosen[0][1]
    meta = {"stage": 1, "kind": "mic", "prompt": q, "rot": rot, "positive_origin": origin,
            "neg_origin": origins, "violation_severity": worst[1], "rot_agree": worst[2],
            "chatbot": worst[4].get("chatbot")}
    return make_group(_user_context(q, system), positive, negatives, severity, alpha, meta)
