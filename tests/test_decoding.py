"""Coherent decoding: sentence ends and trimming, the truncation / repetition measures (values computed by hand),
the no-repeat ban wired into generation on the reply's tokens only, and trimming of replies cut by the limit."""

import math

import pandas as pd
import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from prosocial_lib.config import get_config
from prosocial_lib.config.coerce import ConfigError
from prosocial_lib.data.texts import ends_sentence, trim_to_sentence
from prosocial_lib.eval.quality import (
    SHAPE_COLUMNS,
    is_repetitive,
    is_truncated,
    quality_table,
    reply_shape,
    seq_rep_n,
    shape_table,
)
from prosocial_lib.modeling import generation as gen_module
from prosocial_lib.modeling.chat import stop_token_ids
from prosocial_lib.modeling.generation import ReplyOnly, generate_replies, hit_limit, repetition_processors
from prosocial_lib.modeling.tiny import TINY_ARCH, build_tiny_tokenizer

torch.set_num_threads(1)

LOOP = "I'm sorry for your loss, but I'm sorry I've lost you. I'm sorry I've lost you."
HISTORIES = [["hi there"], ["I want to punch my neighbour because he is loud", "Why?", "he is annoying"],
             ["what is up?"], ["tell me a joke please, a long one with many words in it"]]


# ---------------------------------------------------------------------- sentence ends and trimming
@pytest.mark.parametrize("text, ends", [
    ("Done.", True), ("Really?!", True), ("Wait...", True), ('He said "stop."', True), ("(as I said.)", True),
    ("Have a nice day 😊", True), ("  Fine!  ", True), ("I think that", False), ("It costs 3.5", False),
    ("Yes, but", False), ("", False), ("   ", False)])
def test_ends_sentence(text, ends):
    assert ends_sentence(text) is ends


@pytest.mark.parametrize("text, trimmed", [
    ("I'm sorry to hear that. Maybe you could talk to", "I'm sorry to hear that."),
    ("One! Two? Three and", "One! Two?"),
    ('She said "no." And then she', 'She said "no."'),
    ("Well... I think", "Well..."),
    ("It costs 3.5 dollars and", "It costs 3.5 dollars and"),  # "3.5" is no boundary: nothing to cut back to
    ("no boundary at all", "no boundary at all"),
    ("Complete sentence.", "Complete sentence."),
    ("Complete. ", "Complete."),
    ("", ""),
])
def test_trim_to_sentence(text, trimmed):
    assert trim_to_sentence(text) == trimmed


def test_text_functions_refuse_non_strings():
    for fn in (ends_sentence, trim_to_sentence, is_truncated, seq_rep_n):
        with pytest.raises(TypeError):
            fn(["a list"])
    with pytest.raises(TypeError):
        reply_shape("one bare reply")
    with pytest.raises(ValueError):
        seq_rep_n("a b c", 0)


# ---------------------------------------------------------------------- truncation and repetition, by hand
def test_seq_rep_n_hand_computed():
    # words: i'm sorry for your loss but i'm sorry i've lost you i'm sorry i've lost you = 16 -> 13 4-grams;
    # "i'm sorry i've lost" and "sorry i've lost you" occur twice: 11 unique, seq-rep-4 = 1 - 11/13 = 2/13
    assert seq_rep_n(LOOP) == pytest.approx(2 / 13)
    assert is_repetitive(LOOP)
    # "a b a b a": bigrams ab ba ab ba -> 2 unique of 4: 0.5; 4-grams abab baba: none repeats
    assert seq_rep_n("a b a b a", 2) == pytest.approx(0.5)
    assert seq_rep_n("a b a b a", 4) == 0.0 and not is_repetitive("a b a b a")
    assert seq_rep_n("Too short.") == 0.0  # fewer than 4 words: nothing can repeat
    # case and punctuation do not hide a repeat (words are lower-cased, punctuation dropped)
    assert is_repetitive("Thank you so much. thank you, so MUCH!")
    assert not is_repetitive("Thank you so much for asking, I am fine.")


