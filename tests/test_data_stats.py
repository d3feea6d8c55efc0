"""Dataset figures (hand-computed) and the `prosocial data` command."""

import math
import shutil
from pathlib import Path

import pytest

from prosocial_lib.cli import main
from prosocial_lib.data import load_mic, load_prosocial_dialog, stats

FIXTURES = Path(__file__).parent / "fixtures"


def test_distinct_n():
    assert stats.distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert stats.distinct_n(["a b c", "a b d"], 1) == pytest.approx(4 / 6)
    assert math.isnan(stats.distinct_n(["one"], 2))  # no bigram at all: undefined (it said 0.0, "no variety")
    assert stats.words("It's OK, isn't it?") == ["it's", "ok", "isn't", "it"]


def test_one_distinct_n_for_the_book():
    # issue #15: eval.quality and data.stats had two distinct-n (punctuation as tokens or not) that gave 0.628 and
    # 0.738 for the same MIC answers. Now one function, words only: "yes." and "no." are 2 distinct unigrams of 2
    # (the punctuation-token version said 3 of 4)
    from prosocial_lib.data.texts import distinct_n
    from prosocial_lib.eval import quality

    assert quality.distinct_n is stats.distinct_n is distinct_n
    assert distinct_n(["yes.", "no."], 1) == 1.0 and distinct_n(["Hi. Hi!"], 1) == 0.5
    answers = list(load_mic("embedded", "train")["A"])
    table = stats.variety_table({"MIC answers": answers})
    assert table.loc["MIC answers", "distinct-2"] == distinct_n(answers, 2)
    notebook = (Path(__file__).parents[1] / "book" / "00_data.ipynb").read_text()
    assert "from prosocial_lib.eval.quality import distinct_n" not in notebook
    assert "from prosocial_lib.data.stats import distinct_n" in notebook
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a b"], 0)


def test_text_statistics_refuse_a_bare_string():
    # issue #15 metrics-bare-string, data side: a str is a sequence of characters and was measured as such
    with pytest.raises(TypeError, match="list of texts"):
        stats.distinct_n("hello world", 1)  # was 0.7 (characters); the list form gives 1.0
    assert stats.distinct_n(["hello world"], 1) == 1.0
    with pytest.raises(TypeError, match="list of texts"):
        stats.near_duplicate_share("the cat sat on the mat")
    with pytest.raises(TypeError, match="list of texts"):
        stats.near_duplicate_pairs("ab")
    with pytest.raises(TypeError, match="list of texts"):
        stats.variety_table({"replies": "one reply only"})
    with pytest.raises(TypeError, match="list of texts"):
        stats.text_length_table({("MIC", "answer"): "one answer"})
    with pytest.raises(TypeError, match="list of texts"):
        stats.split_overlap({"train": "abc", "test": "cde"})  # would say 1 shared key: the letter c
    with pytest.raises(TypeError, match="list of texts"):
        stats.ngrams("abc", 2)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        stats.distinct_n(["fine", None], 1)


def test_near_duplicates():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "completely different words here"]
    # normalised Indel similarity: lengths 22 and 20, longest common subsequence 19 -> 1 - (22 + 20 - 38) / 42
    pairs = stats.near_duplicate_pairs(texts, threshold=0.9)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)] and pairs[0][2] == pytest.approx(38 / 42)
    assert stats.near_duplicate_share(texts, threshold=0.9) == pytest.approx(2 / 3)
    assert stats.near_duplicate_share(texts, threshold=0.91) == 0.0
    assert stats.near_duplicate_share(["Same line.", "same line", "x"]) == pytest.approx(2 / 3)  # case, punctuation
    assert stats.near_duplicate_share([]) == 0.0 and stats.near_duplicate_pairs(["one"]) == []


