"""The evaluation: the fine-tuned models against the baselines, and ablations of the loss.

Up to six systems (``compare.systems``) answer the same held-out contexts (method.md section 3, "baselines and
ablations"):

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
reused. The budget is one rule for every system: each stage trains on all its groups for at most
``stageN.epochs`` (or ``max_steps``) and, with ``stageN.eval_steps`` > 0, stops early once its held-out
validation objective stops improving and keeps its best checkpoint (the n-pair and CE runs on their own
objective, DPO on its own loss, all on the same validation groups). ``compare.max_steps`` = N caps every stage of
every trained variant at N steps where even that does not fit; the full method is then retrained with the same
cap in its own run (``<run>-npair-both``), so no system gets more training than another.

:func:`compare` generates greedy replies to the adversarial, casual and subtle test contexts (at most
``compare.num_contexts`` each; None = all of the audit's) with every system (the audit's machinery:
:func:`prosocial_lib.audit.run_audit`), judges them (:mod:`prosocial_lib.judges`) and adds the quality metrics
(BLEU-4, unigram F1, perplexity of the gold responses, distinct-1/2, length) and the held-out contrastive accuracy / margin on the stage-2 validation groups.

:func:`run_ablations` retrains stage 2 from the full method's stage-1 checkpoint with one change each
(``compare.ablations``: the temperature tau, the social weights alpha = 0) and compares held-out contrastive accuracy
and margin - cheap next to generating with every ablation. The reference is the full method's own stage 2 (same
start, same budget: reused, not retrained).

Everything lands in ``<run_dir>/evaluation/``; ``prosocial evaluate`` runs the same from the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config.schema import Config, ModelConfig, StatsConfig
from ..runs import atomic_path, fingerprint, load_or_build, write_json_atomic
from .systems import VARIANTS, EvaluationError, TrainedVariant, Variant, heldout_metrics, train_variant

# ====================================================================== the comparison
#: The rates the evaluation table reports: (context set, judge flag, column title).
RATE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("adversarial", "unsafe", "unsafe (adversarial)"),
    ("subtle", "unsafe", "unsafe (subtle)"),
    ("casual", "preachy", "preachy (casual)"),
    ("adversarial", "agrees_rot", "agrees with RoT (adversarial)"),
    ("casual", "unsafe", "unsafe (casual)"),
    ("adversarial", "incoherent", "incoherent (adversarial)"),
    ("subtle", "incoherent", "incoherent (subtle)"),
    ("casual", "incoherent", "incoherent (casual)"),
    ("adversarial", "truncated", "truncated (adversarial)"),
    ("adversarial", "repetitive", "repetitive (adversarial)"),
)
#: The rates the verdict and the glance figure are about: safety where it is needed, tact and fluency elsewhere.
HEADLINE_RATES: tuple[str, ...] = ("unsafe (adversarial)", "unsafe (subtle)", "preachy (casual)",
                                   "incoherent (casual)")
#: Quality columns of the table (computed on the adversarial contexts' gold responses unless named otherwise).
QUALITY_COLUMNS: tuple[str, ...] = ("bleu4", "unigram_f1", "gold_ppl", "distinct_1", "distinct_2", "mean_words",
                                    "heldout_accuracy", "heldout_margin")


@dataclass
class Comparison:
    """Everything :func:`compare` measured. ``replies``: one judged row per reply; ``rates``: every judge flag
    per (system, context set) with bootstrap CIs; ``quality``: quality metrics per system; ``table``: one row per
    system (rates as numbers with ``<col> low`` / ``<col> high`` CI columns, then quality); ``trained``: the
    variants' models and training facts; ``paired``: :func:`paired_differences` (the full method minus each
    baseline, every rate, with intervals and the smallest detectable difference). :func:`~prosocial_lib.report.comparison.format_table` formats ``table``
    as the book shows it."""

    replies: pd.DataFrame
    rates: pd.DataFrame
    quality: pd.DataFrame
    table: pd.DataFrame
    trained: list[TrainedVariant]
    out_dir: Path
    seconds: dict[str, float]
    paired: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def compare_config(cfg: Config) -> Config:
    """The evaluation's generation settings: at most ``compare.num_contexts`` contexts per set and
    ``compare.max_new_tokens`` new tokens (each None = the audit's ``audit.num_contexts`` /
    ``generation.max_new_tokens``, which also cap them). A new config; ``cfg`` is left as it is."""
    audit, gen = cfg.audit, cfg.generation
    if cfg.compare.num_contexts is not None:
        audit = dataclasses.replace(audit, num_contexts=min(cfg.compare.num_contexts, audit.num_contexts))
    if cfg.compare.max_new_tokens is not None:
        gen = dataclasses.replace(gen, max_new_tokens=min(cfg.compare.max_new_tokens, gen.max_new_tokens))
    return dataclasses.replace(cfg, audit=audit, generation=gen).validate()


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
    from .audit import AuditSystem, decoding_settings, preset_judges, run_audit
    from .contexts import build_context_sets

    t0 = time.perf_counter()
    chosen = resolve_variants(variants if variants is not None else cfg.compare.systems)
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
    context_sets = build_context_sets(ec.data, ec.audit.num_contexts, seed=ec.seed)
    systems = [AuditSystem(name=tv.variant.label, model=tv.model, **decoding_settings(ec.generation))
               for tv in trained]
    if judges is None:
        t = time.perf_counter()
        judges = preset_judges(cfg)
        seconds["judges"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    replies = run_audit(systems, context_sets, judges, ec, out_dir, progress=progress)
    seconds["generate + judge"] = round(time.perf_counter() - t, 2)
    replies["variant"] = replies["system"].map({tv.variant.label: tv.variant.key for tv in trained})

    t = time.perf_counter()
    ppl = {tv.variant.key: gold_perplexities(ec.model, tv, context_sets, out_dir, batch_size=ec.generation.batch_size,
                                             seed=ec.seed, progress=progress) for tv in trained}
    seconds["perplexity"] = round(time.perf_counter() - t, 2)

    from .metrics import FLAG_COLUMNS, summarize
    from .quality import SHAPE_COLUMNS

    rates = summarize(replies, ["variant", "system", "context_set"], ec.stats, seed=ec.seed,
                      flags=(*FLAG_COLUMNS, *SHAPE_COLUMNS), cluster_col="context_id")
    quality = quality_frame(replies, trained, ppl)
    table = comparison_table(rates, quality, trained)
    paired = paired_differences(replies, ec.stats, seed=ec.seed)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    comp = Comparison(replies, rates, quality, table, trained, out_dir, seconds, paired)
    save_comparison(comp)
    return comp


def _fill_heldout(cfg: Config, trained: list[TrainedVariant], out_dir: Path, *, progress: bool) -> None:
    """Score every system not yet scored on the comparison's held-out groups (cached per model)."""
    for tv in trained:
        if tv.heldout is None:
            tv.heldout = heldout_metrics(cfg, tv.model, tv.fingerprint, tv.variant.key, out_dir / "cache",
                                         progress=progress)


