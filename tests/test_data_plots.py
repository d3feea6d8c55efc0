"""The data chapter's figures draw what they are given."""

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from prosocial_lib.data import UPSTREAM_LABEL_SHARES, load_mic, load_prosocial_dialog, stats
from prosocial_lib.report import plots

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def pd_splits():
    ds = load_prosocial_dialog(str(FIXTURES / "prosocial_hub.jsonl"))
    return {"train": ds, "test": ds.select(range(3))}


@pytest.fixture(scope="module")
def mic():
    return load_mic(str(FIXTURES / "mic_sample.csv"), "train")


def test_label_distribution_has_a_bar_per_label_and_split_and_upstream_marks(pd_splits):
    fig = plots.plot_label_distribution(stats.label_table(pd_splits), upstream=UPSTREAM_LABEL_SHARES)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 4) for p in ax.patches if p.get_height() > 0)
    assert len([p for p in ax.patches if p.get_width() > 0]) >= 10  # 5 labels x 2 splits
    assert round(2 / 6, 4) in heights  # two of six train turns need intervention
    marks = ax.collections[-1].get_offsets()
    assert len(marks) == 5 and sorted(float(y) for _, y in marks) == sorted(UPSTREAM_LABEL_SHARES.values())


def test_source_and_length_figures_draw(pd_splits, mic):
    fig = plots.plot_source_distribution(stats.source_table(pd_splits))
    assert fig.axes[0].get_ylabel() == "share of turns"
    lengths = stats.text_length_table({("ProsocialDialog", "context"): pd_splits["train"]["context"],
                                       ("MIC", "A"): mic["A"]})
    fig = plots.plot_text_lengths(lengths)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["ProsocialDialog: context", "MIC: A"]


def test_mic_figures_draw(mic):
    fig = plots.plot_moral_foundations(stats.mic_foundation_table(mic))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["care", "fairness", "liberty", "loyalty",
                                                                     "authority", "sanctity"]
    fig = plots.plot_severity_vs_consensus(stats.mic_severity_consensus_table(mic))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 25 and sum(int(t) for t in texts) == 4
