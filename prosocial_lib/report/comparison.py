"""What the evaluation chapter shows: tables, findings and generated prose."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..config.schema import Config
from ..eval.comparison import RATE_COLUMNS, Comparison, _ci_overlap, _fmt_rate, resolve_variants
from ..eval.systems import VARIANTS, variant_config
from ..runs import shown_path
from .tables import interval


#: Judge flags and reply shapes that measure fluency rather than safety or tact.
FLUENCY_FLAGS: tuple[str, ...] = ("incoherent", "truncated", "repetitive")


def format_table(table: pd.DataFrame, part: str | None = None) -> pd.DataFrame:
    """Rates as ``"12.5% [5.0, 25.0]"`` (95% CI in percentage points), quality rounded, indexed by system.

    ``part``: None for every column, ``"rates"`` for the judges' rates only, split further into ``"safety"``
    (unsafe, preachy, agreeing with the RoT) and ``"fluency"`` (incoherent, truncated, repetitive), or
    ``"quality"`` for the reply-quality columns only (tables of at most seven columns read better than one of
    twenty; held-out accuracy and margin are in the training table). Headers carry their scale: BLEU-4 is
    sacreBLEU's 0-100, F1 and distinct-n are 0-1."""
    if part not in (None, "rates", "safety", "fluency", "quality"):
        raise ValueError(f"format_table: part must be rates, safety, fluency or quality, got {part!r}")
    out = pd.DataFrame(index=pd.Index(table["system"], name="system"))
    for _, flag, title in RATE_COLUMNS if part != "quality" else ():
        fluency = flag in FLUENCY_FLAGS
        if (part == "safety" and fluency) or (part == "fluency" and not fluency):
            continue
        if title in table:
            out[title] = [_fmt_rate(r, lo, hi) for r, lo, hi in
                          zip(table[title], table[f"{title} low"], table[f"{title} high"])]
    names = {"bleu4": "BLEU-4 (0-100)", "unigram_f1": "F1 (0-1)", "gold_ppl": "PPL (gold)",
             "distinct_1": "distinct-1", "distinct_2": "distinct-2", "mean_words": "words",
             "heldout_accuracy": "held-out acc.", "heldout_margin": "held-out margin"}
    if part in ("rates", "safety", "fluency"):
        names = {}
    elif part == "quality":
        names = {k: v for k, v in names.items() if not k.startswith("heldout")}
    digits = {"bleu4": 2, "unigram_f1": 3, "gold_ppl": 1, "distinct_1": 3, "distinct_2": 3, "mean_words": 1,
              "heldout_accuracy": 3, "heldout_margin": 3}
    for col, name in names.items():
        if col in table:
            out[name] = table[col].round(digits[col]).to_numpy()
    return out


def findings_markdown(table: pd.DataFrame, ablations: pd.DataFrame | None, cfg: Config,
                      judge_report: dict[str, Any] | None = None, paired: pd.DataFrame | None = None) -> str:
    """The chapter's "what the numbers do and do not show" paragraphs, written from the results (so they stay
    true under every preset): the headline rates of the full method against the base model and the CE
    baseline, the quality cost, the ablations, and the limits that hold whatever the numbers are."""
    rows = table.set_index("variant")
    parts = [_findings_heading(rows, cfg), *_rate_findings(table, rows, paired), *_quality_findings(rows)]
    if ablations is not None and len(ablations) > 1:
        parts.append(_ablation_findings(ablations))
    limits = _limits(cfg, judge_report)
    parts.append(limits[0] + "; " + "; ".join(limits[1:]) + ".")
    return "\n\n".join(parts)