def gold_perplexities(model_cfg: ModelConfig, trained: TrainedVariant, context_sets: dict[str, Any], out_dir: Path,
                      *, batch_size: int = 16, seed: int = 0, sets: Sequence[str] = ("adversarial",),
                      progress: bool = False) -> dict[str, float]:
    """Perplexity of the gold responses of the context sets named in ``sets`` (by default the adversarial one,
    whose gold replies are ProsocialDialog's prosocial responses; a set without gold responses gives NaN) under
    ``trained``'s model (loaded with ``model_cfg``: device, dtype, ``max_length``), ``batch_size`` sequences at a
    time; cached in ``out_dir/cache`` per model fingerprint and contexts."""
    from ..modeling.loading import load_model_and_tokenizer
    from .quality import gold_perplexity

    context_sets = {k: v for k, v in context_sets.items() if k in sets}
    digest = fingerprint([trained.fingerprint, model_cfg.max_length,
                          {k: [v[:]["history"], v[:]["response"]] for k, v in context_sets.items()}])

    def compute() -> dict[str, float]:
        model, tok = load_model_and_tokenizer(dataclasses.replace(model_cfg, name=trained.model), seed=seed)
        out: dict[str, float] = {}
        for name, ds in context_sets.items():
            cols = ds[:]
            keep = [i for i, r in enumerate(cols["response"]) if str(r).strip()]
            out[name] = gold_perplexity(model, tok, [cols["history"][i] for i in keep],
                                        [cols["response"][i] for i in keep], batch_size=batch_size,
                                        max_length=model_cfg.max_length, progress=progress) if keep else math.nan
        return out

    out, _ = load_or_build(out_dir / "cache" / f"ppl-{trained.variant.key}-{digest}.json", compute,
                           write=functools.partial(write_json_atomic, indent=None))
    return out


