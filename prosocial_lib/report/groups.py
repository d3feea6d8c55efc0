"""Tables of contrastive groups for the stage chapters."""

from __future__ import annotations

from ..groups.types import ContrastiveGroup


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
