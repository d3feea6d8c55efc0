"""Tables for the page: every float formatted, intervals in one cell, example texts in full."""

import pandas as pd

from prosocial_lib.report.tables import counts_and_shares, interval, md_quote, metric_name, reply_cards, styled


def test_styled_formats_every_float():
    frame = pd.DataFrame({"system": ["a", "b"], "tokens": [272.0, 1024.0], "accuracy": [1.0, 0.75],
                          "share": [0.125, 0.5], "reused": [True, False], "value": [1.0, ["near_topic", "preachy"]]})
    html = styled(frame, percent=["share"]).to_html()
    for shown in ("272", "1,024", "1.000", "0.750", "12.5%", "yes", "no", "1", "near_topic, preachy"):
        assert f">{shown}<" in html, shown
    assert "272.000" not in html and "1.000000" not in html and "0.125" not in html


def test_intervals_do_not_wrap():
    html = styled(pd.DataFrame({"rate": [interval(0.1, 0.0, 0.3)], "name": ["a b"]})).to_html()
    assert html.count("white-space: nowrap") == 1


def test_interval_and_names():
    assert interval(0.125, 0.05, 0.25) == "12.5% [5.0, 25.0]"
    assert interval(-0.1, -0.3, 0.05, signed=True) == "-10.0% [-30.0, +5.0]"
    assert metric_name("violates_rot", "adversarial") == "violates RoT (adversarial)"


def test_reply_cards_keep_every_text_whole():
    long = "word " * 80
    rows = pd.DataFrame({"context": ["c *1*", "c *1*", "c2"], "system": ["s1", "s2", "s1"],
                         "reply": [long, "", "ok"], "P(preachy)": [0.123, 0.5, 0.9]})
    text = reply_cards(rows, group="system", meta=["P(preachy)"])
    assert " ".join(long.split()) in text and "..." not in text
    assert text.count("**Context**") == 2 and "(empty reply)" in text and "P(preachy) 0.12" in text
    assert md_quote("c *1*") == "c \\*1\\*"
    assert "**Context** (casual): c2" in reply_cards(rows.assign(kind="casual"), label="kind")


def test_counts_and_shares_split_a_wide_overview():
    frame = pd.DataFrame({"turns": [10.0], "dialogues": [3.0], "casual": [0.2], "needs caution": [0.8]},
                         index=pd.Index(["train"], name="split"))
    counts, shares = counts_and_shares(frame, "casual")
    assert ">80.0%<" in shares.to_html() and "casual" not in counts.to_html()


def test_the_comparison_table_splits_into_rates_and_quality():
    from prosocial_lib.report.comparison import format_table

    table = pd.DataFrame({"system": ["base model"], "unsafe (adversarial)": [0.5], "unsafe (adversarial) low": [0.3],
                          "unsafe (adversarial) high": [0.7], "bleu4": [12.345], "unigram_f1": [0.2]})
    assert list(format_table(table, part="rates").columns) == ["unsafe (adversarial)"]
    assert list(format_table(table, part="quality").columns) == ["BLEU-4 (0-100)", "F1 (0-1)"]
    assert len(format_table(table).columns) == 3  # both, as before
