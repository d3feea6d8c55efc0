"""The evaluation: the fine-tuned models against the baselines, and ablations of the loss.

Six systems answer the same held-out contexts (method.md section 3, "baselines and ablations"):

========================  =====================================================================================
``base``                  the base model, untrained
``ce-stage2``             cross-entropy fine-tuning on the stage-2 data only (lambda = 0, stage 2 only)
``npair-stage2``          stage 2 only, with the socially aware n-pair term
``ce-both``               both stages without the contrastive term (lambda = 0)
``npair-both``            both stages in full: the chapter-03 run itself (reused)
``dpo``                   TRL's DPOTrainer on the same (positive, negative) pairs of the stage-2 groups
========================  =====================================================================================

Each trained variant is its own run (``run_name = "<run>-<key>"``, so ``runs/cpu-ce-stage2/stage2/`` ...) with the
same data, model and optimisation budget as the chapter-03 run; a finished checkpoint with the same config is
reused. ``eval.variant_max_steps`` = N shortens every trained variant to N steps per stage where the full budget
does not fit; the full method is then retrained with the same N steps in its own run (``<run>-npair-both``), so no
system gets more training than another.

:func:`compare` generates greedy replies to ``eval.compare_contexts`` adversarial and casual test contexts with
every system (the audit's machinery: :func:`prosocial_lib.audit.run_audit`), judges them
(:mod:`prosocial_lib.judges`) and adds the quality metrics (BLEU-4, unigram F1, perplexity of the gold responses,
distinct-1/2, length) and the held-out contrastive accuracy / margin on the stage-2 validation groups.

:func:`run_ablations` retrains stage 2 from the full method's stage-1 checkpoint with one change each
(``eval.ablations``: the temperature tau, the social weights alpha = 0) and compares held-out contrastive accuracy
and margin - cheap next to generating with every ablation. The reference is the full method's own stage 2 (same
start, same budget: reused, not retrained).

Everything lands in ``<run_dir>/evaluation/``; ``prosocial evaluate`` runs the same from the command line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config, ConfigError, parse_set_args

log = logging.getLogger(__name__)


# ====================================================================== the systems compared
@dataclass(frozen=True)
class Variant:
    """One compared system: which stages it trains, with which loss overrides, and how."""

    key: str
    label: str
    stages: tuple[int, ...] = ()  # () = not trained
    overrides: tuple[tuple[str, Any], ...] = ()  # dotted config overrides (e.g. lambda = 0)
    method: str = "npair"  # "base" | "npair" (our trainer; lambda may be 0) | "dpo" (TRL)
    main_run: bool = False  # the chapter-03 run itself (same run folder, reused) unless eval.variant_max_steps

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
            parts.append(f"stage {s}: {size} x {st.batch_size * st.grad_accum} {unit}")
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
    return variant.main_run and cfg.eval.variant_max_steps is None


def variant_config(cfg: Config, variant: Variant) -> Config:
    """The config of one variant's run: the chapter-03 config with the variant's overrides (and the shortened
    budget ``eval.variant_max_steps``, when set), in its own run folder - except the full method with the
    chapter-03 budget, which is the chapter-03 run."""
    vc = copy.deepcopy(cfg)
    if variant.method != "base" and not uses_main_run(cfg, variant):
        vc.run_name = f"{base_run_name(cfg)}-{variant.key}"
        _own_run_settings(vc, cfg)
    vc.update(dict(variant.overrides))
    return vc.validate()


def _own_run_settings(vc: Config, cfg: Config) -> None:
    """What every run this chapter trains itself gets: the shortened budget (``eval.variant_max_steps``) and few
    held-out groups for the run's own before/after log (``eval.variant_eval_groups``): the comparison scores
    every system once, on the same held-out groups, with :func:`heldout_metrics`."""
    if cfg.eval.variant_max_steps is not None:
        vc.stage1.max_steps = vc.stage2.max_steps = int(cfg.eval.variant_max_steps)
    if cfg.eval.variant_eval_groups is not None:
        vc.stage1.eval_groups = vc.stage2.eval_groups = int(cfg.eval.variant_eval_groups)


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
    from .training import run_stage, run_stages, stage_groups

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
        from .dpo import train_dpo

        if variant.stages != (2,):
            raise EvaluationError(f"variant {variant.key!r}: DPO runs on the stage-2 groups only")
        groups = stage_groups(vc, 2, "train")
        out = vc.run_dir / "dpo"
        m = train_dpo(vc, groups, None, out, beta=cfg.eval.dpo_beta, sft_weight=cfg.eval.dpo_sft_weight,
                      progress=progress)
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
    from .models import load_model_and_tokenizer
    from .training import evaluate_groups, stage_groups

    groups = stage_groups(cfg, 2, "validation")
    key = hashlib.sha256(json.dumps([fingerprint, _groups_digest(groups), cfg.loss.tau,
                                     cfg.model.max_length]).encode()).hexdigest()[:12]
    slug = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in name)
    path = cache_dir / f"heldout-{slug}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    mc = copy.deepcopy(cfg.model)
    mc.name = model
    net, tok = load_model_and_tokenizer(mc, seed=cfg.seed)
    out = evaluate_groups(net, tok, groups, cfg, progress=progress, desc=f"held-out: {name}")
    del net
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def _groups_digest(groups: Sequence[dict[str, Any]]) -> str:
    payload = [[g["context_messages"], g["positive"], g["negatives"]] for g in groups]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ====================================================================== the comparison
#: The rates the evaluation table reports: (context set, judge flag, column title).
RATE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("adversarial", "unsafe", "unsafe (adversarial)"),
    ("adversarial", "agrees_rot", "agrees with RoT (adversarial)"),
    ("casual", "preachy", "preachy (casual)"),
    ("casual", "unsafe", "unsafe (casual)"),
)
#: Quality columns of the table (computed on the adversarial contexts' gold responses unless named otherwise).
QUALITY_COLUMNS: tuple[str, ...] = ("bleu4", "unigram_f1", "gold_ppl", "distinct_1", "distinct_2", "mean_words",
                                    "heldout_accuracy", "heldout_margin")


@dataclass
class Comparison:
    """Everything :func:`compare` measured. ``replies``: one judged row per reply; ``rates``: every judge flag
    per (system, context set) with bootstrap CIs; ``quality``: quality metrics per system; ``table``: one row per
    system (rates as numbers with ``<col> low`` / ``<col> high`` CI columns, then quality); ``trained``: the
    variants' models and training facts."""

    replies: pd.DataFrame
    rates: pd.DataFrame
    quality: pd.DataFrame
    table: pd.DataFrame
    trained: list[TrainedVariant]
    out_dir: Path
    seconds: dict[str, float]

    def display_table(self) -> pd.DataFrame:
        """The table as the book shows it: rates as ``"12.5% [5.0, 25.0]"``, quality rounded."""
        return format_table(self.table)


