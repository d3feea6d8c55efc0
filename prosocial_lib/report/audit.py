"""What the audit chapter shows: tables, examples and generated prose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..config.schema import Config, StatsConfig
from ..eval.audit import AuditSystem, short_model_name
from .tables import interval, md_quote, metric_name, reply_cards
from ..eval.metrics import expected_max, prob_at_least_one

#: The headline rate of each context set: what counts as a failure there.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("adversarial", "unsafe"), ("subtle", "unsafe"), ("adversarial", "violates_rot"), ("casual", "preachy"))


def headline_table(summary: pd.DataFrame, metrics: Sequence[tuple[str, str]] = HEADLINE_METRICS, *,
                   readable: bool = False) -> pd.DataFrame:
    """One row per system, one column per (context set, metric) failure rate, as ``"12.5% [5.0, 25.0]"`` (or
    ``"60.0% [no interval: 1 context]"`` where the interval cannot be estimated). Columns are named
    ``"<metric> on <set>"``, or with ``readable`` for the page ``"violates RoT (adversarial), 95% CI"``."""
    out = {}
    for set_name, metric in metrics:
        sub = summary[(summary.context_set == set_name) & (summary.metric == metric)]
        out[f"{metric_name(metric, set_name)}, 95% CI" if readable else f"{metric} on {set_name}"] = {
            r.system: format_rate(r.rate, r.ci_low, r.ci_high, getattr(r, "n_clusters", None))
            for r in sub.itertuples()}
    systems = list(dict.fromkeys(summary.system))
    return pd.DataFrame(out).reindex(systems).rename_axis("system")




def format_rate(rate: float, low: float, high: float, n_clusters: int | None = None) -> str:
    """``"12.5% [5.0, 25.0]"``; NaN bounds (no interval could be estimated) read ``"60.0% [no interval: 1 context]"``.

    Args:
        rate, low, high: a share and its interval, in [0, 1].
        n_clusters: the independent units behind it (named in the no-interval text), or None.

    Returns:
        The text for a table cell; ``"n/a"`` for a NaN rate.
    """
    if pd.isna(rate):
        return "n/a"
    if pd.isna(low) or pd.isna(high):
        units = f": {int(n_clusters)} context{'s' if int(n_clusters) != 1 else ''}" if n_clusters is not None else ""
        return f"{rate:.1%} [no interval{units}]"
    return f"{rate:.1%} [{100 * low:.1f}, {100 * high:.1f}]"


def k_sample_table(df: pd.DataFrame, stats: StatsConfig | None = None, *, seed: int = 0, score: str = "unsafe_prob",
                   threshold: float = 0.5) -> pd.DataFrame:
    """RealToxicityPrompts-style metrics for systems with several samples per context: the expected maximum of
    ``score`` over the k samples and the probability that at least one sample is flagged (score >= ``threshold``,
    usually ``judges.threshold``), each with a bootstrap CI over contexts (``stats``: None = its defaults; ``seed``:
    ``Config.seed``). ``*_method`` says how each interval was computed and ``*_estimable`` is False where it
    could not be (one context: NaN bounds). Chapter 01 shows it."""
    kw = (stats if stats is not None else StatsConfig()).bootstrap_kwargs(seed)
    rows = []
    for (system, set_name), sub in df.groupby(["system", "context_set"], sort=False):
        k = int(sub["sample"].max()) + 1
        if k < 2:
            continue
        m = sub.pivot_table(index="context_id", columns="sample", values=score, aggfunc="first")
        if m.isna().any().any():
            raise ValueError(f"{system} / {set_name}: not every context has {k} samples")
        em = expected_max(m.to_numpy(), **kw)
        p1 = prob_at_least_one(m.to_numpy(), threshold, **kw)
        rows.append({"system": system, "context_set": set_name, "k": k, "contexts": len(m),
                     "expected_max": em[0], "expected_max_low": em[1], "expected_max_high": em[2],
                     "p_at_least_one": p1[0], "p_at_least_one_low": p1[1], "p_at_least_one_high": p1[2],
                     "expected_max_method": em.method, "expected_max_estimable": em.estimable,
                     "p_at_least_one_method": p1.method, "p_at_least_one_estimable": p1.estimable})
    return pd.DataFrame(rows)


#: The caution-level ProsocialDialog labels: contexts whose problem is easy to miss (not "needs intervention").
SUBTLE_LABELS: tuple[str, ...] = ("__possibly_needs_caution__", "__probably_needs_caution__", "__needs_caution__")


def failure_examples(df: pd.DataFrame, kind: str, n: int = 3) -> pd.DataFrame:
    """The ``n`` clearest failures the judges found, one per context, most confident first (picked by score, not
    by hand).

    ``kind="unsafe"``: replies to adversarial contexts ranked by ``unsafe_prob`` - the model went along with, or
    ignored, a context that needed pushback. ``kind="subtle"``: the same on the subtle context set, the subtle
    situations the paper says models miss (without one: adversarial contexts labelled only *caution*,
    :data:`SUBTLE_LABELS`). ``kind="preachy"``: replies to
    casual contexts ranked by ``preachy_prob`` - a lecture where small talk was wanted.
    """
    spec = {"unsafe": ("adversarial", "unsafe_prob"), "subtle": ("adversarial", "unsafe_prob"),
            "preachy": ("casual", "preachy_prob")}
    if kind not in spec:
        raise ValueError(f"kind must be one of {sorted(spec)}, got {kind!r}")
    set_name, score = spec[kind]
    if kind == "subtle" and (df["context_set"] == "subtle").any():
        set_name = "subtle"
    sub = df[df["context_set"] == set_name]
    if kind == "subtle" and set_name == "adversarial":
        sub = sub[sub["safety_label"].isin(SUBTLE_LABELS)]
    if score not in sub.columns:
        raise KeyError(f"no judge column {score!r}: judge the audit first")
    sub = sub.sort_values([score, "system"], ascending=[False, True], kind="stable")
    sub = sub.drop_duplicates("context_id").head(n)
    cols = ["system", "history", "context", "reply", score, "safety_label"]
    if kind != "preachy":
        cols.append("violates_rot_prob")
    return sub[[c for c in cols if c in sub.columns]].reset_index(drop=True)


def render_examples(examples: pd.DataFrame, max_turns: int = 3) -> str:
    """Markdown for :func:`failure_examples`: the last ``max_turns`` turns of the context, the system's reply and
    the judges' scores."""
    if examples.empty:
        return "_No reply of this kind in this run._"
    parts = []
    for r in examples.itertuples(index=False):
        scores = ", ".join(f"{c.replace('_prob', '')} {getattr(r, c):.2f}" for c in examples.columns
                           if c.endswith("_prob"))
        label = f" ({r.safety_label.strip('_').replace('_', ' ')})" if r.safety_label else ""
        reply = r.reply if r.reply.strip() else "(empty reply)"
        history = list(getattr(r, "history", None) or [r.context])[-max_turns:]
        speakers = ["user" if (len(history) - 1 - i) % 2 == 0 else "bot" for i in range(len(history))]
        turns = " / ".join(f"*{who}:* {_md_quote(t)}" for who, t in zip(speakers, history))
        parts.append(f"- **Context**{label}: {turns}\n  **{r.system}**: {_md_quote(reply)}\n"
                     f"  *judges: {scores}*")
    return "\n".join(parts)


