"""The socially aware n-pair loss against independent reference computations and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prosocial_lib.train.losses import (
    NPairOutput,
    ProjectionHead,
    combined_loss,
    embedding_scores,
    in_batch_embedding_scores,
    likelihood_scores,
    mean_pool,
    npair_loss,
    response_logprobs,
    social_weights,
)

torch.set_num_threads(1)


def ref_npair(scores, weights=None, mask=None, tau=1.0, extra=None):
    """Plain-Python reference: -log(e^{s+/t} / (e^{s+/t} + sum_j w_j e^{s_j/t} + sum_extra e^{e/t})), per group."""
    out = []
    for i, row in enumerate(scores):
        pos = row[0] / tau
        terms = []
        for j, s in enumerate(row[1:]):
            w = 1.0 if weights is None else weights[i][j]
            if (mask is None or mask[i][j]) and w > 0:
                terms.append(w * math.exp(s / tau - pos))
        for e in (extra[i] if extra is not None else []):
            terms.append(math.exp(e / tau - pos))
        out.append(math.log1p(sum(terms)))
    return out


# ---------------------------------------------------------------------- Sohn's identity and the formula
def test_equals_sohn_npair_formula_with_dot_products():
    """w = 1, tau = 1, s = f.f': the loss is Sohn's log(1 + sum_i exp(f.f_i - f.f+)) (NeurIPS 2016, eq. 3)."""
    g = torch.Generator().manual_seed(0)
    B, K, D = 5, 4, 8
    f = torch.randn(B, D, generator=g, dtype=torch.float64)
    f_pos = torch.randn(B, D, generator=g, dtype=torch.float64)
    f_neg = torch.randn(B, K, D, generator=g, dtype=torch.float64)
    scores = torch.cat([(f * f_pos).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", f, f_neg)], dim=1)
    out = npair_loss(scores)
    sohn = []
    for b in range(B):  # independent: plain Python over lists
        fb, fp = f[b].tolist(), f_pos[b].tolist()
        dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
        sohn.append(math.log(1 + sum(math.exp(dot(fb, f_neg[b, i].tolist()) - dot(fb, fp)) for i in range(K))))
    assert out.per_group.tolist() == pytest.approx(sohn, rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(sohn) / B, rel=1e-6)
    # ... which is the softmax cross-entropy with the positive as the target class
    ce = F.cross_entropy(scores, torch.zeros(B, dtype=torch.long))
    assert out.loss.item() == pytest.approx(ce.item(), rel=1e-6)


def test_hand_computed_values_accuracy_and_margin():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
    out = npair_loss(scores)
    # group 1: log(1 + e^-1 + e^-2) = 0.40760596; group 2: log(1 + e^1 + e^-1) = 1.40760596
    assert out.per_group.tolist() == pytest.approx([0.40760596, 1.40760596], abs=1e-6)
    assert out.loss.item() == pytest.approx(0.90760596, abs=1e-6)
    assert out.accuracy.item() == pytest.approx(0.5)  # group 1 ranks its positive first, group 2 does not
    assert out.margin.item() == pytest.approx((2 - 0.5 + 0 - 0) / 2)  # s+ minus the mean negative
    assert out.n_scored == 2


def test_accuracy_margin_with_masks_and_ties():
    scores = torch.tensor([[3.0, 1.0, 9.0, 2.0],    # the 9 is padding: positive still wins
                           [1.0, 1.0, 0.0, 0.0],    # a tie with a real negative does not count as a win
                           [0.0, 5.0, 5.0, 5.0]])   # no real negative: left out of accuracy and margin
    mask = torch.tensor([[True, False, True], [True, True, True], [False, False, False]])
    out = npair_loss(scores, neg_mask=mask)
    assert out.n_scored == 2
    assert out.accuracy.item() == pytest.approx(0.5)
    assert out.margin.item() == pytest.approx(((3 - 1.5) + (1 - 1 / 3)) / 2)
    assert out.per_group[2].item() == 0.0
    none = npair_loss(scores[2:], neg_mask=mask[2:])
    assert none.n_scored == 0 and none.accuracy.item() == 0.0 and none.margin.item() == 0.0


@pytest.mark.parametrize("tau", [1.0, 0.1, 2.5])
def test_weights_mask_and_temperature_match_reference(tau):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 5, generator=g, dtype=torch.float64)
    weights = torch.rand(6, 4, generator=g, dtype=torch.float64) * 3
    weights[0, 1] = 0.0
    mask = torch.rand(6, 4, generator=g) > 0.3
    mask[2] = False
    out = npair_loss(scores, weights, mask, tau=tau)
    ref = ref_npair(scores.tolist(), weights.tolist(), mask.tolist(), tau)
    assert out.per_group.tolist() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert out.loss.item() == pytest.approx(sum(ref) / 6, rel=1e-9)


def test_a_masked_negative_changes_nothing():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(4, 3, generator=g)
    weights = torch.rand(4, 2, generator=g) + 0.5
    padded = torch.cat([scores, torch.tensor([[1e4], [float("nan")], [-3.0], [0.0]])], dim=1)
    padded_w = torch.cat([weights, torch.tensor([[7.0], [1.0], [0.0], [2.0]])], dim=1)
    mask = torch.tensor([[True, True, False]] * 4)
    padded.requires_grad_(True)
    a = npair_loss(padded, padded_w, mask)
    b = npair_loss(scores, weights)
    for field in ("loss", "per_group", "accuracy", "margin"):
        assert torch.allclose(getattr(a, field), getattr(b, field), atol=1e-6), field
    a.loss.backward()
    assert torch.isfinite(padded.grad).all() and (padded.grad[:, 3] == 0).all()


def test_zero_weight_equals_masking():
    scores = torch.tensor([[0.5, 2.0, -1.0, 0.3]])
    a = npair_loss(scores, torch.tensor([[1.0, 0.0, 2.0]]))
    b = npair_loss(scores, torch.tensor([[1.0, 5.0, 2.0]]), torch.tensor([[True, False, True]]))
    assert a.loss.item() == pytest.approx(b.loss.item())


def test_all_negatives_masked_gives_zero_loss_and_counts_in_the_mean():
    scores = torch.tensor([[0.2, 3.0, 4.0], [1.0, 0.0, 2.0]], requires_grad=True)
    mask = torch.tensor([[False, False], [True, True]])
    out = npair_loss(scores, neg_mask=mask)
    assert out.per_group[0].item() == 0.0
    g2 = math.log1p(math.exp(-1) + math.exp(1))
    assert out.loss.item() == pytest.approx(g2 / 2, rel=1e-6)
    out.loss.backward()
    assert (scores.grad[0] == 0).all() and torch.isfinite(scores.grad).all()
    only = npair_loss(scores[:1].detach(), neg_mask=mask[:1])
    assert only.loss.item() == 0.0


def test_larger_weight_means_larger_loss_and_gradient_on_that_negative():
    scores = torch.tensor([[1.0, 0.5, 0.5]], requires_grad=True)
    out = npair_loss(scores, torch.tensor([[1.0, 3.0]]))
    out.loss.backward()
    assert scores.grad[0, 2] > scores.grad[0, 1] > 0 > scores.grad[0, 0]
    assert out.loss.item() > npair_loss(scores.detach()).loss.item()


# ---------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gradients_finite_for_extreme_scores(dtype):
    big = 1e4 if dtype != torch.float16 else 6e4
    scores = torch.tensor([[-big, big, big / 2], [big, -big, 0.0], [big, big, big]], dtype=dtype,
                          requires_grad=True)
    weights = torch.tensor([[1.0, 4.0], [2.0, 1.0], [1.0, 1.0]])
    for tau in (1.0, 0.1):
        out = npair_loss(scores, weights, tau=tau)
        (grad,) = torch.autograd.grad(out.loss, scores)
        assert torch.isfinite(out.loss) and torch.isfinite(grad.float()).all()
        assert out.loss.dtype == torch.float32
        if dtype == torch.float32:
            # group 1: logsumexp(-big, big, big/2 + log 4) + big = 2 big (+ e^{-big/2} terms); group 2: ~0
            assert out.per_group[0].item() == pytest.approx(2 * big / tau, rel=1e-6)
            assert out.per_group[1].item() == pytest.approx(0.0, abs=1e-6)
            # group 3: all scores equal: log(1 + 1 + 1)
            assert out.per_group[2].item() == pytest.approx(math.log(3), abs=2e-3 * big / 1e4 / tau)  # fp32 ulp at 1e4


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    batch = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(3, 3, generator=g, dtype=torch.float64) + 0.1
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])

    def f(s, bs):
        return npair_loss(s, weights, mask, tau=0.7, in_batch=True, batch_scores=bs).loss

    assert torch.autograd.gradcheck(f, (scores, batch))
    assert torch.autograd.gradcheck(lambda s: npair_loss(s, weights, mask, tau=0.5).per_group, (scores,))


def test_bf16_and_fp16_inputs_give_the_fp32_result():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(8, 5, generator=g) * 3
    weights = social_weights(torch.rand(8, 4, generator=g), alpha=2.0)
    ref = npair_loss(scores, weights, tau=0.1)
    for dt in (torch.bfloat16, torch.float16):
        low = scores.to(dt)
        out = npair_loss(low, weights, tau=0.1)
        assert out.loss.dtype == torch.float32 and out.per_group.dtype == torch.float32
        # exactly the fp32 computation on the rounded inputs ...
        assert torch.allclose(out.loss, npair_loss(low.float(), weights, tau=0.1).loss, rtol=1e-6)
        # ... and close to the fp32 result (the only error is rounding the inputs)
        assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.05)
    # fp16 logits divided by a small tau overflow fp16 (max 65504) unless the division happens in fp32
    big = torch.tensor([[60.0, 50.0, 55.0]], dtype=torch.float16)
    assert torch.isfinite(npair_loss(big, tau=1e-3).loss)


# ---------------------------------------------------------------------- the likelihood score
def test_response_logprobs_shift_mask_and_normalisation():
    g = torch.Generator().manual_seed(5)
    N, T, V = 3, 6, 11
    logits = torch.randn(N, T, V, generator=g)
    labels = torch.randint(0, V, (N, T), generator=g)
    labels[:, :2] = -100  # the context
    labels[1, 4:] = -100  # padding
    labels[2, :] = -100   # an empty slot
    sum_logp, n = response_logprobs(logits, labels)
    logp = torch.log_softmax(logits.double(), dim=-1)
    for i in range(N):
        expected, count = 0.0, 0
        for t in range(1, T):  # token t is predicted by position t - 1
            if labels[i, t] != -100:
                expected += logp[i, t - 1, labels[i, t]].item()
                count += 1
        assert sum_logp[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert n[i].item() == count
    assert n.tolist() == [4, 2, 0]
    assert likelihood_scores(sum_logp, n).tolist() == pytest.approx(
        [sum_logp[0].item() / 4, sum_logp[1].item() / 2, 0.0], rel=1e-6)
    with pytest.raises(ValueError, match=r"\(N, T, V\)"):
        response_logprobs(logits[0], labels[0])


def test_response_logprobs_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 10, 2000, generator=g) * 4
    labels = torch.randint(0, 2000, (2, 10), generator=g)
    ref, _ = response_logprobs(logits, labels)
    low, _ = response_logprobs(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    assert torch.allclose(low, ref, rtol=0.02)


def test_likelihood_variant_end_to_end_gradient():
    """Flattened (B*(1+K), T) sequences -> scores (B, 1+K) -> loss; the gradient reaches the logits."""
    g = torch.Generator().manual_seed(7)
    B, K, T, V = 2, 2, 7, 13
    logits = torch.randn(B * (1 + K), T, V, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B * (1 + K), T), generator=g)
    labels[:, :3] = -100
    s, n = response_logprobs(logits, labels)
    scores = likelihood_scores(s, n).view(B, 1 + K)
    out = npair_loss(scores, social_weights(torch.tensor([[0.0, 1.0], [0.5, 0.25]]), alpha=1.0))
    ce = -(s.view(B, 1 + K)[:, 0].sum() / n.view(B, 1 + K)[:, 0].sum())
    total = combined_loss(ce, out.loss, 0.5)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert (logits.grad[:, 2:, :] != 0).any() and (logits.grad[:, :2, :] == 0).all()  # context positions idle
    assert out.per_group.tolist() == pytest.approx(
        ref_npair(scores.tolist(), [[1.0, 2.0], [1.5, 1.25]]), rel=1e-5)


def test_in_batch_requires_batch_scores():
    with pytest.raises(ValueError, match="likelihood"):
        npair_loss(torch.zeros(2, 3), in_batch=True)
    with pytest.raises(ValueError, match=r"\(B, B\)"):
        npair_loss(torch.zeros(2, 3), in_batch=True, batch_scores=torch.zeros(3, 3))


# ---------------------------------------------------------------------- the embedding score
def test_mean_pool_and_cosine_scores():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]],
                           [[0.0, 2.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert pooled.tolist() == [[2.0, 2.0], [0.0, 2.0]]
    assert mean_pool(hidden, torch.zeros(2, 3)).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # empty: zeros, not NaN
    ctx = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    cand = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]],
                         [[1.0, 1.0], [1.0, 0.0], [-1.0, -1.0]]])
    s = embedding_scores(ctx, cand)
    assert torch.allclose(s, torch.tensor([[1.0, 0.0, -1.0], [1.0, math.sqrt(0.5), -1.0]]), atol=1e-6)
    with pytest.raises(ValueError):
        embedding_scores(ctx, cand[:1])


def test_in_batch_negatives_with_embedding_scores():
    g = torch.Generator().manual_seed(8)
    B, K, D = 4, 2, 6
    ctx = torch.randn(B, D, generator=g, dtype=torch.float64)
    cand = torch.randn(B, 1 + K, D, generator=g, dtype=torch.float64)
    scores = embedding_scores(ctx, cand)
    bs = in_batch_embedding_scores(ctx, cand[:, 0])
    assert torch.allclose(bs.diagonal(), scores[:, 0], atol=1e-6)
    mask = torch.tensor([[True, True], [True, False], [False, False], [True, True]])
    out = npair_loss(scores, neg_mask=mask, tau=0.1, in_batch=True, batch_scores=bs)
    extra = [[bs[i, j].item() for j in range(B) if j != i] for i in range(B)]
    ref = ref_npair(scores.tolist(), mask=mask.tolist(), tau=0.1, extra=extra)
    assert out.per_group.tolist() == pytest.approx(ref, rel=1e-5)
    assert out.per_group[2] > 0  # no mined negatives, but the in-batch ones count
    assert out.loss > npair_loss(scores, neg_mask=mask, tau=0.1).loss
    single = npair_loss(scores[:1], neg_mask=mask[:1], in_batch=True, batch_scores=bs[:1, :1])
    assert single.loss.item() == pytest.approx(npair_loss(scores[:1], neg_mask=mask[:1]).loss.item())


def test_projection_head_and_embedding_gradient():
    torch.manual_seed(0)
    head = ProjectionHead(8, 4)
    mlp = ProjectionHead(8, 4, hidden_dim=16)
    hidden = torch.randn(3 * 3, 5, 8, requires_grad=True)
    mask = torch.ones(9, 5)
    for h in (head, mlp):
        pooled = h(mean_pool(hidden, mask))
        assert pooled.shape == (9, 4)
        ctx, cand = pooled[:3], pooled[3:].view(3, 2, 4)
        ctx_scores = embedding_scores(ctx, torch.cat([cand, cand[:, :1]], dim=1))
        out = npair_loss(ctx_scores, tau=0.1)
        out.loss.backward()
        assert torch.isfinite(hidden.grad).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in h.parameters())
    assert mlp(torch.randn(2, 8).bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------------- weights and the combination
def test_social_weights():
    w = social_weights(torch.tensor([0.0, 0.25, 1.0]), alpha=2.0)
    assert w.tolist() == [1.0, 1.5, 3.0]
    assert social_weights(torch.tensor([0.3, 0.9]), alpha=0.0).tolist() == [1.0, 1.0]  # the ablation
    for bad in ([1.5], [-0.1], [float("nan")]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            social_weights(torch.tensor(bad), alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        social_weights(torch.tensor([0.5]), alpha=-1.0)


def test_combined_loss():
    ce, npair = torch.tensor(2.0), torch.tensor(0.5)
    assert combined_loss(ce, npair, 1.0).item() == 2.5
    assert combined_loss(ce, npair, 0.2).item() == pytest.approx(2.1)
    assert combined_loss(ce, torch.tensor(float("inf")), 0.0).item() == 2.0  # lambda = 0 is exactly CE
    with pytest.raises(ValueError):
        combined_loss(ce, npair, -1.0)


def test_input_validation():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="neg_mask"):
        npair_loss(s, neg_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="neg_weights"):
        npair_loss(s, neg_weights=torch.ones(3, 2))
    with pytest.raises(ValueError, match=">= 0"):
        npair_loss(s, neg_weights=-torch.ones(2, 2))
    with pytest.raises(ValueError, match="tau"):
        npair_loss(s, tau=0.0)
    with pytest.raises(ValueError, match=r"\(B, 1\+K\)"):
        npair_loss(torch.zeros(3))
    assert isinstance(npair_loss(torch.zeros(2, 1)), NPairOutput)  # K = 0: no negatives, zero loss
    assert npair_loss(torch.zeros(2, 1)).loss.item() == 0.0


# ---------------------------------------------------------------------- non-finite inputs (issue #15, loss-nonfinite)
def test_an_infinite_weight_is_rejected_not_an_infinite_loss():
    # the case: w = inf gave loss inf and gradient [-1, nan]
    s = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    for bad in (float("inf"), float("nan"), -float("inf")):
        with pytest.raises(ValueError, match="finite"):
            npair_loss(s, neg_weights=torch.tensor([[bad]]))
    big = npair_loss(s, neg_weights=torch.tensor([[1e30]]))  # large but finite: log w = 69.1, still finite
    big.loss.backward()
    assert torch.isfinite(big.loss) and torch.isfinite(s.grad).all()
    assert big.loss.item() == pytest.approx(ref_npair([[-1.0, -2.0]], [[1e30]])[0], rel=1e-6)


def test_tiny_temperature_is_rejected_or_computed_stably():
    # the case: tau = 1e-40 made s / tau overflow (loss and gradients NaN); 1 / tau overflows float32 -> rejected
    s = torch.tensor([[-2.0, -3.0, -4.0]], requires_grad=True)
    with pytest.raises(ValueError, match="too small"):
        npair_loss(s, tau=1e-40)
    # new instance: tau = 1e-38 is representable and so is 1 / tau, but s / tau = -4e38 .. -6e38 overflows to -inf
    # (the old form gave logsumexp(-inf, ...) - (-inf) = NaN). The positive is the best score, so the exact loss
    # is log(1 + e^{-1e38} + e^{-2e38}) = 0, with finite gradients.
    s = torch.tensor([[-4.0, -5.0, -6.0]], requires_grad=True)
    out = npair_loss(s, tau=1e-38)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.isfinite(s.grad).all()
    # a tie at that temperature: log 2 exactly, gradient +-0.5 / tau (finite in float32)
    s = torch.tensor([[-4.0, -4.0]], requires_grad=True)
    out = npair_loss(s, tau=1e-30)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2)) and torch.isfinite(s.grad).all()
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="tau"):
            npair_loss(s.detach(), tau=bad)


def test_non_finite_scores_of_real_replies_are_rejected_padded_slots_are_not():
    # new instance: an infinite score of a real negative gave loss inf and NaN gradients
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scores must be finite"):
            npair_loss(torch.tensor([[-1.0, bad]]))
        with pytest.raises(ValueError, match="scores must be finite"):
            npair_loss(torch.tensor([[bad, -1.0]]))
        with pytest.raises(ValueError, match="batch_scores must be finite"):
            npair_loss(torch.tensor([[-1.0, -2.0], [-1.0, -2.0]]), in_batch=True,
                       batch_scores=torch.tensor([[0.0, bad], [0.0, 0.0]]))
    # a padded (masked) slot is never read, whatever it holds
    s = torch.tensor([[-1.0, -2.0, float("nan")]], requires_grad=True)
    out = npair_loss(s, neg_mask=torch.tensor([[True, False]]))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(ref_npair([[-1.0, -2.0]])[0])
    assert torch.isfinite(s.grad[:, :2]).all()


def test_social_weights_and_combined_loss_reject_non_finite_factors():
    # the case: alpha = inf gave weights [nan, inf]; new instances: alpha = nan (it passed the `alpha < 0` check)
    # and a NaN / infinite lambda in combined_loss
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            social_weights(torch.tensor([0.0, 0.5]), bad)
        with pytest.raises(ValueError, match="npair_weight"):
            combined_loss(torch.tensor(2.0), torch.tensor(0.5), bad)