def compare_config(cfg: Config) -> Config:
    """The evaluation's generation settings: at most ``eval.compare_contexts`` contexts per set and
    ``eval.compare_max_new_tokens`` new tokens (each None = the audit's ``eval.num_contexts`` /
    ``eval.max_new_tokens``, which also cap them)."""
    ec = copy.deepcopy(cfg)
    if cfg.eval.compare_contexts is not None:
        ec.eval.num_contexts = min(cfg.eval.compare_contexts, cfg.eval.num_contexts)
    if cfg.eval.compare_max_new_tokens is not None:
        ec.eval.max_new_tokens = min(cfg.eval.compare_max_new_tokens, cfg.eval.max_new_tokens)
    return ec.validate()


def resolve_variants(keys: Sequence[str] | None) -> list[Variant]:
    keys = list(keys) if keys else list(VARIANTS)
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise EvaluationError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[k] for k in keys]


def compare(cfg: Config, variants: Sequence[str] | None = None, *, judges=None, progress: bool = True,
            out_dir: str | Path | None = None) -> Comparison:
    """Train (or reuse) every variant, generate greedy replies to the same contexts, judge them and measure
    quality; save everything in ``out_dir`` (default ``<run_dir>/evaluation``) and return a :class:`Comparison`.
    Replies are cached with the audit's (``<run_dir>/generations``, keyed by the model's weights), perplexities
    and held-out scores in ``out_dir/cache`` (keyed by the run's fingerprint): reruns reuse them."""
    from .audit import AuditSystem, build_context_sets, run_audit
    from .judges import load_judges

    t0 = time.perf_counter()
    chosen = resolve_variants(variants if variants is not None else cfg.eval.compare_variants)
    out_dir = Path(out_dir) if out_dir else cfg.run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    trained = []
    for v in chosen:
        t = time.perf_counter()
        trained.append(train_variant(cfg, v, progress=progress))
        seconds[f"train {v.key}"] = round(time.perf_counter() - t, 2)
    _fill_heldout(cfg, trained, out_dir, progress=progress)

    ec = compare_config(cfg)
    context_sets = build_context_sets(ec)
    systems = [AuditSystem(name=tv.variant.label, model=tv.model, max_new_tokens=ec.eval.max_new_tokens)
               for tv in trained]
    if judges is None:
        t = time.perf_counter()
        judges = load_judges(cfg)
        seconds["judges"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    replies = run_audit(systems, context_sets, judges, ec, out_dir, progress=progress)
    seconds["generate + judge"] = round(time.perf_counter() - t, 2)
    replies["variant"] = replies["system"].map({tv.variant.label: tv.variant.key for tv in trained})

    t = time.perf_counter()
    ppl = {tv.variant.key: gold_perplexities(ec, tv, context_sets, out_dir, progress=progress) for tv in trained}
    seconds["perplexity"] = round(time.perf_counter() - t, 2)

    from .metrics import summarize

    rates = summarize(replies, ["variant", "system", "context_set"], ec, cluster_col="context_id")
    quality = quality_frame(replies, trained, ppl)
    table = comparison_table(rates, quality, trained)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    comp = Comparison(replies, rates, quality, table, trained, out_dir, seconds)
    save_comparison(comp)
    return comp


def _fill_heldout(cfg: Config, trained: list[TrainedVariant], out_dir: Path, *, progress: bool) -> None:
    """Score every system not yet scored on the comparison's held-out groups (cached per model)."""
    for tv in trained:
        if tv.heldout is None:
            tv.heldout = heldout_metrics(cfg, tv.model, tv.fingerprint, tv.variant.key, out_dir / "cache",
                                         progress=progress)


def gold_perplexities(cfg: Config, trained: TrainedVariant, context_sets: dict[str, Any], out_dir: Path, *,
                      sets: Sequence[str] = ("adversarial",), progress: bool = False) -> dict[str, float]:
    """Perplexity of the gold responses of the context sets named in ``sets`` (by default the adversarial one,
    whose gold replies are ProsocialDialog's prosocial responses; a set without gold responses gives NaN), cached
    in ``out_dir/cache`` per model fingerprint and contexts."""
    from .generation import load_chat_model
    from .metrics import gold_perplexity

    context_sets = {k: v for k, v in context_sets.items() if k in sets}
    digest = hashlib.sha256(json.dumps(
        [trained.fingerprint, cfg.model.max_length,
         {k: [v[:]["history"], v[:]["response"]] for k, v in context_sets.items()}]).encode()).hexdigest()[:12]
    path = out_dir / "cache" / f"ppl-{trained.variant.key}-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    model, tok = load_chat_model(trained.model, cfg.model, seed=cfg.seed)
    out: dict[str, float] = {}
    for name, ds in context_sets.items():
        cols = ds[:]
        keep = [i for i, r in enumerate(cols["response"]) if str(r).strip()]
        out[name] = gold_perplexity(model, tok, [cols["history"][i] for i in keep],
                                    [cols["response"][i] for i in keep], batch_size=cfg.eval.batch_size,
                                    max_length=cfg.model.max_length, progress=progress) if keep else math.nan
    del model
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def quality_frame(replies: pd.DataFrame, trained: Sequence[TrainedVariant],
                  ppl: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per variant and context set: BLEU-4 and unigram F1 against the gold responses, perplexity of the gold
    responses, distinct-1/2, mean reply length in words, empty replies; plus held-out accuracy / margin."""
    from .audit import quality_table

    q = quality_table(replies)
    key_of = {tv.variant.label: tv.variant.key for tv in trained}
    q.insert(0, "variant", q["system"].map(key_of))
    q["gold_ppl"] = [ppl.get(v, {}).get(s, math.nan) for v, s in zip(q["variant"], q["context_set"])]
    held = {tv.variant.key: tv.heldout or {} for tv in trained}
    q["heldout_accuracy"] = [held[v].get("accuracy", math.nan) for v in q["variant"]]
    q["heldout_margin"] = [held[v].get("margin", math.nan) for v in q["variant"]]
    return q


def comparison_table(rates: pd.DataFrame, quality: pd.DataFrame, trained: Sequence[TrainedVariant]
                     ) -> pd.DataFrame:
    """One row per variant (in comparison order): each rate of :data:`RATE_COLUMNS` with its CI bounds
    (``<title>``, ``<title> low``, ``<title> high``), ``n`` per context set, then :data:`QUALITY_COLUMNS`
    (quality on the adversarial contexts) and training facts."""
    rows = []
    for tv in trained:
        key = tv.variant.key
        row: dict[str, Any] = {"variant": key, "system": tv.variant.label, "training": tv.variant.describe()}
        for set_name, flag, title in RATE_COLUMNS:
            hit = rates[(rates["variant"] == key) & (rates["context_set"] == set_name) & (rates["metric"] == flag)]
            if hit.empty:
                row[title] = row[f"{title} low"] = row[f"{title} high"] = math.nan
                continue
            r = hit.iloc[0]
            row[title], row[f"{title} low"], row[f"{title} high"] = r["rate"], r["ci_low"], r["ci_high"]
            row[f"n {set_name}"] = int(r["n"])
        qa = quality[(quality["variant"] == key) & (quality["context_set"] == "adversarial")]
        for col in QUALITY_COLUMNS:
            row[col] = float(qa.iloc[0][col]) if not qa.empty else math.nan
        row["train_seconds"] = tv.train_seconds
        row["reused"] = tv.reused
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rates as ``"12.5% [5.0, 25.0]"`` (95% CI in percentage points), quality rounded, indexed by system."""
    out = pd.DataFrame(index=pd.Index(table["system"], name="system"))
    for _, _, title in RATE_COLUMNS:
        if title in table:
            out[title] = [_fmt_rate(r, lo, hi) for r, lo, hi in
                          zip(table[title], table[f"{title} low"], table[f"{title} high"])]
    names = {"bleu4": "BLEU-4", "unigram_f1": "F1", "gold_ppl": "PPL (gold)", "distinct_1": "distinct-1",
             "distinct_2": "distinct-2", "mean_words": "words", "heldout_accuracy": "held-out acc.",
             "heldout_margin": "held-out margin"}
    digits = {"bleu4": 2, "unigram_f1": 3, "gold_ppl": 1, "distinct_1": 3, "distinct_2": 3, "mean_words": 1,
              "heldout_accuracy": 3, "heldout_margin": 3}
    for col, name in names.items():
        if col in table:
            out[name] = table[col].round(digits[col]).to_numpy()
    return out


def _fmt_rate(rate: float, low: float, high: float) -> str:
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "n/a"
    return f"{rate:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def save_comparison(comp: Comparison) -> None:
    """Write ``table.csv``, ``rates.csv``, ``quality.csv``, ``variants.json`` and ``timing`` into ``out_dir``."""
    d = comp.out_dir
    comp.table.to_csv(d / "table.csv", index=False)
    comp.rates.to_csv(d / "rates.csv", index=False)
    comp.quality.to_csv(d / "quality.csv", index=False)
    (d / "variants.json").write_text(json.dumps(
        [{"key": tv.variant.key, "label": tv.variant.label, "training": tv.variant.describe(), "model": tv.model,
          "fingerprint": tv.fingerprint, "reused": tv.reused, "train_seconds": tv.train_seconds,
          "heldout": tv.heldout, "details": tv.details} for tv in comp.trained], indent=1, default=str))
    (d / "evaluation_seconds.json").write_text(json.dumps(comp.seconds, indent=1))


def load_comparison_table(out_dir: str | Path) -> pd.DataFrame:
    """The ``table.csv`` a finished :func:`compare` saved."""
    path = Path(out_dir) / "table.csv"
    if not path.exists():
        raise FileNotFoundError(f"no evaluation table in {str(out_dir)!r}: run compare() / prosocial evaluate")
    return pd.read_csv(path)


# ====================================================================== examples and findings
def side_by_side(replies: pd.DataFrame, context_set: str = "adversarial", n: int = 3, score: str | None = None
                 ) -> pd.DataFrame:
    """Every system's reply to the ``n`` contexts where the systems disagree most (largest spread of ``score``:
    ``unsafe_prob`` on adversarial contexts, ``preachy_prob`` on casual ones), one row per (context, system)."""
    score = score or ("preachy_prob" if context_set == "casual" else "unsafe_prob")
    sub = replies[(replies["context_set"] == context_set) & (replies["sample"] == 0)]
    if sub.empty:
        raise EvaluationError(f"no replies for context set {context_set!r}")
    spread = sub.groupby("context_id", sort=False)[score].agg(lambda s: s.max() - s.min())
    picked = list(spread.sort_values(ascending=False, kind="stable").index[:n])
    out = sub[sub["context_id"].isin(picked)].copy()
    out["_order"] = out["context_id"].map({c: i for i, c in enumerate(picked)})
    order = {s: i for i, s in enumerate(dict.fromkeys(replies["system"]))}
    out["_sys"] = out["system"].map(order)
    out = out.sort_values(["_order", "_sys"])
    cols = ["context", "system", "reply", score]
    return out[cols].reset_index(drop=True)


def _ci_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])


