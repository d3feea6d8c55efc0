"""The collator, the scores, the contrastive trainer and the two-stage runner, on the tiny model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from prosocial_lib.config import get_config
from prosocial_lib.data import history_to_messages
from prosocial_lib.groups.types import ContrastiveGroup
from prosocial_lib.modeling.chat import chat_prompt, chat_turn_end
from prosocial_lib.modeling.loading import load_model_and_tokenizer
from prosocial_lib.modeling.tiny import build_tiny_model
from prosocial_lib.train.collator import GroupCollator
from prosocial_lib.train.losses import npair_loss
from prosocial_lib.train.scoring import evaluate_groups, score_groups
from prosocial_lib.train.stages import (
    HEAD_FILE,
    METRICS,
    load_stage_result,
    run_stage,
    run_stages,
    score_heldout,
    stage_fingerprint,
    stage_groups,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny_model(seed=0)
    model.eval()
    return model, tok


def group(ctx, pos, negs, weights=None):
    weights = weights or [1.0 + 0.5 * i for i in range(len(negs))]
    return ContrastiveGroup(context_messages=[{"role": "user", "content": c} for c in ctx], positive=pos,
                            negatives=negs, neg_weights=weights, neg_severity=[w - 1 for w in weights], meta={})


GROUPS = [
    group(["I want to hit my brother."], "Please don't, talk to him instead.", ["Go for it!", "lol ok"]),
    group(["What did you eat today?"], "Pasta, and you?", ["It is wrong to lie to people."], [1.75]),
]


# ---------------------------------------------------------------------- the collator
REPLIES = ["Please don't, talk to him instead.", "Go for it!", "lol ok", "Pasta, and you?",
           "It is wrong to lie to people."]
CONTEXTS = [GROUPS[0].context_messages] * 3 + [GROUPS[1].context_messages] * 2
SEGMENTS = [0, 1, 2, 3, 4]  # b * (1 + K) + slot with K = 2; group 1's second negative slot (5) is padding


def _seen_by(batch, seg):
    """The tokens the model sees when it predicts the last token of segment ``seg``, and that segment's tokens."""
    sel = (batch["tgt_seg"] == seg).nonzero(as_tuple=True)[0]
    row = int(batch["tgt_row"][sel[0]])
    last = int(batch["tgt_pos"][sel[-1]])
    att = batch["attention_mask"][row]
    visible = att[0, last] if att.dim() == 3 else att.bool() & (torch.arange(att.shape[0]) <= last)
    return batch["input_ids"][row][visible].tolist(), batch["tgt_id"][sel].tolist(), row, sel


@pytest.mark.parametrize("shared", [True, False])
def test_collator_layout_masks_and_weights(tiny, shared):
    _, tok = tiny
    batch = GroupCollator(tok, max_length=128, shared_context=shared)(GROUPS)
    n_rows, t = batch["input_ids"].shape
    assert n_rows == (2 if shared else 5)  # one packed row per group, or (1 + 2) + (1 + 1) rows
    assert batch["neg_mask"].tolist() == [[True, True], [True, False]]
    assert batch["neg_weights"].tolist() == [[1.0, 1.5], [1.75, 1.0]]
    assert sorted(set(batch["tgt_seg"].tolist())) == SEGMENTS
    end = chat_turn_end(tok)
    for seg, reply, ctx in zip(SEGMENTS, REPLIES, CONTEXTS):
        seen, targets, row, sel = _seen_by(batch, seg)
        # each reply sees exactly the chat template's rendering of its context, then itself - no other reply
        assert tok.decode(seen) == chat_prompt(tok, ctx) + reply + end
        assert tok.decode(targets) == reply + end  # only reply tokens are scored, never the context
        pos = batch["tgt_pos"][sel]
        pred = batch["tgt_pred"][sel]
        assert (pred[1:] == pos[:-1]).all()  # token i is predicted from token i - 1 of the same reply ...
        ctx_pos = batch["context_mask"][row].nonzero(as_tuple=True)[0]
        assert int(pred[0]) == int(ctx_pos[-1])  # ... and the first one from the context's last token
        # position ids continue the context, whatever the padding or the packing
        n_ctx = len(ctx_pos)
        assert batch["position_ids"][row][pos].tolist() == list(range(n_ctx, n_ctx + len(pos)))
        assert batch["position_ids"][row][ctx_pos].tolist() == list(range(n_ctx))
    assert batch["input_ids"][:, -1].ne(tok.pad_token_id).all()  # left padding: every row ends at T
    assert batch["ctx_row"].tolist() == ([0, 1] if shared else [0, 3])


