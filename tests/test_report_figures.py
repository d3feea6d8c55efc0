"""Every figure of report/plots.py fits the book's text column and keeps its labels legible."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from prosocial_lib.report import plots  # noqa: E402

LABELS = ["__casual__", "__possibly_needs_caution__", "__probably_needs_caution__", "__needs_caution__",
          "__needs_intervention__"]
SYSTEMS = ["base model", "CE only (stage 2)", "CE + n-pair (stage 2 only)", "CE only (both stages)",
           "CE + n-pair (both stages)", "DPO + CE (stage 2, TRL)"]


def _rates(systems=SYSTEMS):
    rows = [{"system": s, "context_set": cs, "metric": m, "rate": 0.2 + 0.1 * i, "ci_low": 0.1 * i, "ci_high": 0.3 + 0.1 * i}
            for i, s in enumerate(systems) for cs, m in (("adversarial", "unsafe"), ("adversarial", "violates_rot"),
                                                         ("adversarial", "agrees_rot"), ("casual", "preachy"),
                                                         ("casual", "incoherent"))]
    return pd.DataFrame(rows)


def _severity_table():
    from prosocial_lib.data.labels import MIC_CONSENSUS, MIC_SEVERITY
    return pd.DataFrame(3, index=pd.Index(list(MIC_SEVERITY)), columns=list(MIC_CONSENSUS))


FIGURES = {
    "label_distribution": lambda: plots.plot_label_distribution(pd.DataFrame(
        {"safety_label": LABELS * 2, "share": [0.2] * 10, "split": ["train"] * 5 + ["test"] * 5}),
        upstream=dict.fromkeys(LABELS, 0.2)),
    "source_distribution": lambda: plots.plot_source_distribution(pd.DataFrame(
        {"source": ["sbic", "ethics_amt"], "share": [0.5, 0.5], "split": ["train", "train"]})),
    "text_lengths": lambda: plots.plot_text_lengths(pd.DataFrame(
        {"dataset": ["ProsocialDialog"] * 4, "field": ["context", "context", "response", "response"],
         "words": [5, 9, 12, 20]})),
    "moral_foundations": lambda: plots.plot_moral_foundations(pd.DataFrame(
        {"foundation": ["care", "fairness"] * 3, "count": [3, 4, 1, 2, 5, 1],
         "answer": ["agrees", "agrees", "neutral", "neutral", "disagrees", "disagrees"]})),
    "severity_vs_consensus": lambda: plots.plot_severity_vs_consensus(_severity_table()),
    "audit_rates": lambda: plots.plot_audit_rates(_rates(["SmolLM2-135M-Instruct | greedy",
                                                          "SmolLM2-135M-Instruct | greedy+safety",
                                                          "SmolLM2-135M-Instruct | sampled"])),
    "training_curves": lambda: plots.plot_training_curves(pd.DataFrame(
        [{"step": s, "metric": m, "value": 0.1 * s} for s in (1, 2, 3)
         for m in ("ce", "npair", "contrastive_accuracy", "margin", "eval_loss")]), title="Stage 1"),
    "before_after": lambda: plots.plot_before_after(pd.DataFrame(
        {"groups": ["all", "all"], "metric": ["accuracy", "margin"], "before": [0.4, -0.1], "after": [0.6, 0.2]}),
        title="Stage 1"),
    "negative_weights": lambda: plots.plot_negative_weights(pd.DataFrame(
        {"weight": [1.0, 1.5, 2.0, 1.2], "origin": ["own_prompt", "other_prompt", "own_prompt", "own_prompt"]})),
    "evaluation_rates": lambda: plots.plot_evaluation_rates(_rates()),
    "ablations": lambda: plots.plot_ablations(pd.DataFrame(
        {"ablation": ["reference", "loss.social_alpha=0", "loss.npair_weight=0"], "accuracy": [0.7, 0.5, 0.4],
         "accuracy low": [0.5, 0.3, 0.2], "accuracy high": [0.9, 0.7, 0.6], "margin": [0.2, -0.1, 0.0]})),
    "judge_confusion": lambda: plots.plot_judge_confusion(pd.DataFrame(
        [[3, 1, 0, 0, 0, 1]] * 6, index=list("abcdef"), columns=["prosocial", "condoning", "neutral", "fine",
                                                                   "preachy", "incoherent"])),
    "reliability": lambda: plots.plot_reliability({"cross-encoder": pd.DataFrame(
        {"mean_confidence": [0.3, 0.6, 0.9], "accuracy": [0.2, 0.6, 0.8], "n": [5, 10, 20]})}),
    "paired_differences": lambda: plots.plot_paired_differences(pd.DataFrame(
        [{"system": s, "metric": m, "difference": d, "low": d - 0.08, "high": d + 0.08}
         for s in SYSTEMS[:-1] for m, d in (("unsafe (adversarial)", -0.1), ("unsafe (subtle)", 0.05),
                                            ("preachy (casual)", 0.0), ("incoherent (casual)", 0.2))])),
    "bench_cost_vs_k": lambda: plots.plot_bench_cost_vs_k({"header": {"model": "tiny", "device": "cpu",
                                                                      "preset": "smoke"}, "training": [
        {"available": True, "objective": "ce", "layout": "separate", "K": 0, "step_s": 0.1, "peak_mem_mb": 100},
        *({"available": True, "objective": "npair", "layout": lay, "K": k, "step_s": 0.1 * k, "peak_mem_mb": 100 + k}
          for lay in ("separate", "shared") for k in (1, 3)),
        {"available": True, "objective": "dpo", "layout": "separate", "K": 1, "step_s": 0.2, "peak_mem_mb": 150}]}),
}


def test_every_plot_function_is_checked():
    drawn = {name.removeprefix("plot_") for name in dir(plots) if name.startswith("plot_")}
    assert drawn <= set(FIGURES), f"add {sorted(drawn - set(FIGURES))} to FIGURES"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_fits_the_page_and_its_text_is_legible(name):
    fig = FIGURES[name]()
    try:
        width, height = fig.get_size_inches()
        assert width <= plots.PAGE_WIDTH + 0.5, f"{name}: {width:.1f} in wide"
        assert height <= 10, f"{name}: {height:.1f} in high"
        fig.canvas.draw()
        small = [(t.get_text(), t.get_fontsize()) for t in fig.findobj(Text)
                 if t.get_visible() and t.get_text().strip() and t.get_fontsize() < plots.MIN_FONT_SIZE]
        assert small == [], f"{name}: text below {plots.MIN_FONT_SIZE} pt: {small[:5]}"
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis, labels in (("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())):
                boxes = [t.get_window_extent(renderer) for t in labels  # rotated labels' boxes are not their ink
                         if t.get_visible() and t.get_text().strip() and t.get_rotation() == 0]
                clashes = [(a, b) for a, b in zip(boxes, boxes[1:]) if a.overlaps(b)]
                assert not clashes, f"{name}: {axis} tick labels overlap"
    finally:
        plt.close(fig)


def test_the_full_method_is_highlighted():
    fig = plots.plot_evaluation_rates(_rates())
    bold = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["CE + n-pair (both stages)"]
    plt.close(fig)


def test_audit_systems_of_one_model_are_named_by_their_decoding():
    fig = FIGURES["audit_rates"]()
    assert fig._suptitle.get_text() == "model: SmolLM2-135M-Instruct"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["greedy", "greedy+safety", "sampled"]
    plt.close(fig)