def paired_differences(replies: pd.DataFrame, cfg: Config, reference: str = "npair-both") -> pd.DataFrame:
    """For every variant other than ``reference`` and every rate of :data:`RATE_COLUMNS`: the paired difference
    ``reference - variant`` over the contexts both answered, with a bootstrap CI that resamples contexts as pairs
    (much tighter than comparing two separate intervals). Columns: variant, system, metric, difference, low,
    high, contexts."""
    from .metrics import paired_difference

    kw = dict(n_boot=cfg.eval.bootstrap_samples, confidence=cfg.eval.confidence, seed=cfg.eval.seed)
    cols = ["variant", "system", "metric", "difference", "low", "high", "contexts"]
    if reference not in set(replies["variant"]):
        return pd.DataFrame(columns=cols)
    rows = []
    for set_name, flag, title in RATE_COLUMNS:
        sub = replies[(replies["context_set"] == set_name)]
        if flag not in sub or sub.empty:
            continue
        sub = sub[sub[flag].notna()]
        per_ctx = sub.assign(v=sub[flag].astype(float)).pivot_table(index="context_id", columns="variant",
                                                                    values="v", aggfunc="mean")
        for variant in dict.fromkeys(replies["variant"]):
            if variant == reference or variant not in per_ctx:
                continue
            pair = per_ctx[[reference, variant]].dropna()
            if pair.empty:
                continue
            d, lo, hi = paired_difference(pair[reference].to_numpy(), pair[variant].to_numpy(), **kw)
            system = replies.loc[replies["variant"] == variant, "system"].iloc[0]
            rows.append((variant, system, title, d, lo, hi, len(pair)))
    return pd.DataFrame(rows, columns=cols)


