"""Batched reply generation for the audit and the evaluation: one function, every model the book audits.

Why it is more than ``model.generate``:

- **Chat formatting is shared with training.** Every context goes through
  :func:`prosocial_lib.modeling.chat.chat_prompt` on :func:`prosocial_lib.data.dialogue.history_to_messages`, so a
  fine-tuned model is asked in exactly the format it was trained on. Models without a chat template (DialoGPT,
  BlenderBot) get a template that reproduces their native input format (:func:`ensure_chat_template`), so the rest
  of the code does not need a special case.
- **Left padding and length-sorted batches.** Prompts are sorted by length (little padding; optionally a cap on
  a batch's padded prompt tokens, :func:`length_batches`), left-padded so new tokens follow each prompt
  directly, and the replies are put back in the caller's order. Greedy replies in a
  batch equal one-at-a-time greedy replies (tested).
- **Sampling reproducible per reply.** Each (context, sample) row draws its randomness from its own generator,
  seeded by ``seed``, the prompt text and the sample index, and the sample is taken with the Gumbel-max trick on
  top of greedy search (:class:`SeededGumbelSampler`). So the same seed gives the same replies whatever the batch
  size, the order of the contexts, or what else runs in the process.
- **Same decoding for every model.** Hub models ship their own decoding defaults (beam search, repetition
  penalties); an audit that compares models decodes them all the same way, so those defaults are switched off and
  the caller's settings apply to every model alike.
- **Coherent replies.** Small models loop (``"I'm sorry I've lost you. I'm sorry I've lost you."``) and a token
  limit cuts replies mid-sentence. ``no_repeat_ngram_size`` bans a token that would repeat an n-gram of the reply
  (transformers' own ``NoRepeatNGramLogitsProcessor``), ``repetition_penalty`` divides the scores of tokens the
  reply already holds (transformers' ``RepetitionPenaltyLogitsProcessor``, Keskar et al. 2019), both on the
  reply's own tokens only (:class:`ReplyOnly`), and ``trim_to_sentence`` cuts a reply that hit the limit back
  to its last complete sentence (:func:`~prosocial_lib.data.texts.trim_to_sentence`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from ..data.texts import trim_to_sentence as _trim_to_sentence
from .chat import GenerationInputError, ensure_chat_template, format_prompt, stop_token_ids

#: Decoding settings that hub generation configs set and an even-handed audit switches off.
_NEUTRAL_DECODING = dict(num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
                         length_penalty=1.0)


def _check_histories(histories: Sequence[Sequence[str]]) -> None:
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
        raise GenerationInputError("histories must be a list of dialog histories (each a list of turns)")
    for i, h in enumerate(histories):
        if isinstance(h, str) or not isinstance(h, Sequence) or len(h) == 0:
            raise GenerationInputError(f"history {i} must be a non-empty list of turns (strings), got {h!r}")
        for j, turn in enumerate(h):
            if not isinstance(turn, str):
                raise GenerationInputError(f"history {i}, turn {j} must be a string, got {type(turn).__name__}")


# ---------------------------------------------------------------------- sampling with one generator per row
def row_seed(seed: int, prompt: str, sample_index: int) -> int:
    """The seed of one (prompt, sample) row: a hash, so it does not depend on order or batch.

    Args:
        seed: the root seed (``Config.seed``).
        prompt: the formatted prompt text.
        sample_index: which of the k samples of this prompt.

    Returns:
        A non-negative 63-bit integer (the first 8 bytes of a SHA-256, little-endian).
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_index}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class SeededGumbelSampler(LogitsProcessor):
    """Adds Gumbel noise from one generator per batch row, so greedy search *samples* from softmax(scores).

    The Gumbel-max trick: ``argmax(s + G)`` with ``G = -log(-log U)``, ``U ~ Uniform(0, 1)`` is distributed as
    ``softmax(s)``; tokens filtered to ``-inf`` (top-p) stay impossible. Each row draws exactly one vector per
    step from its own generator, so its t-th token depends only on its own seed, not on its batch neighbours.
    """

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"SeededGumbelSampler built for {len(self.generators)} rows got {scores.shape[0]}")
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-12, max=1 - 1e-7)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


