r"""The socially aware n-pair loss (method.md section 2): pure torch, no I/O.

Sohn's multi-class n-pair loss is a softmax cross-entropy over one positive and the negatives. For a dialog
context :math:`c`, the prosocial reply :math:`y^+` and negatives :math:`y^-_1..y^-_K` with social weights
:math:`w_j \ge 0` and temperature :math:`\tau`:

.. math::

    L_\text{npair} = -\log \frac{e^{s^+/\tau}}{e^{s^+/\tau} + \sum_j w_j\, e^{s^-_j/\tau}}
                   = \operatorname{logsumexp}\big(s^+/\tau,\; s^-_j/\tau + \log w_j\big) - s^+/\tau

and the training objective is :math:`L = L_\text{CE}(y^+ \mid c) + \lambda L_\text{npair}`.

Two scores :math:`s(c, y)` (a reconstruction; the paper's equations are not available to us):

- ``"likelihood"``: the length-normalised log-probability of the reply given the context
  (:func:`response_logprobs` then :func:`likelihood_scores`);
- ``"embedding"``: the cosine of mean-pooled hidden states of context and reply, optionally through a
  :class:`ProjectionHead` (:func:`mean_pool`, :func:`embedding_scores`).

Conventions: the positive is column 0 of a ``(B, 1+K)`` score matrix; padded negatives (groups with fewer than
``K``) are masked with ``-inf`` logits, never zeros; every reduction runs in float32, also for bf16/fp16 inputs.
The loss is computed from score differences, :math:`\operatorname{logsumexp}(0,\; (s^-_j - s^+)/\tau + \log w_j)`,
so a small temperature cannot overflow :math:`s/\tau` into ``inf - inf``; non-finite inputs (scores of real
replies, weights, temperature, alpha, lambda) are rejected with ``ValueError`` instead of turning into NaN
gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def _at_least_f32(x: Tensor) -> Tensor:
    """Upcast half precision (and integers) to float32; keep float64 (gradcheck, references)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.dtype != torch.float64 else x