def test_prosocial_tables_and_rendering():
    ds = load_prosocial_dialog(str(FIXTURES / "prosocial_hub.jsonl"))
    labels = stats.label_table({"train": ds})
    assert len(labels) == 5 and labels["count"].sum() == 6
    assert labels.set_index("safety_label").loc["__needs_intervention__", "count"] == 2
    overview = stats.prosocial_overview({"train": ds})
    assert overview.loc["train", "dialogues"] == 3 and overview.loc["train", "turns per dialogue"] == 2
    assert overview.loc["train", "casual"] == pytest.approx(1 / 6)
    sources = stats.source_table({"train": ds}).set_index("source")
    assert sources.loc["ethics_amt", "count"] == 3
    lengths = stats.length_table(ds)
    assert lengths.loc[0, "context words"] == len(ds[0]["context"].split())
    text = stats.render_dialogue(ds, 10)
    assert text.count("**Speaker:**") == 3 and "__needs_intervention__" in text and "Rules of thumb" in text
    with pytest.raises(ValueError):
        stats.render_dialogue(ds, 999)
    overlap = stats.split_overlap({"a": [1, 2, 3], "b": [3, 4], "c": [5]})
    assert overlap["shared"].tolist() == [1, 0, 0]


def test_mic_tables():
    ds = load_mic(str(FIXTURES / "mic_sample.csv"), "test")
    table = stats.mic_foundation_table(ds).set_index(["foundation", "answer"])["count"]
    assert table[("fairness", "disagrees")] == 1 and table[("fairness", "agrees")] == 1
    assert table[("authority", "disagrees")] == 1 and table.sum() == 3
    sev = stats.mic_severity_consensus_table(ds)
    assert sev.loc[4, 5] == 1 and sev.loc[3, 5] == 1 and sev.values.sum() == 2  # the -1 row left out
    overview = stats.mic_overview({"test": ds})
    assert overview.loc["test", "prompts"] == 1 and overview.loc["test", "disagrees"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------- CLI
def test_cli_validate(capsys):
    assert main(["data", "validate", str(FIXTURES / "mic_bad.csv"), "--kind", "mic"]) == 1
    out = capsys.readouterr().out
    assert "row 3, field 'A_agrees'" in out and "skipped 5" in out and "FAILED" in out
    assert main(["data", "validate", str(FIXTURES / "prosocial_hub.jsonl"), "--kind", "prosocial"]) == 0
    assert "OK: no bad rows" in capsys.readouterr().out
    assert main(["data", "validate", str(FIXTURES / "mic_sample.csv")]) == 2  # no --kind
    from prosocial_lib.data import load_subtle
    from prosocial_lib.data.subtle import EMBEDDED_FILE

    assert main(["data", "validate", str(EMBEDDED_FILE), "--kind", "subtle"]) == 0
    n = len(load_subtle())
    assert f"read {n} rows, kept {n}" in capsys.readouterr().out


def test_cli_summary_and_export(tmp_path, capsys):
    folder = tmp_path / "pd"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copy(FIXTURES / "prosocial_hub.jsonl", folder / f"{split}.jsonl")
    code = main(["data", "summary", "--preset", "smoke", "--kind", "prosocial",
                 "--set", f"data.prosocial_source={folder}"])
    out = capsys.readouterr().out
    assert code == 0 and "turns per dialogue" in out and "validation" in out and "ethics_amt" in out
    code = main(["data", "summary", str(FIXTURES / "mic_sample.csv"), "--kind", "mic"])
    assert code == 0 and "rows per prompt" in capsys.readouterr().out
    out_file = tmp_path / "dev.jsonl"
    code = main(["data", "export", "--kind", "mic", "--split", "dev", "--out", str(out_file),
                 "--set", f"data.mic_source={FIXTURES / 'mic_sample.csv'}"])
    assert code == 0 and len(out_file.read_text().splitlines()) == 2
    assert main(["data", "summary", "--preset", "smoke", "--kind", "subtle"]) == 0
    out = capsys.readouterr().out
    assert "subtle contexts (embedded)" in out and "words in last turn" in out