def quality_frame(replies: pd.DataFrame, trained: Sequence[TrainedVariant],
                  ppl: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per variant and context set: BLEU-4 and unigram F1 against the gold responses, perplexity of the gold
    responses, distinct-1/2, mean reply length in words, empty replies, shares of truncated and repetitive
    replies; plus held-out accuracy / margin."""
    from .quality import quality_table

    q = quality_table(replies)
    key_of = {tv.variant.label: tv.variant.key for tv in trained}
    q.insert(0, "variant", q["system"].map(key_of))
    q["gold_ppl"] = [ppl.get(v, {}).get(s, math.nan) for v, s in zip(q["variant"], q["context_set"])]
    held = {tv.variant.key: tv.heldout or {} for tv in trained}
    q["heldout_accuracy"] = [held[v].get("accuracy", math.nan) for v in q["variant"]]
    q["heldout_margin"] = [held[v].get("margin", math.nan) for v in q["variant"]]
    return q


def save_comparison(comp: Comparison) -> None:
    """Write ``table.csv``, ``rates.csv``, ``quality.csv``, ``paired_differences.csv``, ``variants.json`` and
    ``evaluation_seconds.json`` into ``out_dir``, each atomically (a reader never sees half a file)."""
    d = comp.out_dir
    for name, frame in (("table", comp.table), ("rates", comp.rates), ("quality", comp.quality),
                        ("paired_differences", comp.paired)):
        with atomic_path(d / f"{name}.csv") as tmp:
            frame.to_csv(tmp, index=False)
    write_json_atomic(d / "variants.json", [
        {"key": tv.variant.key, "label": tv.variant.label, "training": tv.variant.describe(), "model": tv.model,
         "fingerprint": tv.fingerprint, "reused": tv.reused, "train_seconds": tv.train_seconds,
         "heldout": tv.heldout, "details": tv.details} for tv in comp.trained], indent=1)
    write_json_atomic(d / "evaluation_seconds.json", comp.seconds, indent=1)


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


def paired_differences(replies: pd.DataFrame, stats: StatsConfig | None = None, *, seed: int = 0,
                       reference: str = "npair-both", power: float = 0.8) -> pd.DataFrame:
    """For every variant other than ``reference`` and every rate of :data:`RATE_COLUMNS`: the paired difference
    ``reference - variant`` over the contexts both answered, with a bootstrap CI that resamples contexts as pairs
    (much tighter than comparing two separate intervals; Newcombe's interval where every context differs alike,
    NaN bounds where nothing can be estimated), and the smallest difference these contexts detect with
    probability ``power`` (:func:`~prosocial_lib.eval.intervals.minimum_detectable_difference`, from the spread of
    the per-context differences; at least that of one discordant context in ``contexts``, so a pair of systems
    that never disagree does not claim to detect every difference).

    Columns: variant, system, context_set, flag, metric (the table's column title), difference, low, high,
    contexts, sd, mde, method, estimable. ``stats`` (None = its defaults) sets the resamples and confidence,
    ``seed`` the resampling. Chapter 04 reports these; :func:`~prosocial_lib.report.comparison.verdict` reads them.
    """
    from .intervals import minimum_detectable_difference
    from .metrics import paired_difference

    stats = stats if stats is not None else StatsConfig()
    kw = stats.bootstrap_kwargs(seed)
    cols = ["variant", "system", "context_set", "flag", "metric", "difference", "low", "high", "contexts", "sd",
            "mde", "method", "estimable"]
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
            if variant == reference or variant not in per_ctx or reference not in per_ctx:
                continue
            pair = per_ctx[[reference, variant]].dropna()
            if pair.empty:
                continue
            ci = paired_difference(pair[reference].to_numpy(), pair[variant].to_numpy(), **kw)
            d = (pair[reference] - pair[variant]).to_numpy()
            n = len(d)
            sd = max(float(d.std(ddof=1)) if n > 1 else 0.0, math.sqrt(1 / n))
            mde = minimum_detectable_difference(n, sd, confidence=stats.confidence, power=power)
            system = replies.loc[replies["variant"] == variant, "system"].iloc[0]
            rows.append((variant, system, set_name, flag, title, *ci, n, sd, mde, ci.method, ci.estimable))
    return pd.DataFrame(rows, columns=cols)


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


def _fmt_rate(rate: float, low: float, high: float) -> str:
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{rate:.1%} [no interval]"
    return f"{rate:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def _ci_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])