# ---------------------------------------------------------------------- the likelihood score
def response_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence sum of token log-probs of the labelled tokens and their count (the likelihood score's parts).

    Args:
        logits: a causal LM's logits.
        labels: aligned with the *input* ids, ``-100`` where a token is not scored (context, padding); the shift
            (position t predicts token t+1) happens here.

    Shapes:
        ``logits`` (N, T, V), ``labels`` (N, T) -> ``(sum_logp (N,), n_tokens (N,))``, float32.

    Raises:
        ValueError: the shapes do not match.

    References:
        method.md section 2 (the "likelihood" score). The tests' reference for :func:`score_groups`.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (N, T, V) and labels (N, T); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    shift_logits = _at_least_f32(logits[:, :-1, :])
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    n_tokens = (shift_labels != IGNORE_INDEX).sum(dim=-1)
    return -nll.sum(dim=-1), n_tokens


def likelihood_scores(sum_logp: Tensor, n_tokens: Tensor) -> Tensor:
    """Length-normalised log-likelihood ``sum_logp / n_tokens`` (so long replies are not penalised for length).

    Shapes:
        any shape, the same for both (e.g. (B * (1 + K),)); the result has it too, in float32 (nats per token).

    A sequence with no scored tokens (e.g. a padding slot) gets 0; mask it out with ``neg_mask``.
    """
    sum_logp = _at_least_f32(sum_logp)
    return sum_logp / n_tokens.clamp(min=1).to(sum_logp.dtype)


# ---------------------------------------------------------------------- the embedding score
def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` over the positions where ``mask`` is true/1, in float32 (the embedding score's pooling).

    Shapes:
        ``hidden`` (N, T, D), ``mask`` (N, T) -> (N, D). A row without any position gives zeros.

    Raises:
        ValueError: ``hidden`` and ``mask`` disagree on (N, T).
    """
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)} disagree on (N, T)")
    hidden = _at_least_f32(hidden)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def embedding_scores(ctx_emb: Tensor, cand_emb: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of each context with its candidate replies: the "embedding" score (method.md 2).

    Shapes:
        ``ctx_emb`` (B, D), ``cand_emb`` (B, 1 + K, D) -> (B, 1 + K), float32, in [-1, 1].

    Raises:
        ValueError: the shapes do not match.
    """
    if ctx_emb.dim() != 2 or cand_emb.dim() != 3 or cand_emb.shape[0] != ctx_emb.shape[0] \
            or cand_emb.shape[2] != ctx_emb.shape[1]:
        raise ValueError(f"expected ctx_emb (B, D) and cand_emb (B, 1+K, D); got {tuple(ctx_emb.shape)} and "
                         f"{tuple(cand_emb.shape)}")
    return F.cosine_similarity(_at_least_f32(ctx_emb).unsqueeze(1), _at_least_f32(cand_emb), dim=-1, eps=eps)


def in_batch_embedding_scores(ctx_emb: Tensor, pos_emb: Tensor, eps: float = 1e-8) -> Tensor:
    """``(B, B)`` cosines ``[i, j] = cos(context_i, positive_j)``: what ``npair_loss(..., in_batch=True)`` needs.

    Shapes:
        ``ctx_emb`` and ``pos_emb`` (B, D) -> (B, B), float32; the diagonal is each group's own positive.

    Raises:
        ValueError: the shapes differ or are not 2D.

    Only the embedding score gives this matrix cheaply (B + B encodings); for the likelihood score it would
    take B * B forward passes, so in-batch negatives are an embedding-score option.
    """
    if ctx_emb.shape != pos_emb.shape or ctx_emb.dim() != 2:
        raise ValueError(f"expected ctx_emb and pos_emb both (B, D); got {tuple(ctx_emb.shape)} and "
                         f"{tuple(pos_emb.shape)}")
    c = F.normalize(_at_least_f32(ctx_emb), dim=-1, eps=eps)
    p = F.normalize(_at_least_f32(pos_emb), dim=-1, eps=eps)
    return c @ p.T


class ProjectionHead(torch.nn.Module):
    """Optional head mapping pooled states to the space the cosine is taken in (SimCLR's trick: the LM's own
    states need not be reshaped by the contrastive term). ``hidden_dim`` None gives one linear layer.

    Args:
        in_dim: the model's hidden size D.
        out_dim: ``loss.projection_dim``.
        hidden_dim: a hidden layer (with ReLU) in between, or None.

    Shapes:
        (..., D) -> (..., out_dim), in the head's dtype.

    References:
        Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), 2020.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        if hidden_dim is None:
            self.net = torch.nn.Linear(in_dim, out_dim)
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden_dim), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        first = self.net if isinstance(self.net, torch.nn.Linear) else self.net[0]
        return self.net(x.to(first.weight.dtype))


# ---------------------------------------------------------------------- the loss
@dataclass
class NPairOutput:
    """``loss``: mean over groups (scalar, float32, differentiable). ``per_group`` (B,). ``accuracy``: share of
    groups whose positive scores strictly above every real negative. ``margin``: mean over groups of
    ``s+ - mean(real negatives' s)``. Accuracy and margin use raw scores (no tau, no weights), ignore in-batch
    negatives, are detached, and are taken over the ``n_scored`` groups that have a real negative (0 when none)."""

    loss: Tensor
    per_group: Tensor
    accuracy: Tensor
    margin: Tensor
    n_scored: int


def npair_loss(
    scores: Tensor,
    neg_weights: Tensor | None = None,
    neg_mask: Tensor | None = None,
    tau: float = 1.0,
    in_batch: bool = False,
    batch_scores: Tensor | None = None,
) -> NPairOutput:
    r"""The socially aware n-pair loss: a softmax cross-entropy of the positive against its weighted negatives.

    :math:`L = \operatorname{logsumexp}(s^+/\tau,\; s^-_j/\tau + \log w_j) - s^+/\tau`, averaged over groups;
    computed as :math:`\operatorname{logsumexp}(0,\; (s^-_j - s^+)/\tau + \log w_j)` (stable for a small tau).

    Args:
        scores: s(c, y) of each group's replies, the positive in column 0.
        neg_weights: w >= 0 per negative; ``log w`` is added to each negative's logit (w = 1: Sohn's loss; w = 0
            drops the negative). None = all 1.
        neg_mask: True = a real negative; padded slots get ``-inf`` logits (never zeros). A group without any
            negative contributes 0 loss (it still counts in the mean over the B groups). None = all real.
        tau: the temperature (finite, > 0, with ``1 / tau`` finite in the compute dtype).
        in_batch: the other groups' positives become extra negatives with weight 1; needs ``batch_scores``.
            (Two groups sharing the same positive text would then push against each other: deduplicate upstream.)
        batch_scores: ``[i, j] = s(context_i, positive_j)`` (see :func:`in_batch_embedding_scores`); the likelihood
            score cannot provide it without B * B forward passes.

    Shapes:
        ``scores`` (B, 1 + K); ``neg_weights`` and ``neg_mask`` (B, K); ``batch_scores`` (B, B). Output: ``loss``
        a scalar, ``per_group`` (B,); all float32 (float64 stays float64), also for bf16/fp16 inputs.

    Returns:
        :class:`NPairOutput` (loss, per-group loss, accuracy, margin, groups scored).

    Raises:
        ValueError: a shape that does not match; tau not finite or <= 0, or so small that ``1 / tau`` overflows
            the compute dtype; a NaN or infinite score of a positive or a real negative (or in ``batch_scores``);
            negative, NaN or infinite weights; ``in_batch`` without ``batch_scores``.

    References:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016 (w = 1, tau = 1
        and a dot-product score give exactly its form, tested); method.md sections 2 and 2.1. Chapter 02 works an
        example; the trainer uses it for chapters 02-05.

    Example:
        >>> out = npair_loss(torch.tensor([[-1.0, -2.0, -3.0]]))
        >>> round(float(out.loss), 4), float(out.accuracy)
        (0.4076, 1.0)
    """
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (B, 1+K) with the positive in column 0; got {tuple(scores.shape)}")
    B, K = scores.shape[0], scores.shape[1] - 1
    raw = _at_least_f32(scores)
    tau = _checked_tau(tau, raw.dtype)
    real = torch.ones(B, K, dtype=torch.bool, device=scores.device)
    if neg_mask is not None:
        if neg_mask.shape != (B, K):
            raise ValueError(f"neg_mask must be (B, K) = {(B, K)}, got {tuple(neg_mask.shape)}")
        real = neg_mask.to(device=scores.device, dtype=torch.bool)
    _check_finite_scores(raw, real)
    pos = raw[:, :1]
    # differences to the positive: (s- - s+) / tau cannot overflow where s / tau would (tiny tau, large |s|)
    columns = [torch.zeros_like(pos), _weighted_negatives((raw[:, 1:] - pos) / tau, neg_weights, real)]
    if in_batch:
        columns.append(_in_batch_logits(batch_scores, pos, tau, B, scores.device))
    per_group = torch.logsumexp(torch.cat(columns, dim=1), dim=1)  # >= 0; exactly 0 when every negative is masked
    accuracy, margin, n_scored = _accuracy_margin(scores, real)
    return NPairOutput(loss=per_group.mean(), per_group=per_group, accuracy=accuracy, margin=margin,
                       n_scored=n_scored)


def _checked_tau(tau: float, dtype: torch.dtype) -> float:
    """``tau`` as a float after checking it is finite, > 0 and not so small that ``1 / tau`` overflows ``dtype``
    (then the gradients, which scale with ``1 / tau``, would be infinite)."""
    tau = float(tau)
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    if 1.0 / tau > torch.finfo(dtype).max:
        raise ValueError(f"tau = {tau} is too small: 1 / tau overflows {dtype} (the loss's gradients scale with "
                         f"1 / tau); use tau >= {1.0 / torch.finfo(dtype).max:.1e}")
    return tau


def _check_finite_scores(raw: Tensor, real: Tensor) -> None:
    """Reject NaN or infinite scores of the positives and the real negatives (padded slots are not looked at)."""
    finite = torch.isfinite(raw.detach())
    if not bool(finite[:, 0].all()) or not bool(finite[:, 1:][real].all()):
        raise ValueError("scores must be finite (no NaN or inf) for the positives and the real negatives; "
                         "mask padded slots with neg_mask instead")


def _weighted_negatives(neg: Tensor, neg_weights: Tensor | None, real: Tensor) -> Tensor:
    """The negatives' logits (B, K) plus ``log w``; padded slots and zero weights become ``-inf``."""
    real_for_loss = real
    if neg_weights is not None:
        if neg_weights.shape != real.shape:
            raise ValueError(f"neg_weights must be (B, K) = {tuple(real.shape)}, got {tuple(neg_weights.shape)}")
        w = neg_weights.detach().to(device=neg.device, dtype=neg.dtype)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("neg_weights must be finite and >= 0 (no NaN or inf); an infinite weight would give "
                             "an infinite loss and NaN gradients")
        real_for_loss = real & (w > 0)
        neg = neg + torch.log(w.clamp(min=torch.finfo(w.dtype).tiny))
    return neg.masked_fill(~real_for_loss, float("-inf"))


def _in_batch_logits(batch_scores: Tensor | None, pos: Tensor, tau: float, B: int, device: torch.device) -> Tensor:
    """The other groups' positives as extra negatives (B, B): ``(batch_scores - s+) / tau`` with ``-inf`` diagonal."""
    if batch_scores is None:
        raise ValueError(
            "in_batch=True needs batch_scores (B, B) = s(context_i, positive_j). Only the 'embedding' score "
            "provides it (in_batch_embedding_scores); the 'likelihood' score would need B*B forward passes, "
            "so use loss.in_batch_negatives=false with it")
    if batch_scores.shape != (B, B):
        raise ValueError(f"batch_scores must be (B, B) = {(B, B)}, got {tuple(batch_scores.shape)}")
    other = _at_least_f32(batch_scores)
    if not bool(torch.isfinite(other.detach()).all()):
        raise ValueError("batch_scores must be finite (no NaN or inf)")
    eye = torch.eye(B, dtype=torch.bool, device=device)
    return ((other - pos) / tau).masked_fill(eye, float("-inf"))


@torch.no_grad()
def _accuracy_margin(scores: Tensor, real: Tensor) -> tuple[Tensor, Tensor, int]:
    """Detached accuracy and margin of the raw scores over the groups with a real negative, and their count."""
    raw = _at_least_f32(scores.detach())
    has_neg = real.any(dim=1)
    n_scored = int(has_neg.sum())
    if not n_scored:
        zero = torch.zeros((), device=scores.device)
        return zero, zero, 0
    max_neg = raw[:, 1:].masked_fill(~real, float("-inf")).max(dim=1).values
    mean_neg = raw[:, 1:].masked_fill(~real, 0.0).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    accuracy = (raw[:, 0] > max_neg)[has_neg].float().mean()
    margin = (raw[:, 0] - mean_neg)[has_neg].mean()
    return accuracy, margin, n_scored


def social_weights(severity: Tensor, alpha: float) -> Tensor:
    """The social weights ``w = 1 + alpha * severity`` (method.md 2.1); ``alpha = 0`` turns weighting off.

    Shapes:
        ``severity`` any shape (e.g. (B, K)), values in [0, 1] -> the same shape, float32.

    Raises:
        ValueError: ``alpha`` < 0, NaN or infinite (``alpha = inf`` would make ``inf * 0`` = NaN weights), or a
            severity outside [0, 1] or NaN.

    Chapter 02 shows the weights on a worked example; the group builders use the same rule
    (:func:`prosocial_lib.groups.types.social_weight`).
    """
    severity = torch.as_tensor(severity, dtype=torch.float32)
    if not math.isfinite(float(alpha)) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    if torch.isnan(severity).any() or (severity < 0).any() or (severity > 1).any():
        raise ValueError("severity must be normalised to [0, 1] (no NaN)")
    return 1.0 + alpha * severity


def combined_loss(ce: Tensor, npair: Tensor, npair_weight: float) -> Tensor:
    """``CE + lambda * n-pair`` (method.md 2); ``lambda = 0`` returns the CE itself (plain fine-tuning, no
    0 * inf NaN).

    Shapes:
        scalars in, a scalar out.

    Raises:
        ValueError: ``npair_weight`` < 0, NaN or infinite.

    The two loss tensors are not inspected here (that would cost a device sync per step); the n-pair term's
    inputs are checked by :func:`npair_loss`.
    """
    if not math.isfinite(float(npair_weight)) or npair_weight < 0:
        raise ValueError(f"npair_weight must be a finite number >= 0, got {npair_weight}")
    if npair_weight == 0:
        return ce
    return ce + npair_weight * npair