def test_collator_cuts_long_contexts_from_the_left(tiny):
    _, tok = tiny
    long_ctx = ["word " * 200 + "THE END?"]
    for shared in (True, False):
        col = GroupCollator(tok, max_length=40, shared_context=shared)
        batch = col([group(long_ctx, "Sure.", ["No."])])
        assert col.truncated == (1 if shared else 2)
        for seg in (0, 1):
            seen, targets, *_ = _seen_by(batch, seg)
            assert len(seen) <= 40 and "THE END?" in tok.decode(seen)  # the recent end survives
        assert tok.decode(_seen_by(batch, 0)[0]).endswith("Sure." + chat_turn_end(tok))
        # a reply longer than the window keeps its start and leaves half the window to the context
        batch = col([group(long_ctx, "yes " * 100, ["No."])])
        seen, targets, *_ = _seen_by(batch, 0)
        assert len(targets) == 20 and len(seen) == 40


def test_collator_drops_oldest_turns_first(tiny):
    _, tok = tiny
    turns = [f"turn {i} " + "blah " * 12 for i in range(8)] + ["the question?"]
    g = dataclasses.replace(group([], "Answer.", ["No."]), context_messages=history_to_messages(turns, system="Be kind."))
    col = GroupCollator(tok, max_length=80)
    seen, _, _, _ = _seen_by(col([g]), 0)
    text = tok.decode(seen)
    kept = [t for t in turns if t in text]
    assert col.truncated == 1 and len(seen) <= 80
    assert kept == turns[len(turns) - len(kept):] and 1 <= len(kept) < len(turns)  # a suffix of whole turns
    assert text.startswith(chat_prompt(tok, [{"role": "system", "content": "Be kind."}], False))


def test_collator_positives_only(tiny):
    _, tok = tiny
    batch = GroupCollator(tok, max_length=128, positives_only=True)(GROUPS)
    assert batch["input_ids"].shape[0] == 2 and batch["neg_mask"].shape == (2, 0)
    assert sorted(set(batch["tgt_seg"].tolist())) == [0, 1]


# ---------------------------------------------------------------------- scores
def _mean_logprob(model, tok, messages, reply):
    """Independent reference: one unpadded sequence, full logits, mean log-prob of the reply tokens."""
    prompt = tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
    comp = tok(reply + chat_turn_end(tok), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + comp])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt) + j - 1, c]) for j, c in enumerate(comp)) / len(comp)


@pytest.mark.parametrize("shared", [True, False])
def test_scores_match_separate_unpadded_runs(tiny, shared):
    model, tok = tiny
    batch = GroupCollator(tok, max_length=128, shared_context=shared)(GROUPS)
    with torch.no_grad():
        gs = score_groups(model, batch)
    for b, g in enumerate(GROUPS):
        expected = [_mean_logprob(model, tok, g.context_messages, r) for r in [g.positive, *g.negatives]]
        got = gs.scores[b, : len(expected)].tolist()
        assert got == pytest.approx(expected, abs=2e-5)
        assert float(gs.ce[b]) == pytest.approx(-expected[0], abs=2e-5)


def test_packed_rows_under_eager_attention(tiny):
    """Eager attention gets the 4D mask as an additive float mask; the scores stay the same."""
    import copy
    model, tok = tiny
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    batch = GroupCollator(tok, max_length=128)(GROUPS)
    with torch.no_grad():
        a, b = score_groups(model, batch), score_groups(eager, batch)
    assert torch.allclose(a.scores, b.scores, atol=2e-5) and torch.allclose(a.ce, b.ce, atol=2e-5)


def test_embedding_scores_are_cosines(tiny):
    model, tok = tiny
    batch = GroupCollator(tok, max_length=128)(GROUPS)
    with torch.no_grad():
        gs = score_groups(model, batch, score="embedding", in_batch=True)
    assert gs.scores.shape == (2, 3) and gs.batch_scores.shape == (2, 2)
    assert (gs.scores.abs() <= 1 + 1e-5).all()
    assert torch.allclose(gs.batch_scores.diagonal(), gs.scores[:, 0], atol=1e-5)
    with torch.no_grad():  # packing does not change the pooled states
        flat = score_groups(model, GroupCollator(tok, 128, shared_context=False)(GROUPS), score="embedding")
    assert torch.allclose(flat.scores, gs.scores, atol=1e-5) and torch.allclose(flat.ce, gs.ce, atol=1e-5)