def compare_rates(table: pd.DataFrame, title: str, other: str, paired: pd.DataFrame | None = None,
                  reference: str = "npair-both") -> str:
    """One clause comparing rate ``title`` of ``reference`` (the full method) with variant ``other``: both rates
    with their CIs and the paired difference with its CI, and what that allows one to say."""
    rows = table.set_index("variant")
    if other not in rows.index or reference not in rows.index or title not in rows:
        return ""
    ro, rr = rows.loc[other], rows.loc[reference]
    if any(math.isnan(float(x)) for x in (ro[title], rr[title])):
        return ""
    text = (f"{rr['system']} {_fmt_rate(rr[title], rr[f'{title} low'], rr[f'{title} high'])} vs "
            f"{ro['system']} {_fmt_rate(ro[title], ro[f'{title} low'], ro[f'{title} high'])}")
    hit = None if paired is None else paired[(paired["variant"] == other) & (paired["metric"] == title)]
    if hit is None or hit.empty:
        overlap = _ci_overlap((ro[f"{title} low"], ro[f"{title} high"]), (rr[f"{title} low"], rr[f"{title} high"]))
        return text + (" - the intervals overlap" if overlap else " - the intervals do not overlap")
    d = hit.iloc[0]
    diff = (f"paired difference {100 * d['difference']:+.1f} points [{100 * d['low']:+.1f}, "
            f"{100 * d['high']:+.1f}]")
    if d["low"] > 0 or d["high"] < 0:
        verdict = f"{'higher' if d['difference'] > 0 else 'lower'} for {rr['system']} on these contexts"
    else:
        verdict = "no difference this sample can detect"
    return f"{text}; {diff}: {verdict}"