_md_quote = md_quote  # the name chapter code and report.comparison import


# ---------------------------------------------------------------------- the chapter's tables
def context_set_table(context_sets: dict[str, Any]) -> pd.DataFrame:
    """How many contexts of each set come from each source and safety label."""
    frames = []
    for name, ds in context_sets.items():
        d = ds.to_pandas()[["source", "safety_label"]].replace({"safety_label": {"": "(casual chat)"}})
        frames.append(d.assign(context_set=name))
    d = pd.concat(frames, ignore_index=True)
    return (d.groupby(["context_set", "source", "safety_label"], sort=False).size()
            .rename("contexts").reset_index())


def systems_table(systems: Sequence[AuditSystem]) -> pd.DataFrame:
    """The audited systems: model, system prompt and decoding."""
    return pd.DataFrame([{"system": s.name, "model": short_model_name(s.model), "system prompt": s.system_prompt or "(model default)",
                          "decoding": s.decoding, "max new tokens": s.max_new_tokens} for s in systems])


def prompt_effect_table(df: pd.DataFrame, stats: StatsConfig | None = None, *, seed: int = 0) -> pd.DataFrame:
    """What the safety system prompt changes: for every model and decoding audited with and without it, the
    paired difference (with - without) of the unsafe rate and RoT-violation rate on adversarial contexts and the
    preachiness on casual ones, with a bootstrap CI over contexts (per-context rates when k > 1; Newcombe's
    interval where every context changes alike; ``method`` and ``estimable`` say which; ``stats``: None = its
    defaults; ``seed``: ``Config.seed``). Chapter 01 shows it."""
    from ..eval.metrics import paired_difference
    kw = (stats if stats is not None else StatsConfig()).bootstrap_kwargs(seed)
    keyed = df.assign(prompted=df["system_prompt"].astype(str) != "")
    rows = []
    for (model, decoding), sub in keyed.groupby(["model", "decoding"], sort=False):
        if sub["prompted"].nunique() < 2:
            continue
        for set_name, flag in HEADLINE_METRICS:
            part = sub[(sub["context_set"] == set_name) & sub[flag].notna()] if flag in sub else sub.iloc[:0]
            if part.empty:
                continue
            per_ctx = part.assign(v=part[flag].astype(float)).pivot_table(
                index="context_id", columns="prompted", values="v", aggfunc="mean").dropna()
            ci = paired_difference(per_ctx[True].to_numpy(), per_ctx[False].to_numpy(), **kw)
            rows.append({"model": short_model_name(model), "decoding": decoding, "metric": f"{flag} on {set_name}",
                         "without prompt": per_ctx[False].mean(), "with prompt": per_ctx[True].mean(),
                         "change": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "contexts": len(per_ctx),
                         "method": ci.method, "estimable": ci.estimable})
    return pd.DataFrame(rows)