def test_evaluate_groups(tiny):
    model, tok = tiny
    cfg = get_config("smoke")
    groups = [dataclasses.replace(g, meta={"kind": kind}) for g, kind in zip(GROUPS, ["unsafe", "casual"])]
    m = evaluate_groups(model, tok, groups, cfg.loss, max_length=cfg.model.max_length, batch_size=1, progress=False)
    assert set(m) == {"accuracy", "margin", "npair", "ce", "groups", "by_kind"} and m["groups"] == 2
    batch = GroupCollator(tok, 128)(groups)
    with torch.no_grad():
        gs = score_groups(model, batch)
    ref = npair_loss(gs.scores, batch["neg_weights"], batch["neg_mask"], cfg.loss.effective_tau)
    assert m["accuracy"] == pytest.approx(float(ref.accuracy)) and m["margin"] == pytest.approx(float(ref.margin),
                                                                                                abs=1e-5)
    assert m["npair"] == pytest.approx(float(ref.loss), abs=1e-5)
    margins = [float(gs.scores[0, 0] - gs.scores[0, 1:3].mean()), float(gs.scores[1, 0] - gs.scores[1, 1])]
    assert m["margin"] == pytest.approx(sum(margins) / 2, abs=1e-5)
    assert m["ce"] == pytest.approx(float(gs.ce.mean()), abs=1e-5)
    assert m["by_kind"]["casual"]["margin"] == pytest.approx(margins[1], abs=1e-5)
    assert m["by_kind"]["unsafe"]["groups"] == 1


# ---------------------------------------------------------------------- the runner
def top(metrics):
    """The overall held-out metrics, without the per-kind breakdown."""
    return {k: v for k, v in metrics.items() if k != "by_kind"}


def tiny_cfg(tmp_path, name="run", **over):
    base = {"runs_dir": str(tmp_path), "run_name": name, "model.threads": 1,
            "stage1.max_groups": 8, "stage1.max_steps": 10, "stage1.batch_size": 4, "stage1.learning_rate": 3e-3,
            "stage1.eval_groups": 4, "stage1.logging_steps": 1, "stage1.warmup_ratio": 0.0,
            "stage2.max_groups": 8, "stage2.max_steps": 10, "stage2.batch_size": 4, "stage2.learning_rate": 3e-3,
            "stage2.eval_groups": 4, "stage2.logging_steps": 1, "stage2.warmup_ratio": 0.0}
    return get_config("smoke", {**base, **over})


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    cfg = tiny_cfg(tmp)
    return cfg, run_stages(cfg, progress=False)


def test_both_stages_learn_on_their_training_groups(two_stages):
    cfg, results = two_stages
    start = None
    for stage in (1, 2):
        r = results[stage]
        assert not r.reused and (r.checkpoint_dir / "config.json").exists()
        assert r.checkpoint_dir == cfg.run_dir / f"stage{stage}"
        groups, _ = stage_groups(cfg, stage, "train")
        before_model, tok = (load_model_and_tokenizer("tiny", seed=cfg.seed) if start is None
                             else load_model_and_tokenizer(str(start)))
        after_model, _ = load_model_and_tokenizer(str(r.checkpoint_dir))
        before = score_heldout(before_model, tok, groups, cfg, progress=False)
        after = score_heldout(after_model, tok, groups, cfg, progress=False)
        assert after["npair"] < before["npair"] - 0.05, (stage, before, after)
        assert after["accuracy"] > before["accuracy"], (stage, before, after)
        assert after["margin"] > before["margin"]
        logs = [h for h in r.log_history if "npair" in h]
        assert len(logs) == 10 and {"ce", "npair", "contrastive_accuracy", "margin", "loss"} <= set(logs[0])
        assert logs[0]["loss"] == pytest.approx(logs[0]["ce"] + logs[0]["npair"], rel=1e-4)
        saved = json.loads((r.checkpoint_dir / METRICS).read_text())
        assert top(saved["after"]) == pytest.approx(top(r.metrics["after"]))
        assert saved["fingerprint"] == stage_fingerprint(cfg, stage, start)
        assert not (r.checkpoint_dir / "trainer").exists()  # resumable checkpoints are dropped when done
        start = r.checkpoint_dir
    assert results[2].metrics["init_from"] == str(results[1].checkpoint_dir)


