"""Every metric against values computed by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from prosocial_lib.config import get_config
from prosocial_lib.eval.metrics import (
    bootstrap_ci,
    expected_max,
    flag_rate,
    paired_difference,
    preachiness_rate,
    prob_at_least_one,
    rate_with_ci,
    rot_agreement_rate,
    summarize,
    unsafe_rate,
)
from prosocial_lib.eval.quality import (
    bleu4,
    distinct_n,
    gold_perplexity,
    mean_unigram_f1,
    normalize_answer,
    reply_lengths,
    unigram_f1,
)
from prosocial_lib.modeling.tiny import TINY_ARCH, build_tiny_tokenizer

torch.set_num_threads(1)


# ---------------------------------------------------------------------- bootstrap
def wilson_by_hand(k, n, z=1.959963984540054):
    """Wilson (1927): (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_rate_with_ci_degenerate_and_empty():
    # all successes / all failures: the bootstrap has nothing to resample, the interval is Wilson's (this test used
    # to assert the zero-width (1, 1, 1) and (0, 0, 0): that encoded issue #15's ci-edges bug)
    assert rate_with_ci([True, True, True]) == pytest.approx((1.0, *wilson_by_hand(3, 3)))
    assert rate_with_ci([0, 0]) == pytest.approx((0.0, *wilson_by_hand(0, 2)))
    assert rate_with_ci([0, 0]).method == "wilson"
    assert all(math.isnan(v) for v in rate_with_ci([]))
    assert not rate_with_ci([]).estimable
    with pytest.raises(ValueError, match="booleans"):
        rate_with_ci([0.3, 1.0])


def test_rate_with_ci_two_values_hand_computed():
    # resampling [1, 0]: the mean is 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4. So the 95% interval is [0, 1] and
    # the 40% interval (30th and 70th percentiles) is [0.5, 0.5].
    assert rate_with_ci([1, 0], n_boot=4000, seed=0) == (0.5, 0.0, 1.0)
    assert rate_with_ci([1, 0], n_boot=4000, confidence=0.4, seed=0) == (0.5, 0.5, 0.5)


def test_rate_with_ci_matches_the_normal_approximation_for_large_n():
    # p = 0.3, n = 1000: standard error sqrt(0.3 * 0.7 / 1000) = 0.01449, 95% half width 1.96 * se = 0.0284
    flags = np.array([1] * 300 + [0] * 700)
    rate, lo, hi = rate_with_ci(flags, n_boot=4000, seed=1)
    assert rate == 0.3
    assert lo == pytest.approx(0.3 - 0.0284, abs=0.004)
    assert hi == pytest.approx(0.3 + 0.0284, abs=0.004)


def test_bootstrap_is_deterministic_for_a_seed():
    flags = np.random.default_rng(5).random(50) < 0.4
    assert rate_with_ci(flags, 500, 0.95, seed=3) == rate_with_ci(flags, 500, 0.95, seed=3)
    assert rate_with_ci(flags, 500, 0.95, seed=3) != rate_with_ci(flags, 500, 0.95, seed=4)


def test_cluster_bootstrap_resamples_whole_contexts():
    # values [1, 1, 1, 0] in clusters a, a, a, b. Drawing 2 of the 2 clusters: {a, a} -> 1, {a, b} -> 0.75,
    # {b, b} -> 0, with probabilities 1/4, 1/2, 1/4: the 40% interval is [0.75, 0.75], the 95% one [0, 1].
    values, clusters = [1, 1, 1, 0], ["a", "a", "a", "b"]
    assert rate_with_ci(values, 4000, 0.4, seed=0, clusters=clusters) == (0.75, 0.75, 0.75)
    assert rate_with_ci(values, 4000, 0.95, seed=0, clusters=clusters) == (0.75, 0.0, 1.0)


def test_cluster_bootstrap_with_equal_clusters():
    # [1, 1 | 0, 0] in clusters a | b: resampled means 1, 0.5, 0 with probabilities 1/4, 1/2, 1/4
    values, clusters = [1, 1, 0, 0], ["a", "a", "b", "b"]
    assert rate_with_ci(values, 4000, 0.4, seed=0, clusters=clusters) == (0.5, 0.5, 0.5)
    assert rate_with_ci(values, 4000, 0.95, seed=0, clusters=clusters) == (0.5, 0.0, 1.0)


def test_paired_difference_hand_computed():
    # per-context differences [1, 0, 0, 0]: mean 0.25; resampled means are k/4 for k ~ Binomial(4, 1/4), so the
    # 2.5% percentile is 0 (P(k=0) = 0.32) and the 97.5% one 0.75 (P(k<=2) = 0.949, P(k<=3) = 0.996)
    est, lo, hi = paired_difference([1, 1, 0, 0], [0, 1, 0, 0], n_boot=4000)
    assert (est, lo, hi) == (0.25, 0.0, 0.75)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1, 0], [1])