def _metric_key(set_name: str, metric: str) -> str:
    """The glue-name stem of a headline metric: the flag alone on its usual context set, else flag_set."""
    return metric if set_name in ("adversarial", "casual") else f"{metric}_{set_name}"


def headline_numbers(summary: pd.DataFrame, effects: pd.DataFrame) -> dict[str, Any]:
    """The numbers the chapter's prose cites (glued), the same names in every preset: the highest and lowest
    failure rate on each headline metric and which system had it, the mean CI width, and the safety prompt's
    effect for the first model and decoding that has one."""
    out: dict[str, Any] = {}
    for set_name, metric in HEADLINE_METRICS:
        sub = summary[(summary.context_set == set_name) & (summary.metric == metric)]
        if sub.empty:
            continue
        key = _metric_key(set_name, metric)
        for which, row in (("max", sub.loc[sub.rate.idxmax()]), ("min", sub.loc[sub.rate.idxmin()])):
            out[f"{key}_{which}_rate"] = float(row.rate)
            out[f"{key}_{which}_low"] = float(row.ci_low)
            out[f"{key}_{which}_high"] = float(row.ci_high)
            out[f"{key}_{which}_system"] = str(row.system)
    sub = summary.merge(pd.DataFrame(HEADLINE_METRICS, columns=["context_set", "metric"]))
    out["ci_width_mean"] = float((sub.ci_high - sub.ci_low).mean()) if len(sub) else float("nan")
    if not effects.empty:
        first = effects[(effects.model == effects.model.iloc[0]) & (effects.decoding == effects.decoding.iloc[0])]
        out["prompt_model"] = str(first.model.iloc[0])
        out["prompt_decoding"] = str(first.decoding.iloc[0])
        for r in first.to_dict("records"):
            flag, set_name = r["metric"].split(" on ")
            key = _metric_key(set_name, flag)
            out[f"prompt_{key}_without"] = float(r["without prompt"])
            out[f"prompt_{key}_with"] = float(r["with prompt"])
            for field in ("change", "ci_low", "ci_high"):
                out[f"prompt_{key}_{field}"] = float(r[field])
    return out


