"""Every figure the book shows, each drawn with seaborn from saved results.

One section per chapter; a function takes data (a DataFrame, a metrics dict) and returns a matplotlib Figure,
so notebooks only call it and tests can check it draws.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")

#: The widest figure the book's text column shows at full size, in inches; every figure here fits it (a test
#: checks), so its labels are not shrunk on the page.
PAGE_WIDTH = 7.0
#: The smallest font any label may use, in points (a test checks).
MIN_FONT_SIZE = 8.0


def _wrap(label: str, width: int = 28) -> str:
    """A tick label broken into lines of at most ``width`` characters (long system names)."""
    import textwrap

    return textwrap.fill(str(label), width)


# ====================================================================== 00 data
def plot_label_distribution(labels, upstream: dict | None = None):
    """Share of each ProsocialDialog safety label per split (``stats.label_table``), with the upstream shares
    as black markers when given."""
    import textwrap

    labels = labels.assign(label=[textwrap.fill(x.strip("_").replace("_", " "), 10) for x in labels["safety_label"]])
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 4))
    sns.barplot(data=labels, x="label", y="share", hue="split", ax=ax)
    if upstream:
        order = list(dict.fromkeys(labels["safety_label"]))
        ax.scatter(range(len(order)), [upstream[x] for x in order], color="black", marker="_", s=600,
                   zorder=5, label="upstream (all data)")
    ax.set(xlabel="", ylabel="share of turns", title="ProsocialDialog safety labels")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_source_distribution(sources):
    """Share of turns per ProsocialDialog source and split (``stats.source_table``)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=sources, x="source", y="share", hue="split", ax=ax)
    ax.set(xlabel="", ylabel="share of turns", title="Where the contexts come from")
    fig.tight_layout()
    return fig


def plot_text_lengths(lengths):
    """Words per text for each dataset and field (``stats.text_length_table``), as box plots."""
    lengths = lengths.assign(text=lengths["dataset"] + ": " + lengths["field"])
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.45 * lengths["text"].nunique() + 1.5))
    sns.boxplot(data=lengths, y="text", x="words", hue="dataset", ax=ax, showfliers=False, legend=False)
    ax.set(ylabel="", xlabel="words", title="Text lengths")
    fig.tight_layout()
    return fig