def test_bootstrap_ci_with_a_custom_statistic():
    est, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 10.0], statistic=np.median, n_boot=300)
    assert est == 2.5
    assert 1.0 <= lo <= est <= hi <= 10.0


# ---------------------------------------------------------------------- k samples per context
def test_expected_max_and_prob_at_least_one():
    scores = [[0.1, 0.9], [0.3, 0.2]]
    # maxima 0.9 and 0.3 -> mean 0.6; at least one >= 0.5: yes, no -> 0.5; >= 0.3 (inclusive): yes, yes -> 1
    assert expected_max(scores, n_boot=200)[0] == pytest.approx(0.6)
    assert prob_at_least_one(scores, n_boot=200)[0] == 0.5
    # both contexts have a hit: 2/2 -> Wilson's interval, not the bootstrap's [1, 1]
    assert prob_at_least_one(scores, threshold=0.3, n_boot=200) == pytest.approx((1.0, *wilson_by_hand(2, 2)))
    est, lo, hi = expected_max(scores, n_boot=2000)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.9)  # all-0.3 and all-0.9 resamples occur
    with pytest.raises(ValueError, match="shape"):
        expected_max([0.1, 0.2])


# ---------------------------------------------------------------------- quality
def test_bleu4_hand_computed():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat": clipped n-gram precisions 5/6, 3/5, 2/4, 1/3,
    # equal lengths (brevity penalty 1): BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = 0.53728
    assert bleu4(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(53.728, abs=0.01)
    assert bleu4(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="references"):
        bleu4(["a"], [])


def test_unigram_f1_hand_computed():
    assert normalize_answer("The cat, sat!  An apple.") == "cat sat apple"
    # "cat sat" vs "cat sat on mat": 2 common, precision 1, recall 1/2 -> F1 = 2/3
    assert unigram_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    # repeated words are clipped: "no no no" vs "no way": 1 common, P 1/3, R 1/2 -> F1 = 0.4
    assert unigram_f1("no no no", "no way") == pytest.approx(0.4)
    assert unigram_f1("", "anything") == 0.0
    assert mean_unigram_f1(["The cat sat.", "no no no"], ["a cat sat on the mat", "no way"]) == pytest.approx(
        (2 / 3 + 0.4) / 2)


def test_distinct_n_and_lengths_hand_computed():
    texts = ["a b a", "B a"]
    # unigrams a b a b a: 2 unique / 5; bigrams (a b) (b a) (b a): 2 unique / 3
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert distinct_n(["hi."], 1) == 1.0  # punctuation is not a word (data.texts.distinct_n, the book's one)
    assert math.isnan(distinct_n(["one"], 2))
    assert reply_lengths(["I am fine, thanks.", "", "ok"]) == [4, 0, 1]


def test_quality_metrics_refuse_a_bare_string():
    # issue #15 metrics-bare-string: a single reply as a str was scored character by character
    with pytest.raises(TypeError, match="hypotheses: expected a list of texts"):
        mean_unigram_f1("I am fine", "I am fire")  # was 0.556; the list form gives 2/3
    assert mean_unigram_f1(["I am fine"], ["I am fire"]) == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match="list of texts"):
        distinct_n("hello world", 1)  # was 0.7; the list form gives 1.0
    assert distinct_n(["hello world"], 1) == 1.0
    with pytest.raises(TypeError, match="list of texts"):
        bleu4("the cat sat", "a dog lay on a rug")  # was "11 hypotheses but 18 references"
    with pytest.raises(TypeError, match="list of texts"):
        bleu4("abc", "abd")  # equal lengths: was a silent character-level BLEU
    # new instances: reply lengths of one str, a list where unigram_f1 wants one reply, a list of replies given as
    # references to a str hypothesis, bare-string histories / responses for the perplexity
    with pytest.raises(TypeError, match="list of texts"):
        reply_lengths("I am fine, thanks.")  # was [1, 1, 1, ...] per character
    with pytest.raises(TypeError, match="one str"):
        unigram_f1(["I am fine"], ["I am fire"])
    with pytest.raises(TypeError, match="hypotheses"):
        mean_unigram_f1("ab", ["a", "b"])
    with pytest.raises(TypeError, match="responses"):
        gold_perplexity(None, None, [["hi"]], "Hello there")
    with pytest.raises(TypeError, match=r"histories\[0\]"):
        gold_perplexity(None, None, ["hi there"], ["Hello"])  # a history is a list of turns, not one str
    with pytest.raises(TypeError, match="histories"):
        gold_perplexity(None, None, "hi there", ["Hello"])