def _findings_heading(rows: pd.DataFrame, cfg: Config) -> str:
    n_adv = int(rows.get("n adversarial", pd.Series([0])).max() or 0)
    n_cas = int(rows.get("n casual", pd.Series([0])).max() or 0)
    n_sub = int(rows.get("n subtle", pd.Series([0])).max() or 0)
    budget = ("" if cfg.compare.max_steps is None else
              f", every trained system {cfg.compare.max_steps} optimisation steps per stage")
    return (f"**What the numbers show ({cfg.preset} preset, {n_adv} adversarial, {n_sub} subtle and {n_cas} "
            f"casual contexts, "
            f"greedy replies, one seed{budget}).**")


def _rate_findings(table: pd.DataFrame, rows: pd.DataFrame, paired: pd.DataFrame | None) -> list[str]:
    """The headline rates of the full method against the base model and the CE baseline."""
    ce = "ce-both" if "ce-both" in rows.index else "ce-stage2"
    parts = []
    for title, what in (("unsafe (adversarial)", "Unsafe replies to adversarial contexts"),
                        ("preachy (casual)", "Preachy replies to casual contexts"),
                        ("agrees with RoT (adversarial)", "Replies that agree with the rule of thumb")):
        clauses = [c for c in (compare_rates(table, title, "base", paired), compare_rates(table, title, ce, paired))
                   if c]
        if clauses:
            parts.append(f"{what}: " + "; ".join(clauses) + ".")
    return parts


def _quality_findings(rows: pd.DataFrame) -> list[str]:
    """Quality and held-out accuracy, base model -> full method (nothing when either is missing)."""
    full, base = "npair-both", "base"
    if full not in rows.index or base not in rows.index:
        return []
    f, b = rows.loc[full], rows.loc[base]
    parts, bits = [], []
    for col, name in (("unigram_f1", "unigram F1 (0-1)"), ("bleu4", "BLEU-4 (sacreBLEU, 0-100)"),
                      ("gold_ppl", "perplexity of the gold responses"), ("distinct_2", "distinct-2")):
        if not (math.isnan(float(f[col])) or math.isnan(float(b[col]))):
            bits.append(f"{name} {b[col]:.3g} -> {f[col]:.3g}")
    if bits:
        parts.append("Quality on the adversarial contexts, base -> full method: " + ", ".join(bits) + ".")
    if not (math.isnan(float(f["heldout_accuracy"])) or math.isnan(float(b["heldout_accuracy"]))):
        parts.append(f"On held-out stage-2 groups the full method ranks the gold reply above every negative "
                     f"in {f['heldout_accuracy']:.1%} of groups (base model: {b['heldout_accuracy']:.1%}).")
    return parts


def _ablation_findings(ablations: pd.DataFrame) -> str:
    """Each ablation's held-out accuracy against the reference (the first row) and whether it is within its CI."""
    ref = ablations.iloc[0]
    others = []
    for _, r in ablations.iloc[1:].iterrows():
        overlap = _ci_overlap((ref["accuracy low"], ref["accuracy high"]), (r["accuracy low"], r["accuracy high"]))
        others.append(f"{r['ablation']}: {r['accuracy']:.1%} (margin {r['margin']:.3f})"
                      + (" - within the reference's interval" if overlap else " - outside it"))
    return (f"Ablations (held-out contrastive accuracy after stage 2, {int(ref['groups'])} groups, "
            f"{int(ref['steps'])} steps each): reference {ref['accuracy']:.1%} (margin "
            f"{ref['margin']:.3f}); " + "; ".join(others) + ".")


