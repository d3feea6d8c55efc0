"""Reply quality against gold responses and on its own: BLEU-4, unigram F1, distinct-n, length, and the
perplexity of the gold responses; per-system quality tables for chapters 01 and 04.

Every function that takes a list of replies refuses a bare ``str`` with ``TypeError`` (it would otherwise be
scored character by character). distinct-n is the data layer's :func:`prosocial_lib.data.texts.distinct_n`, the
one implementation of the book.

References: Papineni et al. 2002 (BLEU, computed with sacrebleu); the unigram F1 of the ParlAI/SQuAD
evaluations; Li et al. 2016 (distinct-n). Layer: eval.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.texts import distinct_n, text_list

__all__ = ["bleu4", "normalize_answer", "unigram_f1", "mean_unigram_f1", "distinct_n", "reply_lengths",
           "gold_perplexity", "quality_table"]


# ---------------------------------------------------------------------- quality against gold responses
def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu defaults, 0-100) of replies against one gold response each (chapter 04).

    Args:
        hypotheses: the replies.
        references: one gold response per reply.

    Returns:
        BLEU-4 in [0, 100]; NaN for no replies.

    Raises:
        TypeError: either is a bare ``str`` (one reply) or holds a non-string.
        ValueError: the two lists differ in length.

    References:
        Papineni et al. (2002); Post (2018), sacrebleu.
    """
    import sacrebleu
    hypotheses, references = text_list(hypotheses, "hypotheses"), text_list(references, "references")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return math.nan
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


_ARTICLES = re.compile(r"\b(a|an|the)\b")


_PUNCTUATION = re.compile("[%s]" % re.escape(string.punctuation))