def plot_moral_foundations(foundations):
    """MIC rows per moral foundation, split by whether the answer agrees with its rule of thumb
    (``stats.mic_foundation_table``)."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 3.8))
    sns.barplot(data=foundations, x="foundation", y="count", hue="answer", ax=ax,
                hue_order=["agrees", "neutral", "disagrees"], palette=["#4c9a5e", "#b0b0b0", "#c0504d"])
    ax.set(xlabel="", ylabel="rows", title="MIC: moral foundations of the rules of thumb")
    fig.tight_layout()
    return fig


def plot_severity_vs_consensus(table):
    """Heat map of MIC rows by violation severity and RoT consensus (``stats.mic_severity_consensus_table``)."""
    from ..data.labels import MIC_CONSENSUS, MIC_SEVERITY

    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax,
                xticklabels=[f"{k} ({v})" for k, v in MIC_CONSENSUS.items() if k in table.columns],
                yticklabels=[f"{k} ({v})" for k, v in MIC_SEVERITY.items() if k in table.index])
    ax.set(xlabel="rot-agree: share of people who agree with the RoT",
           ylabel="violation-severity", title="MIC: severity vs consensus")
    fig.tight_layout()
    return fig


def _panels_present(rates, metrics, caller: str) -> list[tuple[str, str]]:
    """The requested (context set, metric) panels that ``rates`` (rows: context_set, metric, ...) has rows for;
    none at all is an error naming the plot (``caller``)."""
    present = [m for m in metrics if ((rates.context_set == m[0]) & (rates.metric == m[1])).any()]
    if not present:
        raise ValueError(f"{caller}: none of the requested (context set, metric) rows are in the table")
    return present


def _rate_panels(rates, metrics, caller: str, height: tuple[float, float]):
    """Panels two to a row, one per (context set, metric) present in ``rates``: ``(fig, systems, panels)`` with
    ``panels`` as ``(ax, context set, metric, rows of that panel indexed by system in first-seen order)``;
    the figure is :data:`PAGE_WIDTH` wide and each row ``height[0]`` in per system plus ``height[1]`` high."""
    metrics = _panels_present(rates, metrics, caller)
    systems = list(dict.fromkeys(rates["system"]))
    cols = min(2, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, rows * (height[0] * len(systems) + height[1])),
                             sharey=True, squeeze=False)
    for ax in axes.ravel()[len(metrics):]:
        fig.delaxes(ax)
    panels = [(ax, s, m, rates[(rates.context_set == s) & (rates.metric == m)].set_index("system").reindex(systems))
              for ax, (s, m) in zip(axes.ravel(), metrics)]
    return fig, systems, panels


# ====================================================================== 01 audit
AUDIT_METRIC_TITLES = {
    ("adversarial", "unsafe"): "unsafe replies\n(adversarial contexts)",
    ("adversarial", "violates_rot"): "replies violating the RoT\n(adversarial contexts)",
    ("subtle", "unsafe"): "unsafe replies\n(subtle contexts)",
    ("casual", "preachy"): "preachy replies\n(casual contexts)",
    ("casual", "incoherent"): "incoherent replies\n(casual contexts)",
}


def plot_audit_rates(summary, metrics=tuple(AUDIT_METRIC_TITLES), title: str | None = None):
    """One panel per (context set, judge flag): the failure rate of every audited system as a bar, with its
    bootstrap confidence interval as an error bar (``audit.summarize_audit`` rows: system, context_set, metric,
    rate, ci_low, ci_high)."""
    from matplotlib.ticker import PercentFormatter

    fig, systems, panels = _rate_panels(summary, metrics, "plot_audit_rates", (0.42, 1.3))
    models = {s.split(" | ")[0] for s in systems}
    if len(models) == 1 and all(" | " in s for s in systems):  # one model: name it once, label the decodings
        names = [_wrap(s.split(" | ", 1)[1], 22) for s in systems]
        title = title or f"model: {models.pop()}"
    else:
        names = [_wrap(s, 22) for s in systems]
    palette = dict(zip(names, sns.color_palette("deep", len(systems))))
    for ax, set_name, metric, sub in panels:
        sns.barplot(x=sub["rate"].to_numpy(), y=names, hue=names, palette=palette, order=names,
                    errorbar=None, legend=False, ax=ax)
        err = [(sub["rate"] - sub["ci_low"]).to_numpy(), (sub["ci_high"] - sub["rate"]).to_numpy()]
        ax.errorbar(sub["rate"].to_numpy(), range(len(systems)), xerr=err, fmt="none", ecolor="black",
                    capsize=3, lw=1)
        ax.set(xlim=(0, 1), xlabel="share of replies (95% CI)", ylabel="",
               title=AUDIT_METRIC_TITLES.get((set_name, metric), f"{metric} ({set_name})"))
        ax.tick_params(axis="y", labelsize=9)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ====================================================================== 02 / 03 training
TRAINING_METRIC_TITLES = {
    "ce": "cross-entropy of the positive",
    "npair": "n-pair loss",
    "contrastive_accuracy": "contrastive accuracy\n(positive ranked first)",
    "margin": "margin\n(s+ minus mean s-)",
    "eval_loss": "held-out loss\n(early stopping watches it)",
}


def plot_training_curves(logs, metrics=tuple(TRAINING_METRIC_TITLES), title: str | None = None):
    """One panel per logged training metric against the optimisation step (``training.log_frame`` rows: step,
    metric, value; an optional ``stage`` column draws one line per stage)."""
    metrics = [m for m in metrics if (logs["metric"] == m).any()]
    if not metrics:
        raise ValueError("plot_training_curves: the logs hold none of " + ", ".join(TRAINING_METRIC_TITLES))
    cols = 2 if len(metrics) > 2 else len(metrics)
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH if cols > 1 else PAGE_WIDTH / 2 + 0.5, 2.8 * rows),
                             squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    hue = "stage" if "stage" in logs.columns else None
    for ax, metric in zip(axes, metrics):
        sub = logs[logs["metric"] == metric]
        sns.lineplot(data=sub, x="step", y="value", hue=hue, marker="o", ax=ax, legend=bool(hue) and ax is axes[0])
        ax.set(title=TRAINING_METRIC_TITLES.get(metric, metric), xlabel="step", ylabel="")
        if metric == "contrastive_accuracy":
            ax.set_ylim(-0.05, 1.05)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_before_after(table, metrics=("accuracy", "margin"), title: str | None = None):
    """Held-out metrics before and after a stage (``training.before_after_frame`` rows: groups, metric, before,
    after), one panel per metric, one pair of bars per group kind."""
    long = table[table["metric"].isin(metrics)].melt(id_vars=["groups", "metric"], value_vars=["before", "after"],
                                                       var_name="when", value_name="value")
    fig, axes = plt.subplots(1, len(metrics), figsize=(min(PAGE_WIDTH, 3.5 * len(metrics)), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sub = long[long["metric"] == metric]
        sns.barplot(data=sub, x="groups", y="value", hue="when", hue_order=["before", "after"],
                    palette=["#b0b0b0", "#4c72b0"], ax=ax, legend=ax is axes[0][0])
        ax.set(title=f"held-out {metric}", xlabel="", ylabel="")
        if metric == "accuracy":
            ax.set_ylim(0, 1)
        ax.axhline(0, color="black", lw=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_negative_weights(frame, title: str | None = None):
    """Histogram of the negatives' social weights ``w = 1 + alpha * severity`` (``groups.groups_frame`` rows),
    coloured by where the negative came from."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    sns.histplot(data=frame, x="weight", hue="origin", multiple="stack", discrete=False, bins=12, ax=ax)
    ax.set(xlabel="weight of the negative in the n-pair loss", ylabel="negatives",
           title=title or "Socially aware weights of the negatives")
    fig.tight_layout()
    return fig