def test_is_truncated_hand_cases():
    assert is_truncated("I'm sorry for your loss, but I")
    assert not is_truncated("I'm sorry for your loss.")
    assert not is_truncated("")  # empty replies are counted apart (empty_replies)
    shape = reply_shape([LOOP, "Hello there", "", "Fine, thanks!"])
    assert shape["truncated"].tolist() == [False, True, False, False]
    assert shape["repetitive"].tolist() == [True, False, False, False]
    assert shape["seq_rep"].tolist() == pytest.approx([2 / 13, 0, 0, 0])


def test_shape_table_rates_per_system():
    df = pd.DataFrame({"system": ["a"] * 4 + ["b"] * 2, "context_id": list("wxyz") + list("wx"),
                       "reply": [LOOP, "Hello there", "Fine.", "Fine, and you", "Ok.", "Good."]})
    t = shape_table(df, n_boot=200).set_index("system")
    # system a: truncated 2/4 ("Hello there", "Fine, and you"), repetitive 1/4 (LOOP); b: 0/2 and 0/2
    assert t.loc["a", "replies"] == 4 and t.loc["a", "truncated"] == 0.5 and t.loc["a", "repetitive"] == 0.25
    assert t.loc["b", "truncated"] == 0.0 and t.loc["b", "repetitive"] == 0.0
    assert t.loc["a", "mean_seq_rep"] == pytest.approx(2 / 13 / 4)
    for c in SHAPE_COLUMNS:
        assert (t[f"{c} low"] <= t[c]).all() and (t[c] <= t[f"{c} high"]).all()
    assert t.loc["b", "truncated high"] > 0  # 0/2 still carries an interval (Wilson)
    with pytest.raises(KeyError, match="reply"):
        shape_table(df.drop(columns="reply"))


def test_quality_table_reports_the_shape_rates():
    df = pd.DataFrame({"system": ["a"] * 4, "context_set": ["adversarial"] * 4, "response": [""] * 4,
                       "reply": [LOOP, "Hello there", "Fine.", "Fine, and you"]})
    q = quality_table(df).iloc[0]
    assert q["truncated"] == 0.5 and q["repetitive"] == 0.25


# ---------------------------------------------------------------------- the ban in generation
def test_reply_only_ignores_the_prompt():
    # prompt [5, 6, 5]; a plain bigram ban forbids 6 after the last 5 (the prompt holds "5 6")
    ids = torch.tensor([[5, 6, 5]])
    plain = NoRepeatNGramLogitsProcessor(2)(ids, torch.zeros(1, 8))
    assert plain[0, 6] == -math.inf
    reply_only = ReplyOnly(NoRepeatNGramLogitsProcessor(2), prompt_width=3)(ids, torch.zeros(1, 8))
    assert torch.isfinite(reply_only).all()
    # reply [1, 2, 1] after the prompt: now "1 2" is the reply's own bigram and 2 is banned after 1
    ids = torch.tensor([[5, 6, 5, 1, 2, 1]])
    scores = ReplyOnly(NoRepeatNGramLogitsProcessor(2), prompt_width=3)(ids, torch.zeros(1, 8))
    assert scores[0, 2] == -math.inf and torch.isfinite(scores[0, [0, 1, 3, 4, 5, 6, 7]]).all()
    assert len(repetition_processors(0, 1.0, 3)) == 0 and len(repetition_processors(3, 1.2, 3)) == 2


