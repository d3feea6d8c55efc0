"""The compared systems (chapter 04): base, CE-only, n-pair, both stages, DPO; training each one."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import runs
from ..config.schema import Config
from ..groups.types import ContrastiveGroup


# ====================================================================== the systems compared
@dataclass(frozen=True)
class Variant:
    """One compared system: which stages it trains, with which loss overrides, and how."""

    key: str
    label: str
    stages: tuple[int, ...] = ()  # () = not trained
    overrides: tuple[tuple[str, Any], ...] = ()  # dotted config overrides (e.g. lambda = 0)
    method: str = "npair"  # "base" | "npair" (our trainer; lambda may be 0) | "dpo" (TRL)
    main_run: bool = False  # the chapter-03 run itself (same run folder, reused) unless compare.max_steps

    def describe(self) -> str:
        if self.method == "base":
            return "no fine-tuning"
        stages = " + ".join(f"stage {s}" for s in self.stages)
        extra = ", ".join(f"{k} = {v}" for k, v in self.overrides)
        return f"{self.method} on {stages}" + (f" ({extra})" if extra else "")

    def budget(self, cfg: Config) -> str:
        """The optimisation budget this variant gets under ``cfg``, e.g. ``"stage 2: 30 steps"``."""
        if self.method == "base":
            return "-"
        vc = variant_config(cfg, self)
        parts = []
        for s in self.stages:
            st = vc.stage1 if s == 1 else vc.stage2
            size = f"{st.max_steps} steps" if st.max_steps > 0 else f"{st.epochs:g} epoch(s)"
            unit = "(positive, negative) pairs" if self.method == "dpo" else "groups"
            text = f"stage {s}: {'at most ' if st.eval_steps > 0 else ''}{size} x {st.batch_size * st.grad_accum} {unit}"
            if st.eval_steps > 0:
                metric = "loss" if self.method == "dpo" else st.early_stopping_metric
                text += (f", early stopping on the held-out {metric} (every {st.eval_steps} steps, patience "
                         f"{st.early_stopping_patience})")
            parts.append(text)
        return "; ".join(parts)


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("base", "base model", (), (), "base"),
    Variant("ce-stage2", "CE only (stage 2)", (2,), (("loss.npair_weight", 0.0),)),
    Variant("npair-stage2", "CE + n-pair (stage 2 only)", (2,)),
    Variant("ce-both", "CE only (both stages)", (1, 2), (("loss.npair_weight", 0.0),)),
    Variant("npair-both", "CE + n-pair (both stages)", (1, 2), main_run=True),
    Variant("dpo", "DPO + CE (stage 2, TRL)", (2,), (), "dpo"),
)}


class EvaluationError(ValueError):
    """A comparison that cannot run as configured."""


def base_run_name(cfg: Config) -> str:
    return cfg.run_name or cfg.preset


def uses_main_run(cfg: Config, variant: Variant) -> bool:
    """True when the variant is the chapter-03 run itself (no shortened budget asks for a run of its own)."""
    return variant.main_run and cfg.compare.max_steps is None


def variant_config(cfg: Config, variant: Variant) -> Config:
    """The config of one variant's run: the chapter-03 config with the variant's overrides (and the shortened
    budget ``compare.max_steps``, when set), in its own run folder - except the full method with the
    chapter-03 budget, which is the chapter-03 run. A new config; ``cfg`` is left as it is."""
    vc = cfg
    if variant.method != "base" and not uses_main_run(cfg, variant):
        vc = own_run_config(cfg, f"{base_run_name(cfg)}-{variant.key}")
    return vc.with_overrides(dict(variant.overrides)).validate()


def own_run_config(cfg: Config, run_name: str) -> Config:
    """``cfg`` as a run this chapter trains itself, in the run folder ``run_name``: the shortened budget
    (``compare.max_steps``, a cap on every stage of every system) and few held-out groups for the run's own
    before/after log (``compare.eval_groups``): the comparison scores every system once, on the same held-out
    groups, with :func:`heldout_metrics`. Early stopping needs the held-out groups to watch, so a stage with
    ``eval_steps`` > 0 keeps its ``eval_groups`` (the same groups and the same rule as every other system)."""
    stage1, stage2, cmp = cfg.stage1, cfg.stage2, cfg.compare
    if cmp.max_steps is not None:
        stage1 = dataclasses.replace(stage1, max_steps=int(cmp.max_steps))
        stage2 = dataclasses.replace(stage2, max_steps=int(cmp.max_steps))
    if cmp.eval_groups is not None:
        if stage1.eval_steps <= 0:
            stage1 = dataclasses.replace(stage1, eval_groups=int(cmp.eval_groups))
        if stage2.eval_steps <= 0:
            stage2 = dataclasses.replace(stage2, eval_groups=int(cmp.eval_groups))
    return dataclasses.replace(cfg, run_name=run_name, stage1=stage1, stage2=stage2)


@dataclass
class TrainedVariant:
    """A variant ready to generate: its model (a hub id / spec for the base, else a checkpoint folder), a
    fingerprint of the weights' config, whether training was skipped, its training time and held-out metrics."""

    variant: Variant
    model: str
    fingerprint: str
    reused: bool = True
    train_seconds: float = 0.0
    heldout: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _stage_seconds(metrics: dict[str, Any]) -> float:
    return float((metrics.get("train") or {}).get("train_seconds") or 0.0)