def _limits(cfg: Config, judge_report: dict[str, Any] | None) -> list[str]:
    """The limits that hold whatever the numbers are: the first clause, then the others."""
    from .judges import trust_sentence

    limits = ["**What they do not show.** Every rate comes from a judge, not from people. "
              + (trust_sentence(judge_report) if judge_report else "The judges were not validated")]
    if judge_report:
        shares = (judge_report.get("settings") or {}).get("data", {}).get("shares_rows_with_finetuning")
        if shares:
            limits.append("the judges learned from the same training split as the fine-tuning (the sample's "
                          "held-out split is too small to learn from)")
    limits.append("the judges' training pairs and the stage-2 negatives come from the same data (gold "
                  "responses, casual replies, rules of thumb), so a model can learn what the judge rewards "
                  "without becoming safer in a way people would notice; the check set, labelled by reading, is "
                  "the guard against that")
    limits.append("with this few contexts the 95% intervals are wide, and one seed says nothing about "
                  "run-to-run variance")
    if cfg.compare.max_steps is not None:
        limits.append(f"{cfg.compare.max_steps} optimisation steps per stage move a model little: systems "
                      "that differ this little from the base model cannot be told apart here, whatever their "
                      "losses would do with a real budget")
    if cfg.data.prosocial_source == "embedded":
        limits.append("the data is the book's embedded sample, written in the upstream schema, not the real "
                      "ProsocialDialog or MIC")
    if cfg.model.name == "tiny":
        limits.append("the smoke preset's model has random weights: these numbers test the pipeline, not the "
                      "method")
    return limits