class ReplyOnly(LogitsProcessor):
    """Runs a transformers logits processor on the reply's tokens only: the columns of ``input_ids`` after the
    first ``prompt_width`` (the padded prompt; every row of a left-padded batch starts its reply there).

    Why: for a decoder-only model ``input_ids`` holds the prompt too, so transformers' n-gram ban would forbid
    repeating any 4-gram of the chat template and the history (the first token of every earlier assistant turn
    follows the same ``<|im_start|>assistant`` n-gram the reply starts with), and its repetition penalty would
    punish words of the user's message. A row's processed scores depend only on its own reply, so batches and
    seeds give the same replies as before.
    """

    def __init__(self, processor: LogitsProcessor, prompt_width: int):
        self.processor, self.prompt_width = processor, int(prompt_width)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.processor(input_ids[:, self.prompt_width:], scores)


def repetition_processors(no_repeat_ngram_size: int, repetition_penalty: float, prompt_width: int
                          ) -> LogitsProcessorList:
    """The repetition controls as processors on the reply's tokens (:class:`ReplyOnly`): none when
    ``no_repeat_ngram_size`` is 0 and ``repetition_penalty`` is 1.

    Args:
        no_repeat_ngram_size: n > 0 bans any token that would complete an n-gram the reply already holds.
        repetition_penalty: > 1 divides positive (multiplies negative) scores of tokens the reply already holds.
        prompt_width: the padded prompt's length in tokens (where the replies start).

    References:
        transformers' ``NoRepeatNGramLogitsProcessor`` (Paulus et al. 2018) and ``RepetitionPenaltyLogitsProcessor``
        (Keskar et al. 2019, CTRL).
    """
    out = LogitsProcessorList()
    if no_repeat_ngram_size > 0:
        out.append(ReplyOnly(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size), prompt_width))
    if repetition_penalty != 1.0:
        out.append(ReplyOnly(RepetitionPenaltyLogitsProcessor(repetition_penalty), prompt_width))
    return out