def test_finished_stages_are_reused(two_stages):
    cfg, results = two_stages
    stamp = (results[1].checkpoint_dir / "model.safetensors").stat().st_mtime_ns
    again = run_stages(cfg, progress=False)
    assert again[1].reused and again[2].reused
    assert again[2].metrics == json.loads((results[2].checkpoint_dir / METRICS).read_text())
    assert (results[1].checkpoint_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # a changed stage-1 setting changes both fingerprints: stage 2 starts from a different model
    changed = tiny_cfg(cfg.runs_dir, **{"stage1.learning_rate": 1e-3})
    assert stage_fingerprint(changed, 1) != stage_fingerprint(cfg, 1)
    # knobs that do not change the result do not retrain
    same = tiny_cfg(cfg.runs_dir, **{"model.threads": 2, "stage1.save_steps": 7})
    assert stage_fingerprint(same, 1) == stage_fingerprint(cfg, 1)


def test_same_seed_same_metrics(two_stages, tmp_path):
    cfg, results = two_stages
    other = tiny_cfg(tmp_path, name="again")
    r = run_stage(other, 1, progress=False)
    assert top(r.metrics["after"]) == pytest.approx(top(results[1].metrics["after"]), abs=1e-6)
    losses = [h["loss"] for h in r.log_history if "loss" in h]
    assert losses == pytest.approx([h["loss"] for h in results[1].log_history if "loss" in h], abs=1e-6)


def test_own_training_groups(two_stages, tmp_path):
    """A caller's own groups (another negative sampler) train the stage, and are part of its fingerprint."""
    cfg, _ = two_stages
    own_cfg = tiny_cfg(tmp_path, name="own", **{"stage1.max_steps": 2})
    groups, _ = stage_groups(own_cfg, 1, "train")
    reversed_negatives = [dataclasses.replace(g, negatives=g.negatives[::-1], neg_weights=g.neg_weights[::-1],
                                              neg_severity=g.neg_severity[::-1]) for g in groups]
    fp_default = stage_fingerprint(own_cfg, 1)
    assert stage_fingerprint(own_cfg, 1, train_groups=groups) != fp_default
    assert stage_fingerprint(own_cfg, 1, train_groups=reversed_negatives) != \
        stage_fingerprint(own_cfg, 1, train_groups=groups)
    r = run_stage(own_cfg, 1, progress=False, train_groups=groups[:4])
    assert r.metrics["train"]["groups"] == 4 and r.metrics["groups"]["train_build"] is None
    assert r.metrics["fingerprint"] == stage_fingerprint(own_cfg, 1, train_groups=groups[:4])
    assert run_stage(own_cfg, 1, progress=False, train_groups=groups[:4]).reused
    from prosocial_lib.groups.io import write_groups
    path = write_groups(groups[:4], tmp_path / "own.jsonl")  # the same groups from a file: the same run
    assert run_stage(own_cfg, 1, progress=False, train_groups=path).reused
    assert not run_stage(own_cfg, 1, progress=False).reused  # the default groups are another run


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True])
def test_interrupted_run_resumes(tmp_path, lora):
    from transformers import TrainerCallback

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise Interrupt()

    over = {"stage1.max_steps": 4, "stage1.save_steps": 2, "model.lora": lora}
    cfg = tiny_cfg(tmp_path, name="resume", **over)
    with pytest.raises(Interrupt):
        run_stage(cfg, 1, callbacks=[StopAfterSave()], progress=False)
    assert (cfg.run_dir / "stage1" / "trainer" / "checkpoint-2").exists()
    assert load_stage_result(cfg.run_dir / "stage1") is None
    resumed = run_stage(cfg, 1, progress=False)
    assert resumed.metrics["train"]["resumed"] and resumed.metrics["train"]["global_step"] == 4
    straight = run_stage(tiny_cfg(tmp_path, name="straight", **over), 1, progress=False)
    assert top(resumed.metrics["after"]) == pytest.approx(top(straight.metrics["after"]), abs=1e-5)
    assert [h["step"] for h in resumed.log_history if "loss" in h] == [1, 2, 3, 4]
    # LoRA adapters are merged: the stage folder holds a plain model that loads like any other
    assert (resumed.checkpoint_dir / "config.json").exists()
    assert not (resumed.checkpoint_dir / "adapter_config.json").exists()
    model, _ = load_model_and_tokenizer(str(resumed.checkpoint_dir))
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_resumed_train_loss_is_the_whole_run_mean_whatever_the_logging_steps(tmp_path):
    """Logging every 3 steps, checkpoints every 2: the Trainer's own train_loss would count only the steps after the
    resume; the stage's is the mean over all of them, as in a run never interrupted."""
    from transformers import TrainerCallback

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise Interrupt()

    over = {"stage1.max_steps": 5, "stage1.save_steps": 2, "stage1.logging_steps": 3}
    cfg = tiny_cfg(tmp_path, name="resume-loss", **over)
    with pytest.raises(Interrupt):
        run_stage(cfg, 1, callbacks=[StopAfterSave()], progress=False)
    resumed = run_stage(cfg, 1, progress=False)
    straight = run_stage(tiny_cfg(tmp_path, name="straight-loss", **over), 1, progress=False)
    assert resumed.metrics["train"]["resumed"] and not straight.metrics["train"]["resumed"]
    assert [h["step"] for h in straight.log_history if "loss" in h] == [2, 3, 4, 5]  # every checkpoint and the end
    assert resumed.metrics["train"]["train_loss"] == pytest.approx(straight.metrics["train"]["train_loss"], rel=1e-9)
    losses = [h["loss"] for h in straight.log_history if "loss" in h]
    assert straight.metrics["train"]["train_loss"] == pytest.approx((2 * losses[0] + sum(losses[1:])) / 5)


