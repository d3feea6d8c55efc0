"""Scoring groups: the score s(c, y) of every reply, and held-out contrastive accuracy and margin."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..config.schema import LossConfig
from ..groups.types import ContrastiveGroup
from .collator import GroupCollator, TrainingSetupError
from .losses import embedding_scores, in_batch_embedding_scores, likelihood_scores, mean_pool, npair_loss


# ---------------------------------------------------------------------- score
@dataclass
class GroupScores:
    """What one forward pass over a collated batch gives (:func:`score_groups`)."""

    scores: torch.Tensor  # (B, 1 + K), positive in column 0, padded slots 0 (masked by neg_mask)
    ce: torch.Tensor  # (B,) per-token NLL of each positive
    batch_scores: torch.Tensor | None = None  # (B, B) s(context_i, positive_j) for in-batch negatives


def _forward_kwargs(model) -> set[str]:
    """The keyword arguments the model's forward takes (seen through DDP and peft wrappers)."""
    base = getattr(model, "module", model)
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    try:
        return set(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _attention_for(model, mask: torch.Tensor) -> torch.Tensor:
    """A 4D bool mask as the model's attention wants it: bool for sdpa/flex, additive float for eager."""
    if mask.dim() != 4:
        return mask
    base = getattr(model, "module", model)
    impl = getattr(getattr(base, "config", None), "_attn_implementation", "eager") or "eager"
    if impl == "sdpa":
        return mask
    if impl != "eager":
        raise TrainingSetupError(f"attention {impl!r} takes no custom 4D mask: set loss.shared_context=false "
                                 "(one row per reply) or load the model with sdpa/eager attention")
    dtype = next(base.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def score_groups(model, batch: dict[str, torch.Tensor], score: str = "likelihood",
                 head: torch.nn.Module | None = None, in_batch: bool = False) -> GroupScores:
    """The score s(c, y) of every reply of a collated batch, in one forward pass.

    Args:
        model: a causal LM (possibly wrapped by DDP or peft).
        batch: a :class:`GroupCollator` output on the model's device.
        score: ``"likelihood"`` (mean log-prob of the reply tokens) or ``"embedding"`` (cosine of the mean-pooled
            last hidden states of context and reply, through ``head`` when given).
        head: the optional projection head of the embedding score.
        in_batch: also return ``batch_scores`` (embedding score only).

    Shapes:
        ``scores`` (B, 1 + K), positive in column 0, padded slots 0 (masked by ``neg_mask``); ``ce`` (B,);
        ``batch_scores`` (B, B) with ``[i, j] = s(context_i, positive_j)``.

    Returns:
        :class:`GroupScores`.

    Raises:
        TrainingSetupError: the model's attention takes no custom 4D mask (use ``shared_context=False``).

    References:
        method.md section 2 (the two scores). Used by the trainer and chapter 02's score tables.
    """
    n_groups, k = batch["neg_mask"].shape
    width = 1 + k
    t = batch["input_ids"].shape[1]
    keep = t - int(batch["tgt_pred"].min())  # logits only from the first predicting position on
    inputs = {"input_ids": batch["input_ids"], "attention_mask": _attention_for(model, batch["attention_mask"]),
              "position_ids": batch["position_ids"], "use_cache": False}
    kwargs = _forward_kwargs(model)
    if "logits_to_keep" in kwargs:
        inputs["logits_to_keep"] = keep
    elif "num_logits_to_keep" in kwargs:
        inputs["num_logits_to_keep"] = keep
    if score == "embedding":
        inputs["output_hidden_states"] = True
    out = model(**inputs)
    logits = out.logits[:, -keep:]
    picked = logits[batch["tgt_row"], batch["tgt_pred"] - (t - keep)].float()  # (M, V)
    logp = -torch.nn.functional.cross_entropy(picked, batch["tgt_id"], reduction="none")
    seg = batch["tgt_seg"]
    sum_logp = torch.zeros(n_groups * width, dtype=torch.float32, device=logp.device).index_add(0, seg, logp)
    n_tok = torch.zeros(n_groups * width, dtype=torch.float32, device=logp.device).index_add(
        0, seg, torch.ones_like(logp))
    lik = likelihood_scores(sum_logp, n_tok).view(n_groups, width)
    ce = -lik[:, 0]
    if score != "embedding":
        return GroupScores(scores=lik, ce=ce)
    hidden = out.hidden_states[-1]
    ctx = mean_pool(hidden[batch["ctx_row"]], batch["context_mask"][batch["ctx_row"]])
    h_tok = hidden[batch["tgt_row"], batch["tgt_pos"]].float()  # (M, D)
    rep = torch.zeros(n_groups * width, h_tok.shape[1], dtype=torch.float32, device=h_tok.device)
    rep = rep.index_add(0, seg, h_tok) / n_tok.clamp(min=1).unsqueeze(1)
    if head is not None:
        ctx, rep = head(ctx), head(rep)
    cand = rep.view(n_groups, width, -1)
    scores = embedding_scores(ctx, cand)
    batch_scores = in_batch_embedding_scores(ctx, cand[:, 0]) if in_batch else None
    return GroupScores(scores=scores, ce=ce, batch_scores=batch_scores)


# ---------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate_groups(model, tokenizer, groups: Sequence[ContrastiveGroup], loss: LossConfig, *, max_length: int,
                    batch_size: int = 8, head: torch.nn.Module | None = None,
                    progress: bool = True, desc: str = "scoring groups") -> dict[str, Any]:
    """Held-out contrastive metrics of ``model`` on ``groups``, without gradients (batches of similar length).

    Args:
        model, tokenizer: the causal LM and its tokenizer (the model's training mode is restored afterwards).
        groups: the held-out groups.
        loss: the ``loss`` section: the score, tau and the packed layout.
        max_length: tokens per (context + reply) sequence (``model.max_length``).
        batch_size: groups per forward pass (the stage runner passes the larger stage batch size).
        head: the embedding score's projection head, if any.
        progress, desc: a progress bar and its label.

    Returns:
        ``accuracy`` (share of groups whose positive scores above every negative), ``margin`` (s+ minus the mean
        s- of the group's negatives), ``npair`` (the weighted loss at ``loss.tau``) and ``ce`` (the positive's
        per-token NLL), averaged over groups (accuracy and margin over groups with at least one negative),
        ``groups``, plus the same per group kind (``by_kind``: "mic", "unsafe", "casual").

    Raises:
        TrainingSetupError: no groups.

    The stage runner logs these before and after each stage (chapters 02 and 03); chapter 04 scores every
    compared system with it.
    """
    from tqdm.auto import tqdm
    if not groups:
        raise TrainingSetupError("evaluate_groups got no groups")
    lc = loss
    collator = GroupCollator(tokenizer, max_length, shared_context=lc.shared_context)
    bs = batch_size
    order = sorted(range(len(groups)), key=lambda i: -_group_chars(groups[i]))  # similar lengths together
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_group: dict[int, tuple[float, float, float | None, float | None]] = {}
    try:
        for start in tqdm(range(0, len(order), bs), desc=desc, disable=not progress, unit="batch"):
            idx = order[start:start + bs]
            batch = {k: v.to(device) for k, v in collator([groups[i] for i in idx]).items()}
            gs = score_groups(model, batch, lc.score, head, False)
            out = npair_loss(gs.scores, batch["neg_weights"], batch["neg_mask"], lc.effective_tau)
            acc, margin = _accuracy_margin(gs.scores, batch["neg_mask"])
            for j, i in enumerate(idx):
                has = bool(batch["neg_mask"][j].any())
                per_group[i] = (float(gs.ce[j]), float(out.per_group[j]), float(acc[j]) if has else None,
                                float(margin[j]) if has else None)
    finally:
        model.train(was_training)
    result = _aggregate([per_group[i] for i in range(len(groups))])
    kinds = [g.kind for g in groups]
    result["by_kind"] = {kind: _aggregate([per_group[i] for i in range(len(groups)) if kinds[i] == kind])
                         for kind in dict.fromkeys(kinds)}
    return result


def _accuracy_margin(scores: torch.Tensor, neg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: positive above every real negative (0/1), and s+ minus the mean real negative score."""
    raw = scores.detach().float()
    neg = raw[:, 1:]
    max_neg = neg.masked_fill(~neg_mask, float("-inf")).max(dim=1).values if neg.shape[1] else raw[:, 0]
    mean_neg = (neg * neg_mask).sum(dim=1) / neg_mask.sum(dim=1).clamp(min=1)
    return (raw[:, 0] > max_neg).float(), raw[:, 0] - mean_neg


def _aggregate(rows: list[tuple[float, float, float | None, float | None]]) -> dict[str, float]:
    scored = [r for r in rows if r[2] is not None]
    n, ns = max(len(rows), 1), max(len(scored), 1)
    return {"accuracy": sum(r[2] for r in scored) / ns, "margin": sum(r[3] for r in scored) / ns,
            "npair": sum(r[1] for r in rows) / n, "ce": sum(r[0] for r in rows) / n, "groups": len(rows)}


def _group_chars(g: ContrastiveGroup) -> int:
    return sum(len(m["content"]) for m in g.context_messages) + len(g.positive) + max(
        [len(n) for n in g.negatives] or [0])