# ---------------------------------------------------------------------- perplexity
@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         **TINY_ARCH)
    return LlamaForCausalLM(config).eval(), tok


HISTORIES = [["hi there"], ["I want to punch him", "Why?", "he is loud and annoying"], ["what is up?"]]
RESPONSES = ["Hello! How are you?", "Hurting him is not okay.", "Not much, you?"]


def test_gold_perplexity_of_a_uniform_model_is_the_vocabulary_size(lm):
    model, tok = lm
    uniform = type(model)(model.config).eval()
    torch.nn.init.zeros_(uniform.lm_head.weight)  # all logits 0: every token has probability 1 / V
    ppl = gold_perplexity(uniform, tok, HISTORIES, RESPONSES, batch_size=2)
    assert ppl == pytest.approx(model.config.vocab_size, rel=1e-4)


def test_gold_perplexity_is_token_weighted_and_batch_independent(lm):
    model, tok = lm
    singles = [gold_perplexity(model, tok, [h], [r], batch_size=1) for h, r in zip(HISTORIES, RESPONSES)]
    # response tokens = the reply plus the end-of-turn token <|im_end|>
    counts = [len(tok(r + "<|im_end|>", add_special_tokens=False)["input_ids"]) for r in RESPONSES]
    expected = math.exp(sum(n * math.log(p) for n, p in zip(counts, singles)) / sum(counts))
    assert gold_perplexity(model, tok, HISTORIES, RESPONSES, batch_size=3) == pytest.approx(expected, rel=1e-4)
    assert gold_perplexity(model, tok, HISTORIES, RESPONSES, batch_size=2) == pytest.approx(expected, rel=1e-4)


def test_gold_perplexity_counts_only_the_response(lm):
    # the context must not change which tokens are scored: the uniform model gives V whatever the context
    model, tok = lm
    uniform = type(model)(model.config).eval()
    torch.nn.init.zeros_(uniform.lm_head.weight)
    long_ctx = [["a much longer context " * 20]]
    assert gold_perplexity(uniform, tok, long_ctx, ["ok"], max_length=24) == pytest.approx(
        model.config.vocab_size, rel=1e-4)


# ---------------------------------------------------------------------- tables
@pytest.fixture()
def judged():
    return pd.DataFrame({
        "system": ["A"] * 4 + ["B"] * 4,
        "context_set": ["adversarial", "adversarial", "casual", "casual"] * 2,
        "context_id": [0, 1, 2, 3] * 2,
        "unsafe": [True, False, False, False, True, True, False, True],
        "violates_rot": [True, False, None, None, True, True, None, None],
        "preachy": [False, False, True, False, False, False, True, True],
    })


def test_rates_over_judge_columns(judged):
    a = judged[judged.system == "A"]
    assert unsafe_rate(a, n_boot=100)[0] == 0.25
    assert preachiness_rate(a[a.context_set == "casual"], n_boot=100)[0] == 0.5
    # violates_rot judged on 2 rows of A (1 violation): agreement = 1 - 1/2
    assert rot_agreement_rate(a, n_boot=100)[0] == 0.5
    assert flag_rate(a, "violates_rot", n_boot=100)[0] == 0.5
    with pytest.raises(KeyError, match="no judge column"):
        flag_rate(a, "toxic")


def test_summarize_schema_and_values(judged):
    cfg = get_config("smoke")
    s = summarize(judged, ["system", "context_set"], cfg.stats, seed=cfg.seed)
    assert list(s.columns) == ["system", "context_set", "metric", "rate", "ci_low", "ci_high", "n", "n_clusters",
                               "method", "estimable"]
    row = s[(s.system == "B") & (s.context_set == "adversarial") & (s.metric == "unsafe")].iloc[0]
    # 2 of 2 unsafe: Wilson's [0.342, 1], no longer the zero-width [1, 1]
    assert (row.rate, row.n, row.n_clusters, row.method) == (1.0, 2, 2, "wilson")
    assert (row.ci_low, row.ci_high) == pytest.approx(wilson_by_hand(2, 2))
    row = s[(s.system == "B") & (s.context_set == "casual") & (s.metric == "unsafe")].iloc[0]
    assert (row.rate, row.n) == (0.5, 2)
    # violates_rot is missing on casual rows: no casual violates_rot row in the summary
    assert s[(s.context_set == "casual") & (s.metric == "violates_rot")].empty
    assert set(s.metric) == {"unsafe", "violates_rot", "preachy"}
    assert (s.ci_low <= s.rate).all() and (s.rate <= s.ci_high).all()
