"""Stage-1 groups from MIC: RoT-agreeing answers as positives, RoT-violating ones as negatives (method.md section 3)."""

from __future__ import annotations

from typing import Any

from ..config.schema import Config
from .types import BuildReport, _finish, _int, _rng, _rows, _text, make_group, mic_severity


def _user_context(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


# ---------------------------------------------------------------------- stage 1: MIC
def build_stage1_groups(mic_ds, cfg: Config, *, max_groups: int | None = -1, seed: int | None = None,
                        where: str = "MIC") -> list[dict[str, Any]]:
    """Stage-1 groups from MIC rows (one per prompt; rules in the module docstring).

    ``max_groups`` defaults to ``cfg.stage1.max_groups`` (None = all); ``seed`` to ``cfg.seed``. The groups
    come in a seeded random order, so a cap takes a random subset of prompts.
    """
    max_groups = cfg.stage1.max_groups if max_groups == -1 else max_groups
    seed = cfg.seed if seed is None else seed
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
