"""A small hyperparameter sweep of stage 2, chosen on the validation split (never the test split).

The loss's reconstructed knobs (lambda, tau) and the learning rate have no values in the paper, so the book
chooses them by a documented sweep: every point of a grid retrains stage 2 from the full method's stage-1
checkpoint (:func:`~prosocial_lib.eval.ablations.retrain_stage2`, the ablations' machinery) under the same budget
rule as every compared system, and is scored on the comparison's held-out *validation* groups. The chosen point
has the highest held-out contrastive accuracy; ties (within one group) go to the lower held-out cross-entropy
(the fluency cost). Nothing here reads the test contexts, so chapter 04 scores the test split once.

:func:`run_sweep` returns the table; :func:`save_sweep` writes it with the machine, the date and the command that
made it (``sweep.json``: ``{"preset", "command", "machine", "grid", "chosen", "rows"}``), which chapter 04 shows
as it is (:func:`load_sweep`). ``prosocial sweep`` runs it from the command line.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..config.presets import parse_set_args
from ..config.schema import Config, ConfigError
from ..runs import machine_info, write_json_atomic
from .systems import EvaluationError

#: The grid ``prosocial sweep`` uses when none is given: lambda, tau and the stage-2 learning rate.
DEFAULT_GRID: dict[str, list[Any]] = {"loss.npair_weight": [0.5, 1.0, 2.0], "loss.tau": [0.5, 1.0],
                                      "stage2.learning_rate": [5e-4, 1e-3]}


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["loss.tau=0.5,1", "loss.npair_weight=1,2"]`` -> ``{"loss.tau": [0.5, 1], "loss.npair_weight": [1, 2]}``
    (values parsed as JSON where they parse). Raises :class:`EvaluationError` for an item without ``=`` or
    without values, or a key given twice."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise EvaluationError(f"sweep grid: expected key=v1,v2,..., got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = [v for v in raw.split(",") if v.strip()]
        if not values:
            raise EvaluationError(f"sweep grid: no values for {key!r}")
        if key in grid:
            raise EvaluationError(f"sweep grid: {key!r} given twice")
        grid[key] = [parse_set_args([f"{key}={v.strip()}"])[key] for v in values]
    return grid


def grid_points(cfg: Config, grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid as overrides, each checked against the config schema (the point equal to
    ``cfg`` itself comes back as ``{}``: the full method's own stage 2, reused). Raises :class:`EvaluationError`
    naming the point for a value the schema refuses."""
    points = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values))
        try:
            changed = cfg.with_overrides(overrides).validate()
        except ConfigError as e:
            raise EvaluationError(f"sweep grid point {overrides}: {e}") from e
        points.append({} if changed == cfg else overrides)
    return points


def choose(table: pd.DataFrame) -> int:
    """Index of the chosen row: the highest held-out accuracy; among rows within one held-out group of it, the
    lowest held-out CE. Raises :class:`EvaluationError` for an empty table or one without a finite accuracy."""
    scored = table[table["accuracy"].notna()]
    if scored.empty:
        raise EvaluationError("sweep: no grid point has a held-out accuracy")
    groups = max(int(scored["groups"].max()), 1)
    best = scored["accuracy"].max()
    near = scored[scored["accuracy"] >= best - 1 / groups - 1e-12]
    ce = near["ce"].fillna(math.inf)
    return int(ce.idxmin())


def run_sweep(cfg: Config, grid: dict[str, list[Any]] | None = None, *, progress: bool = True) -> pd.DataFrame:
    """Retrain stage 2 once per grid point (:func:`grid_points`; default :data:`DEFAULT_GRID`) and score it on
    the held-out validation groups. One row per point: ``point`` (the overrides, ``"reference"`` for the
    config's own values), the knobs, steps, groups, accuracy with its CI, margin, CE, seconds, reused and
    ``chosen`` (:func:`choose`). Finished points are reused on a rerun (each is its own run folder)."""
    from .ablations import ablation_label, retrain_stage2

    grid = grid or DEFAULT_GRID
    rows = []
    for overrides in grid_points(cfg, grid):
        row = retrain_stage2(cfg, overrides, "sweep", progress=progress)
        rows.append({"point": ablation_label(overrides), **{k: row[k] for k in row if k != "checkpoint"}})
    table = pd.DataFrame(rows)
    table["chosen"] = table.index == choose(table)
    return table


def save_sweep(table: pd.DataFrame, cfg: Config, grid: dict[str, list[Any]], path: str | Path,
               command: str) -> Path:
    """Write ``table`` to ``path`` (JSON, atomically) with the preset, ``command``, the machine and date
    (:func:`~prosocial_lib.runs.machine_info`), the grid and the chosen point."""
    chosen = table[table["chosen"]]
    record = {"preset": cfg.preset, "command": command, "machine": machine_info(), "grid": grid,
              "chosen": chosen.iloc[0]["point"] if len(chosen) else None,
              "rows": json.loads(table.to_json(orient="records"))}
    path = Path(path)
    write_json_atomic(path, record, indent=1)
    return path


def load_sweep(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """``(table, record)`` from a file :func:`save_sweep` wrote, or None if there is none. Raises
    :class:`EvaluationError` naming the file for one that is not a sweep record."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        table = pd.DataFrame(record["rows"])
        missing = {"point", "accuracy", "chosen"} - set(table.columns)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EvaluationError(f"{path}: not a sweep record ({e})") from e
    if missing:
        raise EvaluationError(f"{path}: sweep rows lack {sorted(missing)}")
    return table, record