def normalize_answer(text: str) -> str:
    """ParlAI's normalisation for F1: lowercase, punctuation and articles (a, an, the) removed, spaces collapsed."""
    text = _PUNCTUATION.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(hypothesis: str, reference: str) -> float:
    """Unigram F1 of one reply against one gold response, after :func:`normalize_answer` (ParlAI's F1Metric).

    Raises:
        TypeError: either is not a ``str`` (for lists of replies use :func:`mean_unigram_f1`).
    """
    for name, value in (("hypothesis", hypothesis), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"unigram_f1: {name} must be one str, got {type(value).__name__}; "
                            "for lists of replies use mean_unigram_f1")
    hyp, ref = normalize_answer(hypothesis).split(), normalize_answer(reference).split()
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_unigram_f1(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean per-reply unigram F1 (how ParlAI and ProsocialDialog aggregate it), 0-1 (chapter 04).

    Args:
        hypotheses: the replies.
        references: one gold response per reply.

    Returns:
        The mean of :func:`unigram_f1`, in [0, 1]; NaN for no replies.

    Raises:
        TypeError: either is a bare ``str`` (one reply) or holds a non-string.
        ValueError: the two lists differ in length.
    """
    hypotheses, references = text_list(hypotheses, "hypotheses"), text_list(references, "references")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return math.nan
    return float(np.mean([unigram_f1(h, r) for h, r in zip(hypotheses, references)]))


def reply_lengths(texts: Sequence[str]) -> list[int]:
    """Length of each reply in whitespace-separated words.

    Raises:
        TypeError: ``texts`` is a bare ``str`` (one reply) or holds a non-string.
    """
    return [len(t.split()) for t in text_list(texts, "texts")]


# ---------------------------------------------------------------------- perplexity of gold responses
@torch.inference_mode()
def gold_perplexity(model, tokenizer, histories: Sequence[Sequence[str]], responses: Sequence[str], *,
                    batch_size: int = 8, system_prompt: str | None = None, max_length: int | None = None,
                    progress: bool = False) -> float:
    """Perplexity of the gold ``responses`` after their ``histories``: exp(total NLL / total response tokens).

    Token-weighted over the whole corpus, response tokens only (the reply and its end-of-turn token), each
    context formatted with the same chat template generation uses. Sequences longer than ``max_length`` lose
    context tokens from the left (never response tokens). The paper reports perplexity among its quality metrics
    (method.md section 3); chapter 04 gives it per compared system.

    Args:
        model: a decoder-only causal LM (``model(input_ids, attention_mask).logits``).
        tokenizer: its tokenizer (a chat template is given to template-less ones, as in generation).
        histories: one dialogue history per response (turns oldest first, the user's turn last).
        responses: the gold replies, ``len(responses) == len(histories)``.
        batch_size: sequences per forward pass (longest first).
        system_prompt: an optional system message before each history.
        max_length: cap on context + response tokens (``None``: no cap).
        progress: show a progress bar.

    Returns:
        The perplexity (>= 1), or NaN when ``histories`` is empty.

    Raises:
        TypeError: ``responses`` is a bare ``str`` or holds a non-string; ``histories`` or one history is a bare
            ``str`` (a history is a list of turns).
        ValueError: ``histories`` and ``responses`` differ in length.
        NotImplementedError: an encoder-decoder model.
    """
    from tqdm.auto import tqdm

    from ..modeling.chat import ensure_chat_template

    responses = text_list(responses, "responses")
    histories = [text_list(h, f"histories[{i}]") for i, h in enumerate(text_list(histories, "histories",
                                                                                  strings=False))]
    if len(histories) != len(responses):
        raise ValueError(f"{len(histories)} histories but {len(responses)} responses")
    if not histories:
        return math.nan
    if getattr(model.config, "is_encoder_decoder", False):
        raise NotImplementedError("gold_perplexity scores decoder-only models; "
                                  f"{model.config.model_type!r} is an encoder-decoder")
    ensure_chat_template(tokenizer, model)
    sequences = _gold_sequences(tokenizer, histories, responses, system_prompt, max_length)
    order = sorted(range(len(sequences)), key=lambda i: -sum(map(len, sequences[i])))
    total_nll, total_tokens = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="gold perplexity", disable=not progress):
            nll, tokens = _response_nll(model, [sequences[i] for i in order[start:start + batch_size]], pad)
            total_nll += nll
            total_tokens += tokens
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)


def _gold_sequences(tokenizer, histories: Sequence[Sequence[str]], responses: Sequence[str],
                    system_prompt: str | None, max_length: int | None) -> list[tuple[list[int], list[int]]]:
    """``(context ids, response ids)`` per pair: the chat-template prompt, then the reply and its end-of-turn token;
    cut to ``max_length`` from the left of the context (a response longer than it keeps its first tokens)."""
    from ..data.dialogue import history_to_messages
    from ..modeling.chat import chat_prompt, chat_turn_end

    turn_end = chat_turn_end(tokenizer)
    end = turn_end.rstrip() or turn_end  # "<|im_end|>\n" -> "<|im_end|>": the newline after it is not the reply
    sequences: list[tuple[list[int], list[int]]] = []
    for h, r in zip(histories, responses):
        prompt = chat_prompt(tokenizer, history_to_messages(list(h), system=system_prompt),
                             add_generation_prompt=True)
        ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rsp = tokenizer(r + end, add_special_tokens=False)["input_ids"]
        if max_length is not None:
            if len(rsp) >= max_length:
                rsp = rsp[: max_length - 1]
            ctx = ctx[-(max_length - len(rsp)):]
        sequences.append((ctx, rsp))
    return sequences


def _response_nll(model, batch: list[tuple[list[int], list[int]]], pad: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the response tokens of one batch of ``(context, response)`` id lists,
    and how many response tokens it covers (right padding: positions need no adjustment)."""
    width = max(len(c) + len(r) for c, r in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, (c, r) in enumerate(batch):
        seq = c + r
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        labels[b, len(c): len(seq)] = torch.tensor(r)
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:].to(model.device)
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -float(picked[keep].sum()), int(keep.sum())


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per system and context set: reply length, distinct-1/2, and BLEU-4 / unigram F1 against the gold
    responses (where the contexts have them). The quality columns of chapter 04.

    Args:
        df: the audit table (columns ``system``, ``context_set``, ``reply``, ``response``).

    Returns:
        One row per (system, context set): ``replies``, ``mean_words``, ``empty_replies``, ``distinct_1``,
        ``distinct_2``, ``bleu4`` (0-100), ``unigram_f1`` (0-1); NaN where there are no gold responses.
    """
    rows = []
    for (system, set_name), sub in df.groupby(["system", "context_set"], sort=False):
        gold = sub[sub["response"].astype(str).str.len() > 0]
        rows.append({
            "system": system, "context_set": set_name, "replies": len(sub),
            "mean_words": float(pd.Series(reply_lengths(sub["reply"].tolist())).mean()),
            "empty_replies": int((sub["reply"].str.strip() == "").sum()),
            "distinct_1": distinct_n(sub["reply"].tolist(), 1), "distinct_2": distinct_n(sub["reply"].tolist(), 2),
            "bleu4": bleu4(gold["reply"].tolist(), gold["response"].tolist()) if len(gold) else float("nan"),
            "unigram_f1": mean_unigram_f1(gold["reply"].tolist(), gold["response"].tolist()) if len(gold)
            else float("nan")})
    return pd.DataFrame(rows)