def extremes_markdown(numbers: dict[str, Any]) -> str:
    """Which systems had the highest and lowest failure rates (from :func:`headline_numbers`), as markdown."""
    lines = []
    for metric, where in (("unsafe", "unsafe on adversarial contexts"), ("unsafe_subtle", "unsafe on subtle contexts"),
                          ("violates_rot",
                          "violating the rule of thumb on adversarial contexts"), ("preachy", "preachy on casual contexts")):
        if f"{metric}_max_system" in numbers:
            lines.append(f"- most often {where}: **{numbers[f'{metric}_max_system']}** "
                         f"({numbers[f'{metric}_max_rate']:.1%}); least often: **{numbers[f'{metric}_min_system']}** "
                         f"({numbers[f'{metric}_min_rate']:.1%})")
    return "\n".join(lines)


def describe_run(cfg: Config, systems: Sequence[AuditSystem], context_sets: dict[str, Any]) -> str:
    """A markdown paragraph saying what this run audits, on what, under which preset."""
    models = ", ".join(dict.fromkeys(short_model_name(s.model) for s in systems))
    sets = ", ".join(f"{len(ds)} {name}" for name, ds in context_sets.items())
    note = {"smoke": " The smoke preset's model has **random weights**: its replies are noise and its rates say "
                     "nothing about any real model; it only proves the pipeline runs.",
            "cpu": " The contexts come from the book's **embedded sample** of ProsocialDialog (written for this "
                   "book in the upstream schema, not the real data) and from real chats of `chitchat-dataset`.",
            "gpu": " The contexts come from the real ProsocialDialog test split and DailyDialog."}.get(cfg.preset, "")
    return (f"**Preset `{cfg.preset}`**: {len(systems)} systems built from {models}, each answering {sets} "
            f"contexts with at most {cfg.generation.max_new_tokens} new tokens; rates with {cfg.stats.confidence:.0%} "
            f"bootstrap intervals ({cfg.stats.bootstrap_samples} resamples of the contexts; Wilson's score interval "
            f"where every reply agrees).{note}")


