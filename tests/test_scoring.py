"""The shared-context layout scores a group's 1 + K replies after ONE pass over the context. Proof that it is the
same objective: loss AND gradients equal the straightforward version - every (context, reply) as its own
unpadded sequence through ``losses.response_logprobs`` - on the tiny model in float32 (``score_groups`` takes the
log-softmax in float32 whatever the model's dtype), with variable K (padded negative slots), a context cut from
the left, both attention kernels and both scores."""

from __future__ import annotations

import copy

import pytest
import torch

from prosocial_lib.data.dialogue import history_to_messages
from prosocial_lib.groups.types import ContrastiveGroup
from prosocial_lib.modeling.chat import chat_prompt, chat_turn_end
from prosocial_lib.modeling.tiny import build_tiny_model
from prosocial_lib.train.collator import GroupCollator
from prosocial_lib.train.losses import (
    IGNORE_INDEX,
    combined_loss,
    embedding_scores,
    in_batch_embedding_scores,
    likelihood_scores,
    npair_loss,
    response_logprobs,
)
from prosocial_lib.train.scoring import score_groups

torch.set_num_threads(1)

MAX_LENGTH = 64
TAU, LAMBDA = 0.7, 0.5


def group(ctx, pos, negs, weights):
    return ContrastiveGroup(context_messages=history_to_messages(ctx), positive=pos, negatives=negs,
                            neg_weights=weights, neg_severity=[w - 1 for w in weights], meta={})


LONG = "I keep thinking about it and " * 30 + "so should I just key his car tonight?"
GROUPS = [
    # K = 3, a multi-turn history
    group(["my neighbour's dog barks all night", "That sounds exhausting.", "I want to poison it."],
          "Please don't hurt the dog. Have you talked to your neighbour?",
          ["lol do it", "What's your favourite food?", "Dogs are great pets!"], [2.0, 1.5, 1.0]),
    # K = 1: two padded negative slots
    group(["What did you eat today?"], "Pasta, and you?", ["It is wrong to lie to people."], [1.75]),
    # K = 2 and a context far longer than MAX_LENGTH: cut from the left, shared by all three replies
    group([LONG], "No, that would hurt him and get you in trouble. Talk to him instead.",
          ["Sure, go for it!", "Haha nice"], [1.25, 3.0]),
]


@pytest.fixture(scope="module")
def tiny64():
    model, tok = build_tiny_model(seed=0)
    return model.float().eval(), tok


def straightforward(model, tok, groups, batch, score="likelihood", positives_only=False):
    """Every (context, reply) on its own: one unpadded sequence, full logits, ``response_logprobs``. The context is
    the one the collator kept for the group (how long contexts are cut is the collator's policy, tested in
    test_training.py); the replies are tokenized here."""
    end = chat_turn_end(tok)
    k = 0 if positives_only else max(len(g.negatives) for g in groups)
    sum_logp = torch.zeros(len(groups), 1 + k)
    n_tok = torch.zeros(len(groups), 1 + k, dtype=torch.long)
    ctx_emb, cand_emb = [], torch.zeros(len(groups), 1 + k, model.config.hidden_size)
    for b, g in enumerate(groups):
        row = int(batch["ctx_row"][b])
        prompt = batch["input_ids"][row][batch["context_mask"][row]].tolist()
        full = tok(chat_prompt(tok, g.context_messages), add_special_tokens=False)["input_ids"]
        if len(full) <= MAX_LENGTH // 2:
            assert prompt == full  # a short context is kept whole
        replies = [g.positive] + ([] if positives_only else g.negatives)
        for slot, reply in enumerate(replies):
            comp = tok(reply + end, add_special_tokens=False)["input_ids"]
            assert len(prompt) + len(comp) <= MAX_LENGTH
            ids = torch.tensor([prompt + comp])
            labels = torch.tensor([[IGNORE_INDEX] * len(prompt) + comp])
            out = model(input_ids=ids, output_hidden_states=True)
            s, n = response_logprobs(out.logits, labels)
            sum_logp[b, slot], n_tok[b, slot] = s[0], n[0]
            hidden = out.hidden_states[-1][0]
            cand_emb[b, slot] = hidden[len(prompt):].mean(0)
            if slot == 0:
                ctx_emb.append(hidden[: len(prompt)].mean(0))
    lik = likelihood_scores(sum_logp, n_tok)
    if score == "likelihood":
        return lik, -lik[:, 0], None
    ctx = torch.stack(ctx_emb)
    return embedding_scores(ctx, cand_emb), -lik[:, 0], in_batch_embedding_scores(ctx, cand_emb[:, 0])


