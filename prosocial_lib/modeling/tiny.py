"""A tiny random model and tokenizer for tests and the smoke preset."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from .chat import CHATML_TEMPLATE
from .embedded import _atomic_build, _cache_ok, _verify_chat_template
from .runtime import cache_root

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_VOCAB_SIZE = 1024
TINY_TOKENIZER_VERSION = 1  # bump when the tokenizer recipe changes (invalidates the cache)
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)


# ---------------------------------------------------------------------- "tiny": a random model, real tokenizer
def _tiny_training_text(max_messages: int = 20000) -> list[str]:
    """Real chat text for the tiny tokenizer: the first messages of ``chitchat-dataset`` (offline), plus a few
    safety-flavoured lines so words of the book's domain get their own tokens."""
    lines = [
        "You should not do that. It's wrong to hurt other people, and it could get you in trouble.",
        "I understand that you are upset, but threatening someone is never okay. Maybe talk to a friend?",
        "It's good to be honest with your friends. Lying can damage trust in a relationship.",
        "That sounds like fun! What are you planning to do this weekend?",
    ]
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is not None and spec.origin:
        data_file = Path(spec.origin).parent / "dataset.json"
        with open(data_file) as fh:
            data = json.load(fh)
        for key in sorted(data)[:2000]:
            for msg in data[key]["messages"]:
                lines.append(" ".join(u["text"] for u in msg))
                if len(lines) >= max_messages:
                    return lines
    return lines


def build_tiny_tokenizer(cache_dir: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer (1k vocab, any text encodes) with ChatML special tokens and template,
    trained once in-process and cached (a 49k vocabulary makes tiny models ~14x slower).

    Args:
        cache_dir: the model cache (:func:`~prosocial_lib.modeling.runtime.cache_root`); the tokenizer lives in
            ``tiny-tokenizer-v<TINY_TOKENIZER_VERSION>`` there, built atomically.

    Returns:
        A ``PreTrainedTokenizerFast`` (pad ``<|pad|>``, eos ``<|im_end|>``, the ChatML template).
    """
    from transformers import PreTrainedTokenizerFast
    target = cache_root(cache_dir) / f"tiny-tokenizer-v{TINY_TOKENIZER_VERSION}"
    if not _cache_ok(target):
        def build(tmp: Path) -> dict[str, Any]:
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
            t0 = time.perf_counter()
            bpe = Tokenizer(models.BPE())
            bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            bpe.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=TINY_SPECIAL_TOKENS,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=False)
            bpe.train_from_iterator(_tiny_training_text(), trainer=trainer)
            tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                          unk_token="<|endoftext|>", pad_token="<|pad|>")
            tok.chat_template = CHATML_TEMPLATE
            _verify_chat_template(tok, "tiny")
            tok.save_pretrained(str(tmp))
            # a config.json marks the folder as complete for _cache_ok; it records the recipe
            (tmp / "config.json").write_text(json.dumps({"vocab_size": len(tok), "recipe": "byte-level BPE"}))
            return {"train_seconds": round(time.perf_counter() - t0, 1)}
        _atomic_build(target, build)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(target))


def build_tiny_model(seed: int = 0, cache_dir: str | os.PathLike | None = None):
    """A random 2-layer Llama (hidden 64) sized to the tiny tokenizer; the same seed gives the same weights.

    For the tests and the smoke preset (seconds on a CPU); it does not touch the global random state.

    Args:
        seed: seeds the weight initialisation.
        cache_dir: where the tiny tokenizer is cached (:func:`build_tiny_tokenizer`).

    Returns:
        ``(model, tokenizer)``: a ``LlamaForCausalLM`` (:data:`TINY_ARCH`) and its tokenizer.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tiny_tokenizer(cache_dir)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_ARCH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.name_or_path = "tiny"
    return model, tok