def findings_box(numbers: dict[str, Any], *, instrument: str | None = None, preset: str | None = None) -> str:
    """The "what this chapter finds" bullets that open chapter 01, written from :func:`headline_numbers` (so they
    stay true under every preset): the range of unsafe and preachy rates over the systems, the safety prompt's
    effect, the precision of the rates and whether the judge can be trusted.

    Args:
        numbers: :func:`headline_numbers`' output.
        instrument: :func:`~prosocial_lib.report.judges.instrument_verdict`'s sentence, if known.
        preset: the preset, to say so when its model has random weights (``smoke``).

    Returns:
        Markdown bullets (no heading): the chapter puts them in an admonition box.
    """
    lines = []
    for metric, what, where in (("unsafe", "Unsafe replies", "adversarial contexts"),
                                ("preachy", "Preachy replies", "casual chat")):
        if f"{metric}_max_rate" not in numbers:
            continue
        lo, hi = numbers[f"{metric}_min_rate"], numbers[f"{metric}_max_rate"]
        span = (f"{hi:.0%} for every system" if numbers[f"{metric}_min_system"] == numbers[f"{metric}_max_system"]
                or round(lo, 3) == round(hi, 3) else
                f"from {lo:.0%} (*{numbers[f'{metric}_min_system']}*) to {hi:.0%} (*{numbers[f'{metric}_max_system']}*)")
        lines.append(f"- **{what} to {where}**: {span}, with a 95% interval of "
                     f"{numbers[f'{metric}_max_low']:.0%} to {numbers[f'{metric}_max_high']:.0%} around the highest.")
    if "prompt_unsafe_change" in numbers:
        change, low, high = (numbers[f"prompt_unsafe_{k}"] for k in ("change", "ci_low", "ci_high"))
        verdict = ("an interval that includes zero: no effect this audit can measure" if low <= 0 <= high else
                   "lower with the prompt" if high < 0 else "higher with the prompt")
        lines.append(f"- **The safety system prompt** changes the unsafe rate of {numbers['prompt_model']} "
                     f"({numbers['prompt_decoding']}) by {100 * change:+.1f} percentage points (95% interval "
                     f"{100 * low:+.1f} to {100 * high:+.1f}): "
                     f"{verdict}.")
    if numbers.get("ci_width_mean") == numbers.get("ci_width_mean"):  # not NaN
        lines.append(f"- **Precision**: an interval is {numbers['ci_width_mean']:.0%} wide on average, so only "
                     "large differences between systems show.")
    if instrument:
        lines.append(f"- **The judges**: {instrument}")
    if preset == "smoke":
        lines.append("- This is the `smoke` preset: the model has random weights, so these numbers only show that "
                     "the pipeline runs.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the same tables, for the page
def prompt_effect_view(effects: pd.DataFrame) -> pd.DataFrame:
    """:func:`prompt_effect_table` in six readable columns: the change and its interval in one cell, percentages
    formatted, the method and the estimability (for the curious) left to the full table."""
    return pd.DataFrame({
        "model": effects["model"], "decoding": effects["decoding"],
        "rate": [metric_name(*m.split(" on ")) for m in effects["metric"]],
        "without prompt": [f"{v:.1%}" for v in effects["without prompt"]],
        "with prompt": [f"{v:.1%}" for v in effects["with prompt"]],
        "change [95% CI]": [interval(c, lo, hi, signed=True)
                            for c, lo, hi in zip(effects["change"], effects["ci_low"], effects["ci_high"])],
    })


def k_sample_view(k_table: pd.DataFrame) -> pd.DataFrame:
    """:func:`k_sample_table` in six readable columns: each estimate with its interval in one cell."""
    return pd.DataFrame({
        "system": k_table["system"], "set": k_table["context_set"], "k": k_table["k"],
        "contexts": k_table["contexts"],
        "expected max [95% CI]": [interval(v, lo, hi) for v, lo, hi in zip(
            k_table["expected_max"], k_table["expected_max_low"], k_table["expected_max_high"])],
        "P(at least one) [95% CI]": [interval(v, lo, hi) for v, lo, hi in zip(
            k_table["p_at_least_one"], k_table["p_at_least_one_low"], k_table["p_at_least_one_high"])],
    })


#: :func:`~prosocial_lib.eval.quality.quality_table`'s columns in two tables of at most seven: the replies'
#: shape, and their variety and closeness to the gold replies (with their scales).
QUALITY_VIEWS: dict[str, dict[str, str]] = {
    "shape": {"system": "system", "context_set": "set", "replies": "replies", "mean_words": "words (mean)",
              "empty_replies": "empty", "truncated": "truncated", "repetitive": "repetitive"},
    "gold": {"system": "system", "context_set": "set", "distinct_1": "distinct-1 (0-1)",
             "distinct_2": "distinct-2 (0-1)", "bleu4": "BLEU-4 (0-100)", "unigram_f1": "F1 (0-1)"},
}


def quality_view(quality: pd.DataFrame, part: str = "shape") -> pd.DataFrame:
    """One of :data:`QUALITY_VIEWS` of a quality table, with readable headers (BLEU-4 on sacreBLEU's 0-100)."""
    names = QUALITY_VIEWS[part]
    return quality[[c for c in names if c in quality]].rename(columns=names)


def reply_examples(df: pd.DataFrame, n: int = 4) -> str:
    """The first ``n`` replies of an audit as Markdown cards: the context, the system's reply in full and the
    judges' probabilities (instead of a table that cuts the texts)."""
    rows = df.head(n).rename(columns={"unsafe_prob": "P(condoning)", "violates_rot_prob": "P(violates RoT)",
                                      "preachy_prob": "P(preachy)"})
    return reply_cards(rows, group="system", meta=[c for c in ("P(condoning)", "P(violates RoT)", "P(preachy)")
                                                   if c in rows])
