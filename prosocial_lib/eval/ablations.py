"""Loss ablations: one stage-2 retraining per changed setting."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from ..config.presets import parse_set_args
from ..config.schema import Config, ConfigError
from ..runs import atomic_path
from .systems import (
    VARIANTS,
    EvaluationError,
    _stage_seconds,
    base_run_name,
    heldout_metrics,
    own_run_config,
    uses_main_run,
    variant_config,
)

# ====================================================================== ablations (held-out contrastive scores)
#: Readable names of the loss knobs in ablation labels.
KNOB_NAMES = {"loss.tau": "τ", "loss.social_alpha": "α", "loss.npair_weight": "λ",
              "loss.num_negatives": "K", "loss.score": "score"}


def ablation_label(overrides: dict[str, Any]) -> str:
    """``{"loss.social_alpha": 0}`` -> ``"α = 0"``."""
    return ", ".join(f"{KNOB_NAMES.get(k, k)} = {v}" for k, v in overrides.items()) or "reference"


def ablation_specs(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """The reference and ``compare.ablations`` (each ``"key=value[;key=value]"``) as ``(label, overrides)``,
    checked against the config schema."""
    loss = cfg.loss
    specs = [(f"reference (τ = {loss.effective_tau:g}, α = {loss.social_alpha:g}, λ = {loss.npair_weight:g})", {})]
    for item in cfg.compare.ablations:
        overrides = parse_set_args([p for p in str(item).split(";") if p.strip()])
        if not overrides:
            raise EvaluationError(f"compare.ablations: empty ablation {item!r}")
        try:
            cfg.with_overrides(overrides).validate()
        except ConfigError as e:
            raise EvaluationError(f"compare.ablations: {item!r}: {e}") from e
        specs.append((ablation_label(overrides), overrides))
    return specs


def _slug(overrides: dict[str, Any]) -> str:
    text = "-".join(f"{k.split('.')[-1]}{v}" for k, v in overrides.items())
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in text)


def retrain_stage2(cfg: Config, overrides: dict[str, Any], prefix: str, *, progress: bool = True
                   ) -> dict[str, Any]:
    """Stage 2 of the full method retrained from its stage-1 checkpoint with ``overrides`` (none = the full
    method's own stage 2, reused) in a run of its own (``<run>-<prefix>-<slug>``), scored on the comparison's
    held-out validation groups. Returns one row: the loss knobs (tau, alpha, lambda, learning rate), steps,
    groups, held-out accuracy with its bootstrap CI, margin, CE, training seconds, reused, checkpoint. The
    ablations and the sweep (:mod:`.sweep`) are made of these rows."""
    from ..train.stages import run_stage, run_stages
    from .metrics import rate_with_ci

    full_variant = VARIANTS["npair-both"]
    full = variant_config(cfg, full_variant)
    stage1 = run_stages(full, (1,), progress=progress)[1]
    slug = _slug(overrides)
    ac = own_run_config(full, f"{base_run_name(cfg)}-{prefix}-{slug}") if overrides else full
    ac = ac.with_overrides(overrides).validate()
    r = run_stage(ac, 2, init_from=stage1.checkpoint_dir, progress=progress)
    if not overrides and uses_main_run(cfg, full_variant):
        after = r.metrics.get("after", {})
    else:
        after = heldout_metrics(cfg, str(r.checkpoint_dir), str(r.metrics.get("fingerprint")),
                                "npair-both" if not overrides else f"{prefix}-{slug}",
                                cfg.run_dir / "evaluation" / "cache", progress=progress)
    n = int(after.get("groups", 0))
    k = int(round(float(after.get("accuracy", math.nan)) * n)) if n else 0
    acc, lo, hi = rate_with_ci([1] * k + [0] * (n - k), **cfg.stats.bootstrap_kwargs(cfg.seed))
    return {"tau": ac.loss.effective_tau, "alpha": ac.loss.social_alpha, "lambda": ac.loss.npair_weight,
            "learning_rate": ac.stage2.learning_rate,
            "steps": int(r.metrics.get("train", {}).get("global_step", 0)), "groups": n, "accuracy": acc,
            "accuracy low": lo, "accuracy high": hi, "margin": float(after.get("margin", math.nan)),
            "ce": float(after.get("ce", math.nan)), "train_seconds": _stage_seconds(r.metrics),
            "reused": r.reused, "checkpoint": str(r.checkpoint_dir)}


def run_ablations(cfg: Config, *, progress: bool = True) -> pd.DataFrame:
    """Retrain stage 2 from the full method's stage-1 checkpoint once per ablation and compare held-out
    contrastive accuracy (with a bootstrap CI over groups) and margin. The first row is the reference: the full
    method's own stage 2 (the chapter-03 run, or its ``compare.max_steps`` version), reused."""
    rows = [{"ablation": label, **retrain_stage2(cfg, overrides, "ablation", progress=progress)}
            for label, overrides in ablation_specs(cfg)]
    df = pd.DataFrame(rows)
    out = cfg.run_dir / "evaluation"
    with atomic_path(out / "ablations.csv") as tmp:
        df.to_csv(tmp, index=False)
    return df
