"""Your own contrastive groups as JSON or JSONL files (bring-your-own groups for ``run_stage(train_groups=...)``).

A file holds group dicts with the keys of :data:`~prosocial_lib.groups.types.GROUP_KEYS`: ``context_messages``,
``positive`` and ``negatives`` are required; ``neg_weights`` default to 1, ``neg_severity`` to 0, ``meta`` to {}.
``.jsonl`` holds one group per line; ``.json`` a list of groups (or ``{"groups": [...]}``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .types import ContrastiveGroup, GroupBuildError


def read_groups(path: str | os.PathLike) -> list[ContrastiveGroup]:
    """Read and check the groups in a ``.json`` or ``.jsonl`` file.

    Args:
        path: the file (any other suffix is read as JSONL when its first character is not ``[`` or ``{``).

    Returns:
        The groups, in file order.

    Raises:
        GroupBuildError: the file is missing or not JSON, or a group is malformed; the message names the file,
            the row (1-based line for JSONL, 0-based index for JSON) and the field.
    """
    p = Path(path)
    if not p.is_file():
        raise GroupBuildError(f"{p}: no such file of groups")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl" or (p.suffix != ".json" and text.lstrip()[:1] not in ("[", "{")):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append((f"{p}, line {n}", _parse(line, f"{p}, line {n}")))
    else:
        data = _parse(text, str(p))
        if isinstance(data, dict) and "groups" in data:
            data = data["groups"]
        if not isinstance(data, list):
            raise GroupBuildError(f"{p}: expected a list of groups (or {{\"groups\": [...]}}), got "
                                  f"{type(data).__name__}")
        rows = [(f"{p}, group {i}", d) for i, d in enumerate(data)]
    return [ContrastiveGroup.from_dict(d, where) for where, d in rows]


def write_groups(groups: Sequence[ContrastiveGroup], path: str | os.PathLike) -> Path:
    """Write groups as JSONL (one :meth:`~ContrastiveGroup.to_dict` per line) or, for ``.json``, one list.

    Returns:
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".json":
        p.write_text(json.dumps([g.to_dict() for g in groups], ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        p.write_text("".join(json.dumps(g.to_dict(), ensure_ascii=False) + "\n" for g in groups), encoding="utf-8")
    return p


def _parse(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GroupBuildError(f"{where}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
