"""Tables of contrastive groups for the stage chapters."""

from __future__ import annotations

from ..groups.types import BuildReport, ContrastiveGroup


def group_table(group: ContrastiveGroup):
    """One group as a small table (role, text, severity, weight) to show in a chapter (02 and 03)."""
    import pandas as pd
    rows = [{"role": f"context ({m['role']})", "text": m["content"], "severity": None, "weight": None}
            for m in group.context_messages]
    rows.append({"role": "positive", "text": group.positive, "severity": None, "weight": None})
    origins = group.meta.get("neg_origin") or [""] * len(group.negatives)
    for j, (neg, sev, w) in enumerate(zip(group.negatives, group.neg_severity, group.neg_weights)):
        origin = f", {origins[j]}" if j < len(origins) and origins[j] else ""
        rows.append({"role": f"negative {j + 1}{origin}", "text": neg, "severity": round(sev, 3),
                     "weight": round(w, 3)})
    return pd.DataFrame(rows)


def negative_mix_table(report: BuildReport):
    """The mix of a stage-2 build's negatives: one row per (kind of context, source) with the count, its share of
    that kind's negatives, the mean cosine between a context and the anchor of its near-topic negatives (empty for
    the other sources) and what the source is. Chapter 03 shows it next to the build summary.

    Args:
        report: the :class:`~prosocial_lib.groups.types.BuildReport` of ``build_stage2_groups``, or its
            :meth:`~prosocial_lib.groups.types.BuildReport.to_dict` (a stage's ``metrics.json`` keeps it under
            ``groups.train_build``).

    Returns:
        A DataFrame with columns context, source, negatives, share, mean cosine, what it is (no rows when the
        build made no negatives).
    """
    import pandas as pd

    from ..groups.stage2 import SOURCE_DESCRIPTIONS
    d = report.to_dict() if isinstance(report, BuildReport) else dict(report)
    similarity = d.get("similarity") or {}
    rows = []
    for kind, counts in (d.get("negatives") or {}).items():
        total = sum(counts.values())
        for source, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            rows.append({"context": kind, "source": source, "negatives": int(n), "share": n / total if total else 0.0,
                         "mean cosine": similarity.get(source), "what it is": SOURCE_DESCRIPTIONS.get(source, "")})
    return pd.DataFrame(rows, columns=["context", "source", "negatives", "share", "mean cosine", "what it is"])
