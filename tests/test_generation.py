"""Batched generation: greedy batches equal one-at-a-time greedy, seeded sampling is reproducible whatever the
batch, replies stop at the end of the turn, and template-less models (DialoGPT, BlenderBot) get their format."""

import math

import pytest
import torch

from prosocial_lib.modeling.chat import (
    BLENDERBOT_CHAT_TEMPLATE,
    GenerationInputError,
    format_prompt,
    has_native_format,
    stop_token_ids,
)
from prosocial_lib.modeling.generation import (
    SeededGumbelSampler,
    decode_reply,
    generate_replies,
    length_batches,
)
from prosocial_lib.modeling.loading import load_model_and_tokenizer
from prosocial_lib.modeling.tiny import TINY_ARCH, build_tiny_tokenizer

torch.set_num_threads(1)

HISTORIES = [
    ["hi there"],
    ["I want to punch my neighbour because he is loud", "Why would you do that?", "he is annoying"],
    ["what is up?"],
    ["tell me a joke please, a long one with many words in it"],
    ["ok"],
]


@pytest.fixture(scope="module")
def lm():
    """A random 2-layer Llama with the tiny tokenizer. Untied embeddings: a tied random model only repeats the
    prompt's last token (a newline), which would make the greedy tests vacuous."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **TINY_ARCH)
    return LlamaForCausalLM(config).eval(), tok


def test_greedy_batch_equals_one_at_a_time(lm):
    model, tok = lm
    batched = generate_replies(model, tok, HISTORIES, max_new_tokens=12, batch_size=4, progress=False)
    single = [generate_replies(model, tok, [h], max_new_tokens=12, batch_size=1, progress=False)[0]
              for h in HISTORIES]
    assert batched == single
    assert all(len(r) == 1 for r in batched)
    assert sum(len(r[0]) for r in batched) > 0, "random untied model should say something"
    assert tok.padding_side == "right", "the tokenizer's padding side must be restored"


def test_length_batches_keep_padded_prompts_within_a_token_budget():
    lengths = [300, 120, 110, 100, 100, 90, 80, 20, 10, 10]
    rows = list(range(len(lengths)))
    assert length_batches(rows, lengths, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # no budget: batch_size rows
    # 400 tokens: the 300-token prompt goes alone, the next three fill the budget
    assert length_batches(rows, lengths, 4, max_tokens=400) == [[0], [1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert length_batches(rows, lengths, 2, max_tokens=10_000) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert length_batches(rows, lengths, 4, max_tokens=50) == [[r] for r in rows[:7]] + [[7, 8], [9]]
    for batch_size in (1, 3, 8):  # every row exactly once, in order
        assert sum(length_batches(rows, lengths, batch_size), []) == rows
    assert length_batches([], [], 4) == []
    with pytest.raises(ValueError, match="sorted"):
        length_batches([0, 1], [5, 9], 2)


def test_a_token_budget_changes_batches_not_replies(lm):
    model, tok = lm
    plain = generate_replies(model, tok, HISTORIES, max_new_tokens=8, batch_size=4, progress=False)
    assert generate_replies(model, tok, HISTORIES, max_new_tokens=8, batch_size=4, max_batch_tokens=40,
                            progress=False) == plain


def test_greedy_samples_are_copies(lm):
    model, tok = lm
    out = generate_replies(model, tok, HISTORIES[:2], max_new_tokens=6, num_samples=3, progress=False)
    assert [len(r) for r in out] == [3, 3]
    assert all(len(set(r)) == 1 for r in out)


def test_seeded_sampling_is_reproducible_across_batch_sizes_and_order(lm):
    model, tok = lm
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=0.95, num_samples=2, progress=False)
    a = generate_replies(model, tok, HISTORIES, batch_size=3, seed=7, **kw)
    b = generate_replies(model, tok, HISTORIES[::-1], batch_size=1, seed=7, **kw)[::-1]
    torch.manual_seed(123)  # global RNG state must not matter
    c = generate_replies(model, tok, HISTORIES, batch_size=8, seed=7, **kw)
    assert a == b == c
    d = generate_replies(model, tok, HISTORIES, batch_size=3, seed=8, **kw)
    assert d != a
    assert any(r[0] != r[1] for r in a), "two samples of a context should differ"


def test_system_prompt_reaches_the_prompt(lm):
    _, tok = lm
    text = format_prompt(tok, ["hello", "hi!", "how are you?"], system_prompt="Be kind.")
    assert text == ("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
                    "<|im_start|>assistant\nhi!<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_gumbel_sampler_samples_the_softmax():
    # probabilities 1/8, 2/8, 5/8 and one token top-p removed (-inf): never drawn
    logits = torch.tensor([0.0, math.log(2), math.log(5), -math.inf])
    n = 4000
    sampler = SeededGumbelSampler(range(n))
    picks = sampler(None, logits.repeat(n, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).float() / n
    assert freq[3] == 0
    assert freq[:3].tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.03)
    again = SeededGumbelSampler(range(n))(None, logits.repeat(n, 1)).argmax(-1)
    assert torch.equal(picks, again)


def test_decode_stops_at_end_of_turn_and_strips_special_tokens(lm):
    _, tok = lm
    stops = stop_token_ids(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    ids = tok("Hello there", add_special_tokens=False)["input_ids"]
    im_end, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    more = tok(" never shown", add_special_tokens=False)["input_ids"]
    assert decode_reply(tok, [pad] + ids + [im_end] + more, stops) == "Hello there"


def test_bad_input_is_refused(lm):
    model, tok = lm
    with pytest.raises(GenerationInputError, match="history 1"):
        generate_replies(model, tok, [["ok"], []], progress=False)
    with pytest.raises(GenerationInputError, match="history 0"):
        generate_replies(model, tok, ["a plain string"], progress=False)
    with pytest.raises(GenerationInputError, match="temperature"):
        generate_replies(model, tok, [["ok"]], do_sample=True, temperature=0, progress=False)
    assert generate_replies(model, tok, [], progress=False) == []


def test_long_prompts_are_cut_from_the_left(lm):
    model, tok = lm
    long = [" ".join(["word"] * 300)]
    out = generate_replies(model, tok, [long], max_new_tokens=4, max_prompt_tokens=32, progress=False)
    assert len(out) == 1 and isinstance(out[0][0], str)


# ---------------------------------------------------------------------- models without a chat template
def _save_native(tmp_path, name, model):
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    folder = tmp_path / name
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_dialogpt_style_model_gets_its_native_format(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = _save_native(tmp_path, "tiny-DialoGPT", GPT2LMHeadModel(config))
    assert has_native_format(folder)
    model, tok = load_model_and_tokenizer(folder)
    assert format_prompt(tok, ["hi", "hello", "how are you?"]) == "hi<|im_end|>hello<|im_end|>how are you?<|im_end|>"
    # GPT-2 has learned absolute positions: left padding is only right if positions follow the attention mask
    batched = generate_replies(model, tok, HISTORIES, max_new_tokens=6, batch_size=4, progress=False)
    single = [generate_replies(model, tok, [h], max_new_tokens=6, batch_size=1, progress=False)[0]
              for h in HISTORIES]
    assert batched == single
    with pytest.raises(Exception, match="no system prompt"):
        generate_replies(model, tok, HISTORIES[:1], system_prompt="Be safe.", progress=False)


def test_blenderbot_style_seq2seq_model_generates(tmp_path):
    from transformers import BlenderbotConfig, BlenderbotForConditionalGeneration
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = BlenderbotConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                              encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              decoder_start_token_id=tok.bos_token_id, forced_eos_token_id=None)
    folder = _save_native(tmp_path, "tiny-blenderbot", BlenderbotForConditionalGeneration(config))
    model, tok = load_model_and_tokenizer(folder)
    assert tok.chat_template == BLENDERBOT_CHAT_TEMPLATE
    assert format_prompt(tok, ["hi", "hello", "how are you?"]) == " hi  hello   how are you?<|im_end|>"
    batched = generate_replies(model, tok, HISTORIES, max_new_tokens=8, batch_size=4, progress=False)
    single = [generate_replies(model, tok, [h], max_new_tokens=8, batch_size=1, progress=False)[0]
              for h in HISTORIES]
    assert batched == single
    # a prompt longer than the encoder's 64 positions is cut, not crashed on
    out = generate_replies(model, tok, [[" ".join(["word"] * 200)]], max_new_tokens=4, progress=False)
    assert len(out) == 1