# ====================================================================== tables for the chapter
def variants_table(cfg: Config, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """The compared systems: what each trains and where its run lives."""
    rows = []
    for v in resolve_variants(variants if variants is not None else cfg.compare.systems):
        vc = variant_config(cfg, v)
        folder = "-" if v.method == "base" else shown_path(
            vc.run_dir / ("dpo" if v.method == "dpo" else f"stage{max(v.stages)}"), vc.run_dir.parent)
        rows.append({"key": v.key, "system": v.label, "training": v.describe(), "budget": v.budget(cfg),
                     "run folder": folder})
    return pd.DataFrame(rows)


def budget_note(cfg: Config) -> str:
    """A sentence on the training budget of the compared systems under ``cfg`` (for the chapter's prose)."""
    full = VARIANTS["npair-both"].budget(cfg)
    if cfg.compare.max_steps is None:
        return (f"Every trained system gets the chapter-03 budget ({full}) under the same rule; the full method "
                "*is* the chapter-03 run, reused.")
    return (f"The chapter-03 budget does not fit this preset's time budget six times over, so every trained system "
            f"- the full method too, retrained in a run of its own - gets the same shortened budget "
            f"(`compare.max_steps` = {cfg.compare.max_steps}: {full}). Differences between the systems "
            "are therefore not differences of training time.")


def training_table(comp: Comparison) -> pd.DataFrame:
    """Per compared system: reused or trained now, training seconds, held-out contrastive accuracy / margin."""
    return pd.DataFrame([{"system": tv.variant.label, "reused": tv.reused, "train seconds": tv.train_seconds,
                          "held-out accuracy": (tv.heldout or {}).get("accuracy", math.nan),
                          "held-out margin": (tv.heldout or {}).get("margin", math.nan)} for tv in comp.trained])


def judge_context(judges) -> dict[str, Any]:
    """What :func:`findings_markdown` needs to know about the judges: their report and settings."""
    return {**judges.report, "settings": judges.settings}


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
        for set_name, flag, title in RATE_COLUMNS:
            if title not in rows:
                continue
            short = f"{key.replace('-', '_')}_{flag}_{set_name}"
            out[short] = float(rows.loc[key, title])
            out[f"{short}_low"] = float(rows.loc[key, f"{title} low"])
            out[f"{short}_high"] = float(rows.loc[key, f"{title} high"])
    return out


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


# ====================================================================== the verdict
#: How the verdict names each headline rate.
RATE_PHRASES: dict[str, str] = {
    "unsafe (adversarial)": "the unsafe rate on adversarial contexts",
    "unsafe (subtle)": "the unsafe rate on subtle contexts",
    "preachy (casual)": "the preachy rate on casual chat",
    "incoherent (casual)": "the incoherent rate on casual chat",
    "incoherent (adversarial)": "the incoherent rate on adversarial contexts",
    "agrees with RoT (adversarial)": "the share of replies agreeing with the rule of thumb",
}


def _points(x: float) -> str:
    return f"{100 * abs(x):.1f}"


def verdict(paired: pd.DataFrame, metrics: Sequence[str] | None = None, reference_label: str = "the full method",
            contrastive_baseline: str = "ce-both") -> str:
    """The one-paragraph verdict of the comparison, written from the paired differences
    (:func:`~prosocial_lib.eval.comparison.paired_differences`: reference minus each baseline), so it is true
    under every preset: every difference whose interval excludes zero, named with its size and interval; for each
    headline rate without one, "no detectable change" with the smallest difference those contexts could detect
    (80% power); and a sentence on the contrastive term itself (the full method against ``contrastive_baseline``,
    CE-only with the same two stages). Rates are in percentage points.

    Args:
        paired: the paired-difference table (columns variant, system, metric, difference, low, high, mde,
            estimable).
        metrics: the rates to report (default :data:`~prosocial_lib.eval.comparison.HEADLINE_RATES`).
        reference_label: how the sentence names the reference system.
        contrastive_baseline: the variant whose comparison isolates the contrastive term.

    Returns:
        Markdown (one paragraph); a sentence saying there is nothing to compare when ``paired`` is empty.
    """
    from ..eval.comparison import HEADLINE_RATES

    metrics = list(metrics) if metrics is not None else list(HEADLINE_RATES)
    sub = paired[paired["metric"].isin(metrics)] if len(paired) else paired
    if sub is None or sub.empty:
        return "There is nothing to compare: the comparison needs the full method and at least one baseline."
    clear = sub[(sub["low"] > 0) | (sub["high"] < 0)]
    sentences = []
    for title in metrics:
        hits = clear[clear["metric"] == title]
        if hits.empty:
            continue
        clauses = [f"{'lowers' if r.difference < 0 else 'raises'} it by {_points(r.difference)} points "
                   f"[{100 * r.low:+.1f}, {100 * r.high:+.1f}] against {r.system}" for r in hits.itertuples()]
        sentences.append(f"On {RATE_PHRASES.get(title, title)}, {reference_label} " + "; ".join(clauses) + ".")
    quiet = [t for t in metrics if t in set(sub["metric"]) and clear[clear["metric"] == t].empty]
    if quiet:
        mde = sub[sub["metric"].isin(quiet)]["mde"].dropna()
        low, high = (f"{100 * x:.0f}" for x in (mde.min(), mde.max())) if len(mde) else ("", "")
        size = (f" (these contexts detect differences of about {low if low == high else f'{low}-{high}'} "
                "points with 80% power)" if len(mde) else "")
        names = [RATE_PHRASES.get(t, t) for t in quiet]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        sentences.append(f"No detectable change in {listed} against any baseline{size}.")
    sentences.append(_contrastive_sentence(sub, clear, contrastive_baseline, reference_label))
    return " ".join(s for s in sentences if s)


def _contrastive_sentence(sub: pd.DataFrame, clear: pd.DataFrame, baseline: str, reference_label: str) -> str:
    """Does the contrastive term itself help? The full method against CE-only with the same stages."""
    own = sub[sub["variant"] == baseline]
    if own.empty:
        return ""
    name = own["system"].iloc[0]
    hits = clear[clear["variant"] == baseline]
    if hits.empty:
        return (f"The contrastive term itself ({reference_label} against {name}, the same stages without it) "
                "makes no detectable difference on these rates.")
    better = hits[hits["difference"] < 0]
    worse = hits[hits["difference"] > 0]
    parts = []
    if len(better):
        parts.append("lowers " + ", ".join(RATE_PHRASES.get(t, t) for t in better["metric"]))
    if len(worse):
        parts.append("raises " + ", ".join(RATE_PHRASES.get(t, t) for t in worse["metric"]))
    return (f"The contrastive term itself ({reference_label} against {name}) " + " and ".join(parts)
            + " on these contexts.")


def paired_table(paired: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The paired differences as the chapter shows them (five columns): rate, baseline, full method minus
    baseline with its 95% interval (:func:`~prosocial_lib.report.tables.interval`, bounds in percentage points),
    the smallest difference detectable with 80% power, and whether the interval excludes zero. ``metrics``: the rates to show (default
    :data:`~prosocial_lib.eval.comparison.HEADLINE_RATES`; the CSV keeps them all)."""
    from ..eval.comparison import HEADLINE_RATES

    metrics = list(metrics) if metrics is not None else list(HEADLINE_RATES)
    sub = paired[paired["metric"].isin(metrics)].copy()
    sub["_order"] = sub["metric"].map({m: i for i, m in enumerate(metrics)})
    sub = sub.sort_values("_order", kind="stable")
    return pd.DataFrame({
        "rate": sub["metric"].to_numpy(),
        "baseline": sub["system"].to_numpy(),
        "full - baseline [95% CI]": [interval(r.difference, r.low, r.high, signed=True)
                                     for r in sub.itertuples()],
        "detectable (points)": [f"{100 * m:.1f}" for m in sub["mde"]],
        "excludes 0": ["yes" if (r.low > 0 or r.high < 0) else "no" for r in sub.itertuples()],
    })


# ====================================================================== the sweep
def sweep_markdown(loaded: tuple[pd.DataFrame, dict[str, Any]] | None, cfg: Config) -> str:
    """What the chapter says about the stage-2 sweep (:func:`~prosocial_lib.eval.sweep.load_sweep`'s result for
    ``cfg.preset``, or None): where, when and with which command it ran, what it chose on the validation split,
    and whether this run's config uses that choice; without a saved sweep, the command that makes one."""
    knobs = (f"λ = {cfg.loss.npair_weight:g}, τ = {cfg.loss.effective_tau:g}, stage-2 learning rate "
             f"{cfg.stage2.learning_rate:g}")
    if loaded is None:
        return (f"No sweep is saved for the {cfg.preset} preset, so this run uses the reconstructed defaults "
                f"({knobs}). `prosocial sweep --preset {cfg.preset} --out book/sweeps/{cfg.preset}.json` makes "
                "one; this section then shows it.")
    table, record = loaded
    m = record.get("machine", {})
    where = ", ".join(str(x) for x in (m.get("cpu"), f"{m.get('cpu_cores')} cores" if m.get("cpu_cores") else None,
                                       m.get("gpu")) if x)
    chosen = table[table["chosen"]].iloc[0] if table["chosen"].any() else None
    text = (f"The sweep below ran on {where or 'an unrecorded machine'} on {m.get('date', 'an unrecorded date')} "
            f"with `{record.get('command', '?')}`: {len(table)} grid points, each stage 2 retrained from the "
            "stage-1 checkpoint under the same rule and scored on the held-out validation groups (never the "
            "test contexts).")
    if chosen is not None:
        same = (math.isclose(float(chosen["lambda"]), cfg.loss.npair_weight)
                and math.isclose(float(chosen["tau"]), cfg.loss.effective_tau)
                and math.isclose(float(chosen.get("learning_rate", cfg.stage2.learning_rate)),
                                 cfg.stage2.learning_rate))
        text += (f" It chose **{chosen['point']}** (held-out accuracy {chosen['accuracy']:.1%}); "
                 + ("this run uses it." if same else f"this run uses {knobs}, not the chosen point."))
    return text


def sweep_table(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep as the chapter shows it: point, steps, held-out accuracy with its 95% CI, margin, CE, chosen."""
    return pd.DataFrame({
        "grid point": table["point"],
        "steps": table["steps"].astype(int),
        "held-out accuracy [95% CI]": [interval(a, lo, hi) for a, lo, hi in
                                       zip(table["accuracy"], table["accuracy low"], table["accuracy high"])],
        "margin": [f"{m:.3f}" for m in table["margin"]],
        "CE": [f"{c:.3f}" for c in table["ce"]],
        "chosen": ["yes" if c else "" for c in table["chosen"]],
    })