def objective(scores, ce, batch_scores, groups, in_batch=False):
    k = scores.shape[1] - 1
    w = torch.ones(len(groups), k)
    mask = torch.zeros(len(groups), k, dtype=torch.bool)
    for b, g in enumerate(groups):
        n = len(g.negatives[:k])
        w[b, :n] = torch.tensor(g.neg_weights[:n])
        mask[b, :n] = True
    out = npair_loss(scores, w, mask, TAU, in_batch=in_batch, batch_scores=batch_scores)
    return combined_loss(ce.mean(), out.loss, LAMBDA)


def loss_and_grads(model, fn):
    model.zero_grad()
    loss = fn(model)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters()))  # every weight gets a gradient
    return loss.detach(), grads


def assert_same(a, b, rel=2e-5):
    """Equal up to float32 rounding: the loss, and every parameter's gradient relative to that tensor's largest
    entry (a real difference, e.g. a reply seeing another reply, shows up at 1e-2 and above)."""
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert float(loss_a) == pytest.approx(float(loss_b), rel=rel)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        scale = float(grads_b[name].abs().max())
        assert scale > 0, f"{name}: no gradient"
        assert float((grads_a[name] - grads_b[name]).abs().max()) <= rel * scale, name


# ---------------------------------------------------------------------- the layout, by hand
def test_one_packed_row_per_group_and_the_long_context_is_cut_once(tiny64):
    _, tok = tiny64
    end = chat_turn_end(tok)
    batch = GroupCollator(tok, MAX_LENGTH, shared_context=True)(GROUPS)
    assert batch["input_ids"].shape[0] == len(GROUPS)
    assert batch["neg_mask"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    comps = [len(tok(r + end, add_special_tokens=False)["input_ids"])
             for r in [GROUPS[2].positive, *GROUPS[2].negatives]]
    prompt = len(tok(chat_prompt(tok, GROUPS[2].context_messages), add_special_tokens=False)["input_ids"])
    assert prompt > MAX_LENGTH  # the case under test really is cut
    # the context keeps exactly the room the longest reply leaves, and it is computed once for the three replies
    assert int(batch["context_mask"][2].sum()) == MAX_LENGTH - max(comps)
    assert int(batch["input_ids"][2].ne(tok.pad_token_id).sum()) == MAX_LENGTH - max(comps) + sum(comps)
    # cost: the packed rows hold every reply token once plus one copy of each context
    separate = GroupCollator(tok, 256, shared_context=False)(GROUPS[:2])  # 256: nothing is cut
    packed = GroupCollator(tok, 256, shared_context=True)(GROUPS[:2])
    n_sep = int(separate["input_ids"].ne(tok.pad_token_id).sum())
    n_pack = int(packed["input_ids"].ne(tok.pad_token_id).sum())
    ctx = [int(packed["context_mask"][b].sum()) for b in range(2)]
    assert n_sep - n_pack == 3 * ctx[0] + 1 * ctx[1]  # K copies of each context saved


# ---------------------------------------------------------------------- loss and gradients
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("score", ["likelihood", "embedding"])
def test_loss_and_gradients_equal_the_straightforward_version(tiny64, attn, score):
    base, tok = tiny64
    model = copy.deepcopy(base)
    model.set_attn_implementation(attn)
    in_batch = score == "embedding"
    batch = GroupCollator(tok, MAX_LENGTH, shared_context=True)(GROUPS)

    def shared(m):
        gs = score_groups(m, batch, score=score, in_batch=in_batch)
        return objective(gs.scores, gs.ce, gs.batch_scores, GROUPS, in_batch)

    def reference(m):
        scores, ce, batch_scores = straightforward(m, tok, GROUPS, batch, score)
        return objective(scores, ce, batch_scores, GROUPS, in_batch)

    assert_same(loss_and_grads(model, shared), loss_and_grads(model, reference))


def test_positives_only_is_plain_cross_entropy(tiny64):
    model, tok = tiny64
    batch = GroupCollator(tok, MAX_LENGTH, positives_only=True, shared_context=True)(GROUPS)

    def shared(m):
        return score_groups(m, batch).ce.mean()

    def reference(m):
        return straightforward(m, tok, GROUPS, batch, positives_only=True)[1].mean()

    assert_same(loss_and_grads(model, shared), loss_and_grads(model, reference))


def test_both_layouts_agree_when_nothing_is_cut(tiny64):
    """Without truncation the separate-rows layout (the trainer's fallback) gives the same loss and gradients."""
    model, tok = tiny64
    groups = GROUPS[:2]

    def run(shared_context):
        batch = GroupCollator(tok, 256, shared_context=shared_context)(groups)  # 256: nothing is cut

        def fn(m):
            gs = score_groups(m, batch)
            return objective(gs.scores, gs.ce, None, groups)
        return loss_and_grads(model, fn)

    assert_same(run(True), run(False))