def train_variant(cfg: Config, variant: Variant, *, progress: bool = True) -> TrainedVariant:
    """Train ``variant`` (or reuse its finished run) and return where its model is."""
    from ..train.stages import run_stage, run_stages, stage_groups

    vc = variant_config(cfg, variant)
    if variant.method == "base":
        return TrainedVariant(variant, cfg.model.name, f"base:{cfg.model.name}")
    if variant.method == "npair":
        if variant.stages == (1, 2):
            results = run_stages(vc, (1, 2), progress=progress)
        elif variant.stages == (2,):
            results = {2: run_stage(vc, 2, init_from=None, progress=progress)}
        else:
            raise EvaluationError(f"variant {variant.key!r}: stages {variant.stages} are not supported")
        last = results[max(results)]
        return TrainedVariant(variant, str(last.checkpoint_dir), str(last.metrics.get("fingerprint")),
                              reused=all(r.reused for r in results.values()),
                              train_seconds=sum(_stage_seconds(r.metrics) for r in results.values()),
                              # the chapter-03 run scored the comparison's own held-out groups already
                              heldout=last.metrics.get("after") if uses_main_run(cfg, variant) else None)
    if variant.method == "dpo":
        from ..train.dpo import train_dpo

        if variant.stages != (2,):
            raise EvaluationError(f"variant {variant.key!r}: DPO runs on the stage-2 groups only")
        groups, _ = stage_groups(vc, 2, "train")
        held_out = stage_groups(vc, 2, "validation")[0] if vc.stage2.eval_steps > 0 else None
        out = vc.run_dir / "dpo"
        m = train_dpo(vc, groups, None, out, beta=cfg.compare.dpo_beta, sft_weight=cfg.compare.dpo_sft_weight,
                      eval_groups=held_out, progress=progress)
        return TrainedVariant(variant, str(out), str(m["fingerprint"]), reused=bool(m.get("reused")),
                              train_seconds=0.0 if m.get("reused") else float(m.get("train_seconds", 0.0)),
                              details={"dpo": {k: m.get(k) for k in ("pairs", "pairs_trained", "steps", "beta",
                                                                     "sft_weight", "last", "train_seconds")}})
    raise EvaluationError(f"variant {variant.key!r}: unknown method {variant.method!r}")


def heldout_metrics(cfg: Config, model: str, fingerprint: str, name: str, cache_dir: Path, *,
                    progress: bool = False) -> dict[str, float]:
    """Held-out contrastive accuracy / margin / n-pair / CE of ``model`` on the stage-2 validation groups of
    ``cfg`` (``stage2.eval_groups`` of them: the groups the chapter-03 run scores as ``after``), cached in
    ``cache_dir`` per model fingerprint and groups, so every system is scored once on the same groups."""
    from ..modeling.loading import load_model_and_tokenizer
    from ..train.stages import score_heldout, stage_groups

    groups, _ = stage_groups(cfg, 2, "validation")
    key = runs.fingerprint([fingerprint, _groups_digest(groups), cfg.loss.effective_tau, cfg.model.max_length])
    slug = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in name)

    def compute() -> dict[str, float]:
        net, tok = load_model_and_tokenizer(dataclasses.replace(cfg.model, name=model), seed=cfg.seed)
        return score_heldout(net, tok, groups, cfg, progress=progress, desc=f"held-out: {name}")

    out, _ = runs.load_or_build(cache_dir / f"heldout-{slug}-{key}.json", compute,
                                write=functools.partial(runs.write_json_atomic, indent=None))
    return out


def _groups_digest(groups: Sequence[ContrastiveGroup]) -> str:
    return runs.fingerprint([[g.context_messages, g.positive, g.negatives] for g in groups])