# ---------------------------------------------------------------------- the entry point
@torch.inference_mode()
def generate_replies(
    model,
    tokenizer,
    histories: Sequence[Sequence[str]],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 48,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    num_samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    max_prompt_tokens: int | None = None,
    max_batch_tokens: int | None = None,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    trim_to_sentence: bool = False,
) -> list[list[str]]:
    """``num_samples`` replies to each history, in input order (module docstring: chat format, batching, seeds).

    Used by the audit (chapter 01) and the evaluation (chapter 04) through :func:`prosocial_lib.eval.audit.run_audit`,
    and timed by the benchmark appendix.

    Args:
        model: a causal or encoder-decoder LM from :func:`~prosocial_lib.modeling.loading.load_model_and_tokenizer`.
        tokenizer: its tokenizer (template-less ones get their native format, :func:`ensure_chat_template`).
        histories: dialogue histories, each a non-empty list of turns (oldest first, the user's turn last).
        system_prompt: a system message before every history (``None``: none).
        max_new_tokens: the most tokens a reply gets; replies stop earlier at the end of the turn.
        do_sample: sample (``temperature``, nucleus ``top_p``) instead of greedy decoding.
        temperature: sampling temperature (> 0).
        top_p: nucleus mass (0 < top_p <= 1; 1 = no cut).
        num_samples: replies per history; greedy gives ``num_samples`` copies of the one greedy reply.
        batch_size: rows (history x sample) per ``model.generate`` call.
        seed: the root of every row's sampling seed (:func:`row_seed`): the same seed gives the same replies
            whatever the batch size or the order of the histories.
        progress: show a progress bar.
        max_prompt_tokens: prompts longer than this (or an encoder's position limit) keep their last tokens.
        max_batch_tokens: cap on a batch's padded prompt tokens (:func:`length_batches`).
        no_repeat_ngram_size: n > 0: a reply never repeats one of its own word-piece n-grams (0 = off).
        repetition_penalty: > 1 penalises tokens the reply already holds (1.0 = off); both act on the reply's
            tokens only (:func:`repetition_processors`).
        trim_to_sentence: a reply that hit ``max_new_tokens`` without its end-of-turn token is cut back to its
            last complete sentence (kept whole when it has none).

    Returns:
        ``replies[i][s]``: sample ``s`` of the reply to ``histories[i]``, special tokens stripped.

    Raises:
        GenerationInputError: malformed histories, or settings out of range (``no_repeat_ngram_size < 0``,
            ``repetition_penalty <= 0``).

    Example:
        >>> generate_replies(model, tok, [["hi there"]], max_new_tokens=8, progress=False)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .loading import padding_side

    _check_settings(histories, num_samples, batch_size, max_new_tokens, do_sample, temperature, top_p)
    if no_repeat_ngram_size < 0 or not repetition_penalty > 0:
        raise GenerationInputError(f"no_repeat_ngram_size must be >= 0 and repetition_penalty > 0, got "
                                   f"{no_repeat_ngram_size} and {repetition_penalty}")
    if not histories:
        return []
    ensure_chat_template(tokenizer, model)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    prompts = [format_prompt(tokenizer, h, system_prompt) for h in histories]
    encoded = _encode_prompts(tokenizer, model, prompts, max_prompt_tokens)
    # one row per (context, sample); greedy needs one row per context
    draws = num_samples if do_sample else 1
    rows = [(i, s) for i in range(len(histories)) for s in range(draws)]
    rows.sort(key=lambda r: -len(encoded[r[0]]))  # longest first: memory problems show up at once
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad_id,
                      **_NEUTRAL_DECODING)

    replies: dict[tuple[int, int], str] = {}
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc="generating", unit="reply", disable=not progress)
    try:
        with padding_side(tokenizer, "right" if encoder_decoder else "left"):
            for batch in length_batches(rows, [len(encoded[i]) for i, _ in rows], batch_size, max_batch_tokens):
                seeds = [row_seed(seed, prompts[i], s) for i, s in batch] if do_sample else None
                ids = [encoded[i] for i, _ in batch]
                # where the replies start: after the padded prompt (a decoder's own start token for seq2seq)
                width = 1 if encoder_decoder else max(map(len, ids))
                processors = repetition_processors(no_repeat_ngram_size, repetition_penalty, width)
                processors.extend(_sampling_processors(temperature, top_p, seeds))
                new = _generate_batch(model, tokenizer, ids, processors, gen_kwargs)
                for (i, s), reply_ids in zip(batch, new):
                    text = decode_reply(tokenizer, reply_ids, stops)
                    if trim_to_sentence and hit_limit(reply_ids, stops):
                        text = _trim_to_sentence(text)
                    replies[(i, s)] = text
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return [[replies[(i, s if do_sample else 0)] for s in range(num_samples)] for i in range(len(histories))]


def _generate_batch(model, tokenizer, ids: list[list[int]], processors: LogitsProcessorList,
                    gen_kwargs: dict[str, Any]) -> list[list[int]]:
    """The new token ids of each row of one batch of prompts (padded on the tokenizer's current side)."""
    inputs = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    out = model.generate(**inputs, logits_processor=processors, **gen_kwargs)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    return (out[:, 1:] if encoder_decoder else out[:, inputs["input_ids"].shape[1]:]).tolist()


def _check_settings(histories: Sequence[Sequence[str]], num_samples: int, batch_size: int, max_new_tokens: int,
                    do_sample: bool, temperature: float, top_p: float) -> None:
    _check_histories(histories)
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 1:
        raise GenerationInputError(f"num_samples ({num_samples}), batch_size ({batch_size}) and max_new_tokens "
                                   f"({max_new_tokens}) must all be >= 1")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise GenerationInputError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def _encode_prompts(tokenizer, model, prompts: Sequence[str], max_prompt_tokens: int | None) -> list[list[int]]:
    """Token ids of each prompt, keeping the last ``max_prompt_tokens`` (and, for an encoder-decoder, no more
    than its encoder's positions)."""
    limit = max_prompt_tokens
    if getattr(model.config, "is_encoder_decoder", False):
        pos_limit = getattr(model.config, "max_position_embeddings", None)
        limit = min(x for x in (limit, pos_limit) if x) if (limit or pos_limit) else None
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if limit:
        encoded = [ids[-limit:] for ids in encoded]
    return encoded


def _sampling_processors(temperature: float, top_p: float, seeds: Sequence[int] | None) -> LogitsProcessorList:
    """Greedy search plus these processors samples: temperature, nucleus cut, then per-row Gumbel noise
    (:class:`SeededGumbelSampler`); none when ``seeds`` is ``None`` (greedy)."""
    processors = LogitsProcessorList()
    if seeds is not None:
        processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1:
            processors.append(TopPLogitsWarper(top_p))
        processors.append(SeededGumbelSampler(seeds))
    return processors


def length_batches(rows: Sequence[Any], lengths: Sequence[int], batch_size: int,
                   max_tokens: int | None = None) -> list[list[Any]]:
    """Consecutive batches of ``rows`` (sorted longest first) of at most ``batch_size`` rows and, when given, at
    most ``max_tokens`` padded prompt tokens (rows x the batch's longest prompt).

    Why a token budget: a left-padded batch computes every row at the length of its longest prompt, and on a GPU
    the longest prompts of a full batch can run out of memory. It is off by default: measured on a 2-core CPU
    (the appendix's contexts), smaller batches for long prompts saved less in the prompt pass than they cost in
    decoding, where the batch size is what pays.

    Args:
        rows: the items to batch, sorted longest first.
        lengths: the prompt length (tokens) of each row, non-increasing.
        batch_size: the most rows per batch.
        max_tokens: the most padded prompt tokens per batch (``None``: no cap); a row longer than it is a batch
            of its own.

    Returns:
        The batches, in order, covering every row once.

    Raises:
        ValueError: ``rows`` and ``lengths`` differ in length, or ``lengths`` is not sorted.
    """
    if len(rows) != len(lengths):
        raise ValueError(f"{len(rows)} rows but {len(lengths)} lengths")
    if any(a < b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("length_batches expects rows sorted by decreasing length")
    if not rows:
        return []
    budget = max_tokens or batch_size * max(lengths)  # None: batch_size rows whatever their length
    batches: list[list[Any]] = []
    start = 0
    while start < len(rows):
        longest = max(1, lengths[start])
        size = max(1, min(batch_size, budget // longest, len(rows) - start))
        batches.append(list(rows[start:start + size]))
        start += size
    return batches


def hit_limit(ids: Sequence[int], stops: Sequence[int]) -> bool:
    """True when a reply's new ``ids`` hold no end-of-turn token: generation stopped at ``max_new_tokens``,
    not at the end of the turn (rows that ended earlier are padded after their end-of-turn token)."""
    stop_set = set(stops)
    return not any(t in stop_set for t in ids)


def decode_reply(tokenizer, ids: Sequence[int], stops: Sequence[int]) -> str:
    """Text of the generated ``ids`` up to the first end-of-turn token, without special tokens.

    Args:
        tokenizer: the model's tokenizer.
        ids: the new token ids of one reply.
        stops: end-of-turn ids (:func:`~prosocial_lib.modeling.chat.stop_token_ids`).

    Returns:
        The reply, stripped of surrounding whitespace.
    """
    stop_set = set(stops)
    cut = next((k for k, t in enumerate(ids) if t in stop_set), len(ids))
    return tokenizer.decode(list(ids[:cut]), skip_special_tokens=True).strip()