def test_lambda_zero_is_plain_cross_entropy_and_ga_matches(tmp_path):
    ce_only = tiny_cfg(tmp_path, name="ce", **{"loss.npair_weight": 0.0, "stage1.max_steps": 3})
    r = run_stage(ce_only, 1, progress=False)
    logs = [h for h in r.log_history if "loss" in h]
    assert all("npair" not in h and h["loss"] == pytest.approx(h["ce"], rel=1e-5) for h in logs)
    assert "accuracy" in r.metrics["after"]  # held-out metrics still score the negatives
    # gradient accumulation: 2 x 2 groups per step == 4 groups per step
    a = run_stage(tiny_cfg(tmp_path, name="ga1", **{"stage1.max_steps": 3}), 1, progress=False)
    b = run_stage(tiny_cfg(tmp_path, name="ga2", **{"stage1.max_steps": 3, "stage1.batch_size": 2,
                                                    "stage1.grad_accum": 2}), 1, progress=False)
    la = [h["loss"] for h in a.log_history if "loss" in h]
    lb = [h["loss"] for h in b.log_history if "loss" in h]
    assert lb == pytest.approx(la, rel=1e-4)
    assert b.metrics["after"]["npair"] == pytest.approx(a.metrics["after"]["npair"], rel=1e-4)


def test_embedding_score_with_head_and_in_batch_negatives(tmp_path):
    from safetensors import safe_open
    over = {"loss.score": "embedding", "loss.projection_dim": 8, "loss.in_batch_negatives": True,
            "stage1.max_steps": 2, "stage2.max_steps": 2}
    results = run_stages(tiny_cfg(tmp_path, name="emb", **over), progress=False)
    for r in results.values():
        assert (r.checkpoint_dir / HEAD_FILE).exists()
        with safe_open(str(r.checkpoint_dir / "model.safetensors"), "pt") as f:  # the head is saved apart
            assert not any("projection" in k for k in f.keys())
        logs = [h for h in r.log_history if "npair" in h]
        assert len(logs) == 2 and all(abs(h["margin"]) <= 2 for h in logs)  # cosines: bounded margins


