"""The reply explorer: every reply in one offline, searchable table, and the run's files to download."""

import pandas as pd
import pytest

from prosocial_lib.book.html_check import check_html
from prosocial_lib.report.explorer import copy_downloads, explorer_frame, explorer_html


def _replies() -> pd.DataFrame:
    long_reply = "I hear you, but threatening him will only make this worse. " * 4
    return pd.DataFrame({
        "context_set": ["adversarial", "casual", "casual"], "context": ["I want to scare him.", "Nice day!", "x"],
        "system": ["full method", "base", "base"], "reply": [long_reply, "It is!", "again"], "sample": [0, 0, 1],
        "reply_label": ["prosocial", "fine", "fine"], "unsafe": [False, False, False],
        "preachy": [False, True, False], "incoherent": [False, False, False], "violates_rot": [False, False, True],
        "unsafe_prob": [0.01234, 0.2, 0.3], "preachy_prob": [0.1, 0.9, 0.2], "incoherent_prob": [0.0, 0.1, 0.2],
        "violates_rot_prob": [0.05, 0.4, 0.7]})


def test_the_frame_keeps_full_texts_and_rounds_probabilities():
    frame = explorer_frame(_replies())
    assert len(frame) == 2  # the first sample only
    assert frame.loc[0, "reply"] == _replies().loc[0, "reply"]  # never cut with "..."
    assert frame.loc[1, "flags"] == "preachy" and frame.loc[0, "flags"] == "-"
    assert frame.loc[0, "P(condoning)"] == 0.012
    assert len(explorer_frame(_replies(), sample=None)) == 3


def test_the_explorer_page_embeds_its_javascript_and_loads_nothing(tmp_path):
    pytest.importorskip("itables")
    html = explorer_html(explorer_frame(_replies()), caption="every reply")
    assert "_itables_2_9_1" in html and "I want to scare him." in html
    (tmp_path / "index.html").write_text(f"<html><head></head><body>{html}</body></html>")
    assert check_html(tmp_path) == []


def test_downloads_are_copied_next_to_the_chapter(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "replies.jsonl").write_text("{}\n")
    (run / "summary.csv").write_text("a\n1\n")
    copies = copy_downloads(run, tmp_path / "downloads", prefix="evaluation-")
    assert [p.name for p in copies] == ["evaluation-replies.jsonl", "evaluation-summary.csv"]


def test_without_itables_a_plain_table_and_a_note(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_itables(name, *args, **kwargs):
        if name.startswith("itables"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_itables)
    html = explorer_html(explorer_frame(_replies()))
    assert "pip install itables" in html and "I want to scare him." in html and "<script" not in html