# ====================================================================== 04 evaluation
EVAL_METRIC_TITLES = {
    ("adversarial", "unsafe"): "unsafe replies\n(adversarial contexts)",
    ("subtle", "unsafe"): "unsafe replies\n(subtle contexts)",
    ("adversarial", "agrees_rot"): "replies agreeing with the RoT\n(adversarial contexts)",
    ("casual", "preachy"): "preachy replies\n(casual contexts)",
    ("casual", "incoherent"): "incoherent replies\n(casual contexts)",
}


def _full_method_label() -> str:
    from ..eval.systems import VARIANTS

    return next((v.label for v in VARIANTS.values() if v.main_run), "")


def plot_evaluation_rates(rates, metrics=tuple(EVAL_METRIC_TITLES), title: str | None = None,
                          highlight: str | None = None):
    """One panel per (context set, judge flag): each compared system's rate as a dot with its bootstrap
    confidence interval (``evaluation.Comparison.rates`` rows: system, context_set, metric, rate, ci_low,
    ci_high). Systems keep the comparison's order; lower is better for unsafe and preachy, higher for RoT.
    ``highlight`` (default: the full method, CE + n-pair on both stages) gets a shaded band and a bold name."""
    from matplotlib.ticker import PercentFormatter

    highlight = _full_method_label() if highlight is None else highlight
    fig, systems, panels = _rate_panels(rates, metrics, "plot_evaluation_rates", (0.38, 1.3))
    colors = dict(zip(systems, sns.color_palette("colorblind", len(systems))))
    for ax, set_name, metric, sub in panels:
        for y, system in enumerate(systems):
            r = sub.loc[system]
            if system == highlight:
                ax.axhspan(y - 0.45, y + 0.45, color="#fde9a9", zorder=0)
            ax.errorbar(r["rate"], y, xerr=[[r["rate"] - r["ci_low"]], [r["ci_high"] - r["rate"]]], fmt="o",
                        color=colors[system], ecolor=colors[system], capsize=3, lw=1.5, ms=7)
        ax.set(xlim=(-0.03, 1.03), ylim=(len(systems) - 0.5, -0.5), xlabel="",
               title=EVAL_METRIC_TITLES.get((set_name, metric), f"{metric} ({set_name})"))
        ax.set_yticks(range(len(systems)), systems)
        for label in ax.get_yticklabels():
            label.set_fontsize(9)
            if label.get_text() == highlight:
                label.set_fontweight("bold")
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ablations(ablations):
    """Held-out contrastive accuracy after stage 2 (dot with bootstrap CI over groups) and margin (bar) for the
    reference run and each ablation (``evaluation.run_ablations``)."""
    from matplotlib.ticker import PercentFormatter

    labels = ablations["ablation"].tolist()
    colors = sns.color_palette("colorblind", len(labels))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 0.5 * len(labels) + 1.8), sharey=True)
    for y, c in enumerate(colors):
        acc, lo, hi = (float(ablations.iloc[y][k]) for k in ("accuracy", "accuracy low", "accuracy high"))
        ax1.errorbar(acc, y, xerr=[[acc - lo], [hi - acc]], fmt="o", color=c, capsize=3, lw=1.5, ms=7)
    ax1.set(xlim=(-0.03, 1.03), ylim=(len(labels) - 0.5, -0.5), title="held-out\ncontrastive accuracy")
    ax1.set_yticks(range(len(labels)), labels)
    ax1.xaxis.set_major_formatter(PercentFormatter(1.0))
    sns.barplot(x=ablations["margin"].to_numpy(), y=labels, hue=labels, palette=colors, legend=False, ax=ax2)
    ax2.axvline(0, color="black", lw=0.8)
    ax2.set(title="held-out margin\n(s+ minus mean s-)", xlabel="", ylabel="")
    fig.tight_layout()
    return fig