# ---------------------------------------------------------------------- the command line
def test_cli_train_and_errors(tmp_path, capsys):
    from prosocial_lib.cli import main
    common = ["--preset", "smoke", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(["train", "--stage", "2", *common]) == 1
    assert "no finished stage 1" in capsys.readouterr().err
    assert main(["train", "--stage", "1", *common, "--set", "stage1.max_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: trained" in out and "held-out accuracy" in out
    assert main(["train", "--stage", "2", *common, "--init-from", str(tmp_path / "nope")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--stage", "1", *common, "--set", "stage1.learnin_rate=1"])
    assert "unknown config key" in capsys.readouterr().err


# ---------------------------------------------------------------------- chapter helpers and figures
def test_chapter_tables_and_figures(two_stages, tiny):
    import matplotlib.pyplot as plt

    from prosocial_lib.eval.replies import compare_replies
    from prosocial_lib.groups.types import groups_frame
    from prosocial_lib.report import plots
    from prosocial_lib.report.training import (
        before_after_frame,
        describe_stage,
        group_scores_table,
        log_frame,
        loss_settings_table,
    )
    cfg, results = two_stages
    logs = log_frame(results[1].log_history)
    assert set(logs["metric"]) == {"loss", "ce", "npair", "contrastive_accuracy", "margin"}
    assert len(logs) == 5 * 10 and logs["step"].max() == 10
    table = before_after_frame(results[2].metrics, by_kind=True)
    assert set(table["groups"]) == set(results[2].metrics["after"]["by_kind"])
    row = table[(table["metric"] == "margin")].iloc[0]
    assert row["change"] == pytest.approx(row["after"] - row["before"])
    settings = loss_settings_table(cfg)
    assert settings["reconstructed"].all() and "loss.social_alpha" in set(settings["setting"])
    text = describe_stage(cfg, 2)
    assert "stage 2" in text and "embedded sample" in text and "10 steps" in text
    model, tok = tiny
    scored = group_scores_table(model, tok, GROUPS[0], cfg.loss, cfg.model.max_length)
    assert list(scored["role"]) == ["positive", "negative 1", "negative 2"]
    assert scored["score"].tolist() == pytest.approx(
        [_mean_logprob(model, tok, GROUPS[0].context_messages, r) for r in ["Please don't, talk to him instead.",
                                                                              "Go for it!", "lol ok"]], abs=2e-5)
    replies = compare_replies({"a": (model, tok), "b": (model, tok)}, GROUPS, cfg.generation, max_new_tokens=3,
                              max_prompt_tokens=cfg.model.max_length, seed=cfg.seed)
    assert list(replies.columns) == ["kind", "context (last turn)", "gold reply", "a", "b"]
    assert replies["a"].tolist() == replies["b"].tolist() and len(replies) == 2  # greedy: deterministic
    for fig in (plots.plot_training_curves(logs.assign(stage="stage 1")),
                plots.plot_before_after(table), plots.plot_negative_weights(groups_frame(GROUPS))):
        assert fig.axes
        plt.close(fig)
    with pytest.raises(ValueError):
        plots.plot_training_curves(logs[logs["metric"] == "loss"])


def test_quiet_trainer_keeps_the_book_free_of_trainer_tables(tiny, tmp_path, monkeypatch):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from prosocial_lib.train.trainer import quiet_trainer

    def kinds(trainer):
        return {type(c) for c in trainer.callback_handler.callbacks}

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    trainer = Trainer(model=tiny[0], args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    trainer.add_callback(NotebookProgressCallback)
    trainer.add_callback(PrinterCallback)
    quiet_trainer(trainer, progress=True)
    assert ProgressCallback in kinds(trainer) and not {NotebookProgressCallback, PrinterCallback} & kinds(trainer)
    quiet_trainer(trainer, progress=False)
    assert not {ProgressCallback, NotebookProgressCallback, PrinterCallback} & kinds(trainer)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the book: a disabled bar would still print every log line
    assert ProgressCallback not in kinds(quiet_trainer(trainer, progress=True))


# ---------------------------------------------------------------------- the training arguments
def test_contrastive_config_from_the_preset(tmp_path, tiny):
    from transformers import TrainingArguments

    from prosocial_lib.train.config import ContrastiveConfig, contrastive_args, dpo_args
    from prosocial_lib.train.trainer import ContrastiveTrainer

    cfg = get_config("smoke", {"loss.tau": 0.5, "loss.num_negatives": 2, "stage1.warmup_ratio": 0.1,
                               "stage1.max_steps": 20})
    cpu = torch.device("cpu")
    args = contrastive_args(cfg.loss, cfg.stage1, tmp_path, seed=3, device=cpu, mp_dtype=torch.float32, n_groups=40)
    assert isinstance(args, ContrastiveConfig) and args.effective_tau == 0.5 and args.num_negatives == 2 and args.seed == 3
    assert (args.per_device_train_batch_size, args.learning_rate) == (cfg.stage1.batch_size, cfg.stage1.learning_rate)
    assert args.warmup_steps == 2 and args.data_seed == 3 and not args.remove_unused_columns
    assert contrastive_args(cfg.loss, cfg.stage1, tmp_path, seed=3, device=cpu, mp_dtype=torch.float32, n_groups=40,
                            lr_scheduler_type="constant").lr_scheduler_type == "constant"
    assert ContrastiveConfig(output_dir=str(tmp_path), score="embedding").effective_tau == 0.1
    with pytest.raises(ValueError, match="score"):
        ContrastiveConfig(output_dir=str(tmp_path), score="dot")
    dpo = dpo_args(cfg.stage2, tmp_path, seed=3, device=cpu, mp_dtype=torch.float32, beta=0.2, max_length=64,
                   sft_weight=1.0)
    assert dpo.beta == 0.2 and list(dpo.loss_type) == ["sigmoid", "sft"] and dpo.seed == 3
    assert dpo.learning_rate == cfg.stage2.learning_rate
    with pytest.raises(TypeError, match="ContrastiveConfig"):
        ContrastiveTrainer(model=tiny[0], args=TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))


# ---------------------------------------------------------------------- damaged, diverged and finished runs
def test_a_damaged_finished_stage_is_retrained_not_trusted(tmp_path, caplog):
    from prosocial_lib.cli import main
    from prosocial_lib.modeling.runtime import ModelSpecError
    from prosocial_lib.runs import file_digests

    cfg = tiny_cfg(tmp_path, name="damaged", **{"stage1.max_steps": 2, "stage2.max_steps": 2})
    first = run_stages(cfg, progress=False)
    s1 = first[1].checkpoint_dir
    weights = s1 / "model.safetensors"
    assert first[1].metrics["weights"] == file_digests(s1) and set(file_digests(s1)) == {"model.safetensors"}
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    # loading names the folder instead of a bare SafetensorError traceback
    with pytest.raises(ModelSpecError, match=f"model folder '{s1}' cannot be loaded"):
        load_model_and_tokenizer(str(s1))
    assert load_stage_result(s1) is None
    common = ["--preset", "smoke", "--runs-dir", str(tmp_path), "--run-name", "damaged", "--no-progress"]
    assert main(["train", "--stage", "2", *common]) == 1  # stage 2 never starts from a damaged stage 1
    with caplog.at_level("WARNING"):
        again = run_stages(cfg, progress=False)
    assert "do not match the SHA-256 recorded in its metrics.json" in caplog.text and str(s1) in caplog.text
    assert not again[1].reused and again[1].metrics["weights"] == first[1].metrics["weights"]  # retrained
    assert again[2].reused  # the same stage-1 weights (deterministic on the CPU): stage 2 still holds
    assert load_model_and_tokenizer(str(s1))[0] is not None


def test_a_diverged_stage_is_not_marked_finished(tmp_path):
    from prosocial_lib.train.checkpoints import TrainingDivergedError

    cfg = tiny_cfg(tmp_path, name="nan", **{"stage1.max_steps": 3, "stage1.learning_rate": 1e30})  # finite, huge
    with pytest.raises(TrainingDivergedError, match=r"stage 1 .*not finite: "):
        run_stage(cfg, 1, progress=False)
    out = cfg.run_dir / "stage1"
    assert not (out / METRICS).exists() and load_stage_result(out) is None


def test_torch_load_is_always_weights_only(tmp_path):
    """Every torch.load of the library goes through load_state_dict (weights_only=True, whatever the version's
    default): a file holding more than tensors is refused with its name."""
    import fractions
    import pathlib
    import re

    from prosocial_lib.modeling.loading import load_state_dict
    from prosocial_lib.modeling.runtime import ModelSpecError

    lib = pathlib.Path(__file__).resolve().parents[1] / "prosocial_lib"
    calls = [(p.name, line.strip()) for p in lib.rglob("*.py") for line in p.read_text().splitlines()
             if re.search(r"torch\.load\(", line)]
    assert calls and all("weights_only=True" in line for _, line in calls), calls
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert load_state_dict(tmp_path / "ok.pt")["w"].tolist() == [1.0, 1.0]
    torch.save({"w": torch.ones(2), "other": fractions.Fraction(1, 3)}, tmp_path / "bad.pt")  # not a tensor
    with pytest.raises(ModelSpecError, match="bad.pt"):
        load_state_dict(tmp_path / "bad.pt")