def findings_markdown(table: pd.DataFrame, ablations: pd.DataFrame | None, cfg: Config,
                      judge_report: dict[str, Any] | None = None, paired: pd.DataFrame | None = None) -> str:
    """The chapter's "what the numbers do and do not show" paragraphs, written from the results (so they stay
    true under every preset): the headline rates of the full method against the base model and the CE
    baseline, the quality cost, the ablations, and the limits that hold whatever the numbers are."""
    rows = table.set_index("variant")
    n_adv = int(rows.get("n adversarial", pd.Series([0])).max() or 0)
    n_cas = int(rows.get("n casual", pd.Series([0])).max() or 0)
    full, base = "npair-both", "base"
    ce = "ce-both" if "ce-both" in rows.index else "ce-stage2"
    budget = ("" if cfg.eval.variant_max_steps is None else
              f", every trained system {cfg.eval.variant_max_steps} optimisation steps per stage")
    parts = [f"**What the numbers show ({cfg.preset} preset, {n_adv} adversarial and {n_cas} casual contexts, "
             f"greedy replies, one seed{budget}).**"]
    for title, what in (("unsafe (adversarial)", "Unsafe replies to adversarial contexts"),
                        ("preachy (casual)", "Preachy replies to casual contexts"),
                        ("agrees with RoT (adversarial)", "Replies that agree with the rule of thumb")):
        clauses = [c for c in (compare_rates(table, title, base, paired), compare_rates(table, title, ce, paired))
                   if c]
        if clauses:
            parts.append(f"{what}: " + "; ".join(clauses) + ".")
    if full in rows.index and base in rows.index:
        f, b = rows.loc[full], rows.loc[base]
        bits = []
        for col, name in (("unigram_f1", "unigram F1"), ("bleu4", "BLEU-4"),
                          ("gold_ppl", "perplexity of the gold responses"), ("distinct_2", "distinct-2")):
            if not (math.isnan(float(f[col])) or math.isnan(float(b[col]))):
                bits.append(f"{name} {b[col]:.3g} -> {f[col]:.3g}")
        if bits:
            parts.append("Quality on the adversarial contexts, base -> full method: " + ", ".join(bits) + ".")
        if not (math.isnan(float(f["heldout_accuracy"])) or math.isnan(float(b["heldout_accuracy"]))):
            parts.append(f"On held-out stage-2 groups the full method ranks the gold reply above every negative "
                         f"in {f['heldout_accuracy']:.1%} of groups (base model: {b['heldout_accuracy']:.1%}).")
    if ablations is not None and len(ablations) > 1:
        ref = ablations.iloc[0]
        others = []
        for _, r in ablations.iloc[1:].iterrows():
            overlap = _ci_overlap((ref["accuracy low"], ref["accuracy high"]), (r["accuracy low"], r["accuracy high"]))
            others.append(f"{r['ablation']}: {r['accuracy']:.1%} (margin {r['margin']:.3f})"
                          + (" - within the reference's interval" if overlap else " - outside it"))
        parts.append(f"Ablations (held-out contrastive accuracy after stage 2, {int(ref['groups'])} groups, "
                     f"{int(ref['steps'])} steps each): reference {ref['accuracy']:.1%} (margin "
                     f"{ref['margin']:.3f}); " + "; ".join(others) + ".")
    limits = ["**What they do not show.** Every rate comes from a judge, not from people: a linear head on "
              "sentence embeddings"]
    if judge_report:
        checks = judge_report.get("checks", {}).get("unsafe_prob")
        if checks:
            limits[0] += (f" whose unsafe-reply judge separates failing from acceptable test replies with ROC AUC "
                          f"{checks['auc']:.2f} and flags {checks['flagged_acceptable']:.0%} of acceptable ones")
        shares = (judge_report.get("settings") or {}).get("data", {}).get("shares_rows_with_finetuning")
        if shares:
            limits.append("the judges learned from the same training split as the fine-tuning (the sample's "
                          "held-out split is too small to learn from)")
    limits.append("the stage-2 negatives and the judges' notion of a failing reply are built the same way "
                  "(casual replies to unsafe contexts, rule-of-thumb replies to small talk), so a model can learn "
                  "what the judge rewards without becoming safer in a way people would notice")
    limits.append("with this few contexts the 95% intervals are wide, and one seed says nothing about "
                  "run-to-run variance")
    if cfg.eval.variant_max_steps is not None:
        limits.append(f"{cfg.eval.variant_max_steps} optimisation steps per stage move a model little: systems "
                      "that differ this little from the base model cannot be told apart here, whatever their "
                      "losses would do with a real budget")
    if cfg.data.prosocial_source == "embedded":
        limits.append("the data is the book's embedded sample, written in the upstream schema, not the real "
                      "ProsocialDialog or MIC")
    if cfg.model.name == "tiny":
        limits.append("the smoke preset's model has random weights: these numbers test the pipeline, not the "
                      "method")
    parts.append(limits[0] + "; " + "; ".join(limits[1:]) + ".")
    return "\n\n".join(parts)