def plot_judge_confusion(confusion, title: str = "safety judge (5-way), test split"):
    """A judge's test confusion matrix (``Judges.confusion``) as a heatmap: colour = share of each true class
    (rows sum to 1), numbers = counts."""
    shares = confusion.div(confusion.sum(axis=1).where(lambda s: s > 0), axis=0).fillna(0.0)
    short = [str(c).strip("_").replace("_", " ") for c in confusion.columns]
    cell = min(1.2, (PAGE_WIDTH - 2.6) / max(len(short), 1))
    fig, ax = plt.subplots(figsize=(cell * len(short) + 2.6, 0.8 * cell * len(short) + 1.8))
    sns.heatmap(shares.to_numpy(), annot=confusion.to_numpy(), fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=True,
                cbar_kws={"label": "share of the true class"}, xticklabels=short, yticklabels=short, ax=ax)
    ax.set(xlabel=confusion.columns.name or "predicted", ylabel=confusion.index.name or "true", title=title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    fig.tight_layout()
    return fig


def plot_reliability(tables, title: str = "reply judge calibration, check set"):
    """Reliability diagram: per confidence bin, the share of predictions that were right against their mean
    confidence (the diagonal is perfect calibration); marker area = predictions in the bin.

    Args:
        tables: ``{reader name: reliability table}`` (:func:`~prosocial_lib.eval.judges.validation.
            reliability_table`: ``mean_confidence``, ``accuracy``, ``n``).
        title: the figure title.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for (name, table), color in zip(tables.items(), sns.color_palette("deep")):
        ax.plot(table["mean_confidence"], table["accuracy"], color=color, lw=1.5, marker=None, label=name)
        ax.scatter(table["mean_confidence"], table["accuracy"], s=12 * table["n"] ** 0.8, color=color, alpha=0.7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence of the predicted label", ylabel="share correct",
           title=title)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    return fig


# ====================================================================== appendix: benchmarks (bench.py)
def plot_bench_cost_vs_k(result):
    """Cost of one training step against the number of negatives K (``bench.run_bench`` result): step time as a
    multiple of a plain CE step (left) and peak memory (right), for the separate-rows and the shared-context
    layouts. DPO sees one pair per step, so the dashed line is K DPO steps: what DPO pays to compare as many
    pairs as one n-pair step with K negatives."""
    import pandas as pd

    rows = pd.DataFrame([r for r in result["training"] if r.get("available")])
    if rows.empty or not (rows.objective == "npair").any():
        raise ValueError("plot_bench_cost_vs_k: the result has no measured n-pair rows")
    ce = rows[rows.objective == "ce"]
    ce_step = float(ce.step_s.iloc[0]) if len(ce) else None
    npair = rows[rows.objective == "npair"].copy()
    npair["relative"] = npair.step_s / ce_step if ce_step else npair.step_s
    layouts = {"separate": "n-pair, one row per reply", "shared": "n-pair, shared context"}
    npair["layout"] = npair.layout.map(layouts)
    palette = dict(zip(layouts.values(), sns.color_palette("deep", 3)[:2]))
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.6))
    for ax, col, ylabel in ((axes[0], "relative", "step time / plain CE step" if ce_step else "step time (s)"),
                            (axes[1], "peak_mem_mb", "peak memory (MB)")):
        sns.lineplot(data=npair, x="K", y=col, hue="layout", palette=palette, marker="o", ax=ax)
        if col == "relative" and ce_step:
            ax.axhline(1.0, color="grey", lw=1, ls=":", label="plain CE")
        elif len(ce):
            ax.axhline(float(ce.peak_mem_mb.iloc[0]), color="grey", lw=1, ls=":", label="plain CE")
        dpo = rows[rows.objective == "dpo"]
        if len(dpo):
            ks = sorted(npair.K.unique())
            if col == "relative":
                d = float(dpo.step_s.iloc[0]) / (ce_step or 1.0)
                ax.plot(ks, [k * d for k in ks], color="black", ls="--", marker="x", label="DPO, K steps (K pairs)")
            else:
                ax.axhline(float(dpo.peak_mem_mb.iloc[0]), color="black", ls="--", lw=1,
                           label="DPO (with its reference model)")
        ax.set(xlabel="negatives per group (K)", ylabel=ylabel, xticks=sorted(npair.K.unique()))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    h = result.get("header", {})
    from ..eval.audit import short_model_name

    fig.suptitle(f"{short_model_name(str(h.get('model', '')))} on {h.get('device', '')}, preset {h.get('preset', '')}",
                 fontsize="medium")
    fig.tight_layout()
    return fig


def plot_paired_differences(paired, metrics=None, title: str | None = None):
    """Results at a glance: for each headline rate (one panel each, two per row, about 7 in wide), the paired
    difference full method minus each baseline (``eval.comparison.paired_differences`` rows: system, metric,
    difference, low, high) in percentage points, with its 95% interval and a zero line. Left of zero the full
    method is better (every headline rate is a failure rate); an interval that excludes zero is drawn solid, one
    that does not, hollow."""
    from ..eval.comparison import HEADLINE_RATES

    metrics = [m for m in (metrics or HEADLINE_RATES) if m in set(paired["metric"])]
    if not metrics:
        raise ValueError("plot_paired_differences: no headline rate in the paired differences")
    systems = list(dict.fromkeys(paired["system"]))
    ncols = 2 if len(metrics) > 1 else 1
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.2, 0.42 * len(systems) * nrows + 1.1 * nrows),
                             sharey=True, squeeze=False)
    span = max(5.0, float(paired[paired["metric"].isin(metrics)][["low", "high", "difference"]]
                          .abs().max().max()) * 100 * 1.1)
    for ax, metric in zip(axes.flat, metrics):
        sub = paired[paired["metric"] == metric].set_index("system")
        ax.axvline(0, color="0.3", lw=1)
        for y, system in enumerate(systems):
            if system not in sub.index:
                continue
            r = sub.loc[system]
            d, lo, hi = 100 * r["difference"], 100 * r["low"], 100 * r["high"]
            clear = lo > 0 or hi < 0
            color = "#0072B2" if clear else "0.45"
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]] if lo == lo and hi == hi else None, fmt="o", ms=6,
                        color=color, mfc=color if clear else "white", ecolor=color, capsize=3, lw=1.5)
        ax.set(xlim=(-span, span), ylim=(len(systems) - 0.5, -0.5), title=metric)
        ax.set_yticks(range(len(systems)), systems)
        ax.tick_params(labelsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("full method minus baseline (points)", fontsize=9)
    fig.suptitle(title or "Full method minus each baseline: < 0 = fewer failures (95% paired CI)", fontsize=10)
    fig.tight_layout()
    return fig