@pytest.fixture(scope="module")
def lm():
    """A random 2-layer Llama with the tiny tokenizer (untied: greedy replies vary and repeat tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **TINY_ARCH)
    return LlamaForCausalLM(config).eval(), tok


def _reply_ids(monkeypatch, model, tok, **kw):
    """The new token ids of every reply (cut at the end of the turn), recorded from the generation batches."""
    seen = []
    original = gen_module._generate_batch

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.extend(out)
        return out

    monkeypatch.setattr(gen_module, "_generate_batch", spy)
    generate_replies(model, tok, HISTORIES, progress=False, **kw)
    stops = set(stop_token_ids(tok, model))
    return [ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))] for ids in seen]


def _repeats(ids, n):
    grams = [tuple(ids[i: i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram_size_bans_repeats_in_the_reply(lm, monkeypatch, n):
    model, tok = lm
    free = _reply_ids(monkeypatch, model, tok, max_new_tokens=24, batch_size=4)
    assert sum(_repeats(ids, n) for ids in free) > 0, "the random model should repeat itself without the ban"
    banned = _reply_ids(monkeypatch, model, tok, max_new_tokens=24, batch_size=4, no_repeat_ngram_size=n)
    assert all(_repeats(ids, n) == 0 for ids in banned)
    assert banned != free


def test_ban_keeps_batches_and_seeds_reproducible(lm):
    model, tok = lm
    kw = dict(max_new_tokens=12, no_repeat_ngram_size=2, repetition_penalty=1.3, progress=False)
    greedy = generate_replies(model, tok, HISTORIES, batch_size=4, **kw)
    assert greedy == [generate_replies(model, tok, [h], batch_size=1, **kw)[0] for h in HISTORIES]
    kw.update(do_sample=True, temperature=1.0, top_p=0.95, num_samples=2)
    a = generate_replies(model, tok, HISTORIES, batch_size=3, seed=7, **kw)
    b = generate_replies(model, tok, HISTORIES[::-1], batch_size=1, seed=7, **kw)[::-1]
    assert a == b
    assert a != generate_replies(model, tok, HISTORIES, batch_size=3, seed=8, **kw)


def test_bad_repetition_settings_are_refused(lm):
    from prosocial_lib.modeling.chat import GenerationInputError
    model, tok = lm
    with pytest.raises(GenerationInputError, match="no_repeat_ngram_size"):
        generate_replies(model, tok, HISTORIES, no_repeat_ngram_size=-1, progress=False)
    with pytest.raises(GenerationInputError, match="repetition_penalty"):
        generate_replies(model, tok, HISTORIES, repetition_penalty=0.0, progress=False)


# ---------------------------------------------------------------------- trimming replies cut by the limit
def test_hit_limit():
    assert hit_limit([4, 5, 6], [2]) and not hit_limit([4, 2, 0, 0], [2]) and hit_limit([], [2])


def test_only_replies_that_hit_the_limit_are_trimmed(lm, monkeypatch):
    model, tok = lm
    stops = stop_token_ids(tok, model)
    # rows 0 and 2 end their turn, rows 1 and 3 run into the limit; every decoded text reads "One. Two"
    fake = [[7, stops[0]], [7, 8, 9], [7, stops[0]], [7, 8, 9]]
    monkeypatch.setattr(gen_module, "_generate_batch", lambda model, tok, ids, proc, kw: fake[: len(ids)])
    monkeypatch.setattr(gen_module, "decode_reply", lambda tok, ids, stops: "One. Two")
    out = [r[0] for r in generate_replies(model, tok, HISTORIES, max_new_tokens=3, batch_size=4, progress=False,
                                          trim_to_sentence=True)]
    assert sorted(out) == ["One.", "One.", "One. Two", "One. Two"]
    assert out[1] == "One. Two"  # the longest prompt is the batch's first row, which ended its turn
    kept = generate_replies(model, tok, HISTORIES, max_new_tokens=3, batch_size=4, progress=False)
    assert all(r[0] == "One. Two" for r in kept)


# ---------------------------------------------------------------------- configuration
def test_generation_config_defaults_and_checks():
    cpu, smoke, gpu = get_config("cpu"), get_config("smoke"), get_config("gpu")
    assert cpu.generation.max_new_tokens == 64 and gpu.generation.max_new_tokens == 64
    assert smoke.generation.max_new_tokens <= 8  # CI stays fast
    for cfg in (cpu, smoke, gpu):
        assert cfg.generation.no_repeat_ngram_size == 4 and cfg.generation.trim_to_sentence
        assert cfg.generation.repetition_penalty == 1.0
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        get_config("smoke", {"generation.no_repeat_ngram_size": -1})
    with pytest.raises(ConfigError, match="repetition_penalty"):
        get_config("smoke", {"generation.repetition_penalty": 0})