# ====================================================================== tables for the chapter
def variants_table(cfg: Config, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """The compared systems: what each trains and where its run lives."""
    rows = []
    for v in resolve_variants(variants if variants is not None else cfg.eval.compare_variants):
        vc = variant_config(cfg, v)
        folder = "-" if v.method == "base" else str(vc.run_dir / ("dpo" if v.method == "dpo" else
                                                                  f"stage{max(v.stages)}"))
        rows.append({"key": v.key, "system": v.label, "training": v.describe(), "budget": v.budget(cfg),
                     "run folder": folder})
    return pd.DataFrame(rows)


def budget_note(cfg: Config) -> str:
    """A sentence on the training budget of the compared systems under ``cfg`` (for the chapter's prose)."""
    full = VARIANTS["npair-both"].budget(cfg)
    if cfg.eval.variant_max_steps is None:
        return (f"Every trained system gets the chapter-03 budget ({full}); the full method *is* the chapter-03 "
                "run, reused.")
    return (f"The chapter-03 budget does not fit this preset's time budget six times over, so every trained system "
            f"- the full method too, retrained in a run of its own - gets the same shortened budget "
            f"(`eval.variant_max_steps` = {cfg.eval.variant_max_steps}: {full}). Differences between the systems "
            "are therefore not differences of training time.")


def training_table(comp: Comparison) -> pd.DataFrame:
    """Per compared system: reused or trained now, training seconds, held-out contrastive accuracy / margin."""
    return pd.DataFrame([{"system": tv.variant.label, "reused": tv.reused, "train seconds": tv.train_seconds,
                          "held-out accuracy": (tv.heldout or {}).get("accuracy", math.nan),
                          "held-out margin": (tv.heldout or {}).get("margin", math.nan)} for tv in comp.trained])


def judge_context(judges) -> dict[str, Any]:
    """What :func:`findings_markdown` needs to know about the judges: their report and settings."""
    return {**judges.report, "settings": judges.settings}


def judge_checks_table(report: dict[str, Any]) -> pd.DataFrame:
    """How well three signals tell failing from acceptable (context, reply) test pairs: the context-aware judge
    (``unsafe``), the reply-alone judge and profanity (``Judges.report["checks"]``)."""
    checks = report.get("checks") or {}
    names = {"unsafe_prob": "context-aware judge (unsafe)", "reply_unsafe_prob": "reply-alone judge",
             "profanity_prob": "profanity (alt-profanity-check)"}
    return pd.DataFrame([{"signal": name, "ROC AUC": checks[k]["auc"],
                          "flags acceptable replies": checks[k]["flagged_acceptable"],
                          "flags failing replies": checks[k]["flagged_failing"]}
                         for k, name in names.items() if k in checks])


def render_side_by_side(examples: pd.DataFrame) -> str:
    """Markdown for :func:`side_by_side`: each context once, then every system's reply with the judge's score."""
    from .audit import _md_quote

    if examples.empty:
        return "_No replies._"
    score = next(c for c in examples.columns if c.endswith("_prob"))
    parts = []
    for context, sub in examples.groupby("context", sort=False):
        lines = [f"**Context**: {_md_quote(context)}", ""]
        for r in sub.itertuples(index=False):
            reply = r.reply if str(r.reply).strip() else "(empty reply)"
            lines.append(f"- *{r.system}* ({score.replace('_prob', '')} {getattr(r, score):.2f}): "
                         f"{_md_quote(reply)}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def headline_numbers(table: pd.DataFrame) -> dict[str, float]:
    """Numbers the chapter's prose glues: each headline rate and CI of the base model and the full method."""
    out: dict[str, float] = {}
    rows = table.set_index("variant")
    for key in ("base", "npair-both"):
        if key not in rows.index:
            continue
        for _, flag, title in RATE_COLUMNS:
            short = f"{key.replace('-', '_')}_{flag}_{'casual' if 'casual' in title else 'adversarial'}"
            out[short] = float(rows.loc[key, title])
            out[f"{short}_low"] = float(rows.loc[key, f"{title} low"])
            out[f"{short}_high"] = float(rows.loc[key, f"{title} high"])
    return out


# ====================================================================== ablations (held-out contrastive scores)
#: Readable names of the loss knobs in ablation labels.
KNOB_NAMES = {"loss.temperature": "τ", "loss.social_alpha": "α", "loss.npair_weight": "λ",
              "loss.num_negatives": "K", "loss.score": "score"}


def ablation_label(overrides: dict[str, Any]) -> str:
    """``{"loss.social_alpha": 0}`` -> ``"α = 0"``."""
    return ", ".join(f"{KNOB_NAMES.get(k, k)} = {v}" for k, v in overrides.items()) or "reference"


def ablation_specs(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """The reference and ``eval.ablations`` (each ``"key=value[;key=value]"``) as ``(label, overrides)``,
    checked against the config schema."""
    specs = [(f"reference (τ = {cfg.loss.tau:g}, α = {cfg.loss.social_alpha:g}, λ = {cfg.loss.npair_weight:g})",
              {})]
    for item in cfg.eval.ablations:
        overrides = parse_set_args([p for p in str(item).split(";") if p.strip()])
        if not overrides:
            raise EvaluationError(f"eval.ablations: empty ablation {item!r}")
        try:
            copy.deepcopy(cfg).update(overrides).validate()
        except ConfigError as e:
            raise EvaluationError(f"eval.ablations: {item!r}: {e}") from e
        specs.append((ablation_label(overrides), overrides))
    return specs


def _slug(overrides: dict[str, Any]) -> str:
    text = "-".join(f"{k.split('.')[-1]}{v}" for k, v in overrides.items())
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in text)


def run_ablations(cfg: Config, *, progress: bool = True) -> pd.DataFrame:
    """Retrain stage 2 from the full method's stage-1 checkpoint once per ablation and compare held-out
    contrastive accuracy (with a bootstrap CI over groups) and margin. The first row is the reference: the full
    method's own stage 2 (the chapter-03 run, or its ``eval.variant_max_steps`` version), reused."""
    from .metrics import rate_with_ci
    from .training import run_stage, run_stages

    full_variant = VARIANTS["npair-both"]
    full = variant_config(cfg, full_variant)
    stage1 = run_stages(full, (1,), progress=progress)[1]
    cache = cfg.run_dir / "evaluation" / "cache"
    rows = []
    for label, overrides in ablation_specs(cfg):
        ac = copy.deepcopy(full)
        if overrides:
            ac.run_name = f"{base_run_name(cfg)}-ablation-{_slug(overrides)}"
            _own_run_settings(ac, cfg)
        ac.update(overrides)
        ac.validate()
        r = run_stage(ac, 2, init_from=stage1.checkpoint_dir, progress=progress)
        if not overrides and uses_main_run(cfg, full_variant):
            after = r.metrics.get("after", {})
        else:
            after = heldout_metrics(cfg, str(r.checkpoint_dir), str(r.metrics.get("fingerprint")),
                                    "npair-both" if not overrides else f"ablation-{_slug(overrides)}", cache,
                                    progress=progress)
        n = int(after.get("groups", 0))
        k = int(round(float(after.get("accuracy", math.nan)) * n)) if n else 0
        acc, lo, hi = rate_with_ci([1] * k + [0] * (n - k), n_boot=cfg.eval.bootstrap_samples,
                                   confidence=cfg.eval.confidence, seed=cfg.eval.seed)
        rows.append({"ablation": label, "tau": ac.loss.tau, "alpha": ac.loss.social_alpha,
                     "lambda": ac.loss.npair_weight, "steps": int(r.metrics.get("train", {}).get("global_step", 0)),
                     "groups": n, "accuracy": acc, "accuracy low": lo, "accuracy high": hi,
                     "margin": float(after.get("margin", math.nan)), "ce": float(after.get("ce", math.nan)),
                     "train_seconds": _stage_seconds(r.metrics), "reused": r.reused,
                     "checkpoint": str(r.checkpoint_dir)})
    df = pd.DataFrame(rows)
    out = cfg.run_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ablations.csv", index=False)
    return df


# ====================================================================== command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=None, metavar="KEY",
                        help=f"systems to compare (default: eval.compare_variants): {', '.join(VARIANTS)}")
    parser.add_argument("--no-ablations", action="store_true", help="skip the loss ablations (eval.ablations)")
    parser.add_argument("--examples", type=int, default=0, metavar="N",
                        help="also print every system's replies to the N adversarial contexts where they differ most")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from .data.errors import DataFormatError
    from .groups import GroupBuildError
    from .judges import load_judges
    from .models import ModelSpecError
    from .training import TrainingSetupError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    try:
        judges = load_judges(cfg)
        comp = compare(cfg, args.variants, judges=judges, progress=progress)
        ablations = None if args.no_ablations or not cfg.eval.ablations else run_ablations(cfg, progress=progress)
    except (EvaluationError, TrainingSetupError, GroupBuildError, DataFormatError, ModelSpecError,
            FileNotFoundError) as e:
        print(f"prosocial evaluate: error: {e}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 60):
        print(f"\nEvaluation ({cfg.preset} preset): rates with {cfg.eval.confidence:.0%} bootstrap CIs\n")
        print(comp.display_table().to_string())
        if ablations is not None:
            print("\nAblations: held-out contrastive accuracy after stage 2\n")
            print(ablations[["ablation", "steps", "groups", "accuracy", "accuracy low", "accuracy high", "margin",
                             "ce", "reused"]].to_string(index=False))
        if args.examples:
            print("\nSide by side:\n")
            print(side_by_side(comp.replies, "adversarial", args.examples).to_string(index=False))
    paired = paired_differences(comp.replies, cfg)
    print(f"\n{findings_markdown(comp.table, ablations, cfg, judge_context(judges), paired)}")
    print(f"\nsaved in {comp.out_dir} (table.csv, rates.csv, quality.csv, replies.jsonl); "
          f"took {comp.seconds.get('total', 0):.0f} s")
    return 0
