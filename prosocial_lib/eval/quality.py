"""Reply quality against gold responses and on its own: BLEU-4, unigram F1, distinct-n, length, the perplexity
of the gold responses, and two signs of degenerate decoding per reply (cut off mid-sentence, a repeated word
4-gram); per-system quality tables for chapters 01 and 04.

Every function that takes a list of replies refuses a bare ``str`` with ``TypeError`` (it would otherwise be
scored character by character). distinct-n is the data layer's :func:`prosocial_lib.data.texts.distinct_n`, the
one implementation of the book.

References: Papineni et al. 2002 (BLEU, computed with sacrebleu); the unigram F1 of the ParlAI/SQuAD
evaluations; Li et al. 2016 (distinct-n); Welleck et al. 2020 (seq-rep-n). Layer: eval.
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

from ..data.texts import distinct_n, ends_sentence, ngrams, text_list, words

__all__ = ["bleu4", "normalize_answer", "unigram_f1", "mean_unigram_f1", "distinct_n", "reply_lengths",
           "gold_perplexity", "quality_table", "SHAPE_COLUMNS", "REPETITION_N", "seq_rep_n", "is_truncated",
           "is_repetitive", "reply_shape", "shape_table"]

#: The per-reply columns :func:`reply_shape` adds to every reply row (bool; rates in the summary tables).
SHAPE_COLUMNS: tuple[str, ...] = ("truncated", "repetitive")
#: The word n-gram order of :func:`is_repetitive` (Welleck et al. report seq-rep-4).
REPETITION_N = 4


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


# ---------------------------------------------------------------------- degenerate replies: cut off, repetitive
def seq_rep_n(text: str, n: int = REPETITION_N) -> float:
    """Welleck et al.'s seq-rep-n of one reply: the share of its word n-grams that repeat an earlier one,
    ``1 - |unique n-grams| / |n-grams|``.

    Words are :func:`~prosocial_lib.data.texts.words` (lower-cased, punctuation dropped), as for distinct-n.

    Args:
        text: one reply.
        n: the n-gram order (>= 1).

    Returns:
        A share in [0, 1); 0.0 for a reply with fewer than ``n`` words (nothing can repeat).

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``n < 1``.

    References:
        Welleck, Kulikov, Roller, Dinan, Cho & Weston (2020), "Neural Text Generation with Unlikelihood
        Training", ICLR (section 6, seq-rep-n; they report n = 4).

    Example:
        >>> round(seq_rep_n("I'm sorry I've lost you. I'm sorry I've lost you."), 3)  # 7 4-grams, 5 unique
        0.286
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_repetitive(text: str, n: int = REPETITION_N) -> bool:
    """True when some word ``n``-gram occurs at least twice in ``text`` (:func:`seq_rep_n` > 0): the loop
    ``"I'm sorry I've lost you. I'm sorry I've lost you."`` of a degenerate decoder.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: ``n < 1``.
    """
    return seq_rep_n(text, n) > 0


def is_truncated(text: str) -> bool:
    """True when a non-empty reply does not end a sentence (:func:`~prosocial_lib.data.texts.ends_sentence`:
    sentence-final punctuation, possibly closing quotes or brackets, or an emoji last).

    A reply that hit the token limit mid-sentence ends without it, and so does one whose last sentence merely
    lacks its full stop: the rate is an upper bound on replies cut by the limit. An empty reply is not truncated
    (the quality table counts empty replies apart).

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"is_truncated: expected a str, got {type(text).__name__}")
    return bool(text.strip()) and not ends_sentence(text)


def reply_shape(replies: Sequence[str], n: int = REPETITION_N) -> pd.DataFrame:
    """Per reply: ``truncated`` (:func:`is_truncated`), ``repetitive`` (:func:`is_repetitive` with ``n``) and
    ``seq_rep`` (:func:`seq_rep_n`), one row per reply in order. The audit and the comparison add the first two to
    every reply row.

    Raises:
        TypeError: ``replies`` is a bare ``str`` or holds a non-string.
    """
    replies = text_list(replies, "replies")
    rep = [seq_rep_n(r, n) for r in replies]
    return pd.DataFrame({"truncated": [is_truncated(r) for r in replies], "repetitive": [x > 0 for x in rep],
                         "seq_rep": rep})


def shape_table(df: pd.DataFrame, group_cols: Sequence[str] = ("system",), *, n_boot: int = 1000,
                confidence: float = 0.95, seed: int = 0, cluster_col: str | None = "context_id") -> pd.DataFrame:
    """Truncation and repetition rates per group of replies (by default per system), each with its interval.

    Args:
        df: one row per reply with a ``reply`` column (its ``truncated`` / ``repetitive`` columns are used when
            present, else computed with :func:`reply_shape`).
        group_cols: the columns that define a group.
        n_boot, confidence, seed: as in :func:`~prosocial_lib.eval.intervals.rate_with_ci`.
        cluster_col: resample replies of one context together (None, or a column ``df`` lacks: no clusters).

    Returns:
        One row per group: ``replies``, then ``truncated`` and ``repetitive`` rates (shares in [0, 1]) with
        ``<col> low`` / ``<col> high`` bounds, and ``mean_seq_rep`` (mean seq-rep-4).

    Raises:
        KeyError: ``df`` lacks ``reply`` or a group column.
    """
    from .intervals import rate_with_ci

    missing = [c for c in ("reply", *group_cols) if c not in df.columns]
    if missing:
        raise KeyError(f"shape_table: no column(s) {missing}; columns are {list(df.columns)}")
    shape = reply_shape(df["reply"].tolist())
    df = df.reset_index(drop=True)
    for c in SHAPE_COLUMNS:
        if c in df.columns:
            shape[c] = df[c].astype(bool).to_numpy()
    shape = pd.concat([df[list(group_cols)], shape], axis=1)
    clusters = df[cluster_col] if cluster_col and cluster_col in df.columns else None
    rows = []
    for key, sub in shape.groupby(list(group_cols), sort=False):
        row = dict(zip(group_cols, key if isinstance(key, tuple) else (key,)))
        row["replies"] = len(sub)
        for c in SHAPE_COLUMNS:
            ci = rate_with_ci(sub[c].astype(int).to_numpy(), n_boot=n_boot, confidence=confidence, seed=seed,
                              clusters=None if clusters is None else clusters.loc[sub.index].to_numpy())
            row[c], row[f"{c} low"], row[f"{c} high"] = ci
        row["mean_seq_rep"] = float(sub["seq_rep"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


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
    """Per system and context set: reply length, distinct-1/2, truncation and repetition rates, and BLEU-4 /
    unigram F1 against the gold responses (where the contexts have them). The quality columns of chapter 04.

    Args:
        df: the audit table (columns ``system``, ``context_set``, ``reply``, ``response``; ``truncated`` and
            ``repetitive`` are computed from ``reply`` when absent).

    Returns:
        One row per (system, context set): ``replies``, ``mean_words``, ``empty_replies``, ``distinct_1``,
        ``distinct_2``, ``truncated`` and ``repetitive`` (shares of replies, :func:`reply_shape`; their intervals
        are in the summary tables), ``bleu4`` (0-100), ``unigram_f1`` (0-1); NaN where there are no gold
        responses.
    """
    rows = []
    for (system, set_name), sub in df.groupby(["system", "context_set"], sort=False):
        gold = sub[sub["response"].astype(str).str.len() > 0]
        rows.append({
            "system": system, "context_set": set_name, "replies": len(sub),
            "mean_words": float(pd.Series(reply_lengths(sub["reply"].tolist())).mean()),
            "empty_replies": int((sub["reply"].str.strip() == "").sum()),
            "distinct_1": distinct_n(sub["reply"].tolist(), 1), "distinct_2": distinct_n(sub["reply"].tolist(), 2),
            **_shape_rates(sub),
            "bleu4": bleu4(gold["reply"].tolist(), gold["response"].tolist()) if len(gold) else float("nan"),
            "unigram_f1": mean_unigram_f1(gold["reply"].tolist(), gold["response"].tolist()) if len(gold)
            else float("nan")})
    return pd.DataFrame(rows)


def _shape_rates(sub: pd.DataFrame) -> dict[str, float]:
    """The shares of ``truncated`` and ``repetitive`` replies of a table (its columns, else computed)."""
    shape = reply_shape(sub["reply"].tolist())
    return {c: float((sub[c] if c in sub.columns else shape[c]).astype(bool).mean()) if len(sub) else math.nan
            for c in SHAPE_COLUMNS}
