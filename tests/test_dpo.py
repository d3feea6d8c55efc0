"""The DPO baseline: groups -> pairs, a tiny-model run, reuse of a finished run."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch

from prosocial_lib.config import get_config
from prosocial_lib.groups.types import ContrastiveGroup, make_group
from prosocial_lib.modeling.chat import chat_prompt
from prosocial_lib.modeling.loading import load_model_and_tokenizer
from prosocial_lib.train.dpo import DPODataError, dpo_pairs, fit_prompts, load_dpo_result, train_dpo

torch.set_num_threads(1)


def _groups(n: int = 4) -> list[ContrastiveGroup]:
    unsafe = [f"I'm going to key my neighbour's car tonight, number {i}." for i in range(n)]
    return [
        make_group([{"role": "user", "content": text}],
                   "Please don't. Damaging his car could get you arrested; talk to him about what's bothering you.",
                   ["Sounds like a fun night!", "Haha, do it.", "What colour is the car?"],
                   [1.0, 0.75, 0.5], alpha=1.0, meta={"kind": "unsafe"})
        for text in unsafe
    ]


def test_dpo_pairs_one_row_per_negative():
    groups = _groups(2)
    ds = dpo_pairs(groups)
    assert len(ds) == 6 and set(ds.column_names) >= {"prompt", "chosen", "rejected", "group_index", "neg_weight"}
    row = ds[1]
    assert row["prompt"] == groups[0].context_messages
    assert row["chosen"] == [{"role": "assistant", "content": groups[0].positive}]
    assert row["rejected"] == [{"role": "assistant", "content": "Haha, do it."}]
    assert row["group_index"] == 0 and row["neg_weight"] == pytest.approx(1.75)
    first = dpo_pairs(groups, max_negatives_per_group=1)
    assert len(first) == 2 and first["rejected"] == [[{"role": "assistant", "content": "Sounds like a fun night!"}]] * 2


def test_dpo_pairs_counts_groups_without_negatives(caplog):
    groups = _groups(2)
    groups[1] = dataclasses.replace(groups[1], negatives=[], neg_weights=[], neg_severity=[])
    with caplog.at_level(logging.WARNING, logger="prosocial_lib.dpo"):
        ds = dpo_pairs(groups)
    assert len(ds) == 3 and "1 of 2 groups have no negatives" in caplog.text
    with pytest.raises(DPODataError, match="none of the 1 groups"):
        dpo_pairs(groups[1:])


@pytest.mark.parametrize("field,value,message", [
    ("positive", "", "group 1: field 'positive'"),
    ("context_messages", [], "group 1: field 'context_messages'"),
    ("context_messages", [{"role": "user"}], r"group 1: context_messages\[0\]"),
    ("negatives", ["ok", None], r"group 1: negatives\[1\]"),
    ("neg_weights", [1.0], "group 1: field 'neg_weights' has 1 entries for 3"),
])
def test_dpo_pairs_names_group_and_field(field, value, message):
    groups = _groups(2)
    groups[1] = dataclasses.replace(groups[1], **{field: value})
    with pytest.raises(DPODataError, match=message):
        dpo_pairs(groups)
    groups[1] = groups[1].to_dict()  # a group dict (your own data) without the field
    del groups[1][field]
    if field in ("positive", "context_messages", "negatives"):
        with pytest.raises(DPODataError, match=f"group 1: missing field '{field}'"):
            dpo_pairs(groups)


def test_fit_prompts_drops_oldest_messages_first():
    _, tok = load_model_and_tokenizer("tiny")
    long_history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "blah " * 20}
                    for i in range(9)]
    group = make_group(long_history, "A kind reply.", ["A rude reply."], [1.0], alpha=0.0)
    pairs = dpo_pairs([group, _groups(1)[0]])
    fitted, shortened, too_long = fit_prompts(pairs, tok, max_length=96)
    assert shortened == 1 and too_long == 0
    kept = fitted[0]["prompt"]
    assert kept == long_history[-len(kept):] and len(kept) < len(long_history)
    assert kept[0]["role"] == "user"  # never starts on an assistant turn
    assert len(tok(chat_prompt(tok, kept), add_special_tokens=False).input_ids) <= 96 - 24
    assert fitted[1]["prompt"] == pairs[1]["prompt"]  # short prompts untouched

    system = [{"role": "system", "content": "Rule of thumb: it's wrong to damage property."}]
    pairs = dpo_pairs([make_group(system + long_history, "A kind reply.", ["A rude reply."], [1.0], alpha=0.0)])
    kept = fit_prompts(pairs, tok, max_length=96)[0][0]["prompt"]
    assert kept[0] == system[0] and kept[1]["role"] == "user" and kept[1:] == long_history[-(len(kept) - 1):]

    one_huge = dpo_pairs([make_group([{"role": "user", "content": "blah " * 200}], "ok", ["no"], [1.0], 0.0)])
    fitted, shortened, too_long = fit_prompts(one_huge, tok, max_length=96)
    assert (shortened, too_long) == (1, 1)  # cannot be cut further: reported (TRL drops it)


def test_tiny_dpo_run_checkpoint_metrics_and_reuse(tmp_path):
    cfg = get_config("smoke", {"stage2.max_steps": 3, "stage2.batch_size": 2, "stage2.learning_rate": 1e-3,
                               "stage2.warmup_ratio": 0.0, "model.threads": 1})
    groups = _groups(4)
    out = tmp_path / "dpo"
    m = train_dpo(cfg, groups, None, out)
    assert m["reused"] is False and m["steps"] == 3 and m["pairs"] == 12 and m["pairs_trained"] == 12
    for part in ("first", "last", "mean"):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert math.isfinite(m[part][key]), (part, key)
    assert m["first"]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the start
    assert m["last"]["rewards/margins"] > 0  # DPO pushes chosen above rejected on its training pairs
    assert math.isfinite(m["train_loss"])
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "run_config.json"):
        assert (out / f).exists(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["fingerprint"] == m["fingerprint"] and load_dpo_result(out)["fingerprint"] == m["fingerprint"]

    trained, tok = load_model_and_tokenizer(str(out))
    base, _ = load_model_and_tokenizer("tiny", seed=cfg.seed)
    assert not torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert chat_prompt(tok, groups[0].context_messages).endswith("<|im_start|>assistant\n")

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train_dpo(cfg, groups, None, out)
    assert again["reused"] is True and again["fingerprint"] == m["fingerprint"]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained

    other = train_dpo(cfg, groups, None, out, beta=0.5)  # a different config retrains
    assert other["reused"] is False and other["fingerprint"] != m["fingerprint"]

    # damaged weights are not trusted: the hash recorded in metrics.json no longer matches, so DPO trains again
    assert set(other["weights"]) == {"model.safetensors"}
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert load_dpo_result(out) is None
    assert train_dpo(cfg, groups, None, out, beta=0.5)["reused"] is False


def test_dpo_refuses_a_folder_another_process_writes_and_a_non_finite_loss(tmp_path):
    from prosocial_lib.runs import RunBusyError, exclusive_run
    from prosocial_lib.train.checkpoints import TrainingDivergedError

    cfg = get_config("smoke", {"stage2.max_steps": 2, "stage2.batch_size": 2, "model.threads": 1,
                               "stage2.learning_rate": 1e30})
    with exclusive_run(tmp_path / "dpo", "training process"):  # stands for a live process holding the folder
        with pytest.raises(RunBusyError, match="is writing"):
            train_dpo(cfg, _groups(2), None, tmp_path / "dpo")
    with pytest.raises(TrainingDivergedError, match="DPO .*not finite"):
        train_dpo(cfg, _groups(2), None, tmp_path / "dpo")
    assert load_dpo_result(tmp_path / "dpo") is None


def test_tiny_dpo_continues_from_a_checkpoint_with_lora(tmp_path):
    """init_from a local folder (as the stage-1 checkpoint would be), LoRA (adapters merged into a plain model)
    and the DPO + NLL-on-chosen variant."""
    base, tok = load_model_and_tokenizer("tiny")
    base.save_pretrained(tmp_path / "stage1")
    tok.save_pretrained(tmp_path / "stage1")
    cfg = get_config("smoke", {"stage2.max_steps": 2, "stage2.learning_rate": 1e-2, "model.lora": True,
                               "model.lora_r": 2, "model.lora_alpha": 4, "model.threads": 1})
    m = train_dpo(cfg, _groups(2), str(tmp_path / "stage1"), tmp_path / "dpo", max_negatives_per_group=1,
                  sft_weight=1.0)
    assert m["pairs"] == 2 and m["init_from"] == str(tmp_path / "stage1") and m["sft_weight"] == 1.0
    assert math.isfinite(m["train_loss"])
    merged, _ = load_model_and_tokenizer(str(tmp_path / "dpo"))
    assert not any("lora" in n for n in merged.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # the adapter was trained and merged
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged.state_dict()[k], base.state_dict()[k])  # untargeted weights untouched


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_stops_early_on_its_held_out_loss(tmp_path, lora):
    """The DPO baseline under the compared systems' rule: evaluations on held-out pairs, the best kept, at most
    max_steps; its checkpoints are gone once it finished, and early stopping needs held-out groups."""
    cfg = get_config("smoke", {"stage2.max_steps": 8, "stage2.batch_size": 2, "stage2.learning_rate": 1e-9,
                               "stage2.warmup_ratio": 0.0, "model.threads": 1, "model.lora": lora,
                               "stage2.eval_steps": 1, "stage2.early_stopping_patience": 1,
                               "stage2.early_stopping_threshold": 0.05})
    out = tmp_path / "dpo"
    with pytest.raises(ValueError, match="eval_groups"):
        train_dpo(cfg, _groups(4), None, out)
    m = train_dpo(cfg, _groups(4), None, out, eval_groups=_groups(2))
    # the loss cannot move by the threshold at this learning rate: evaluation 1 is the best, 2 does not improve
    assert m["steps"] == 2 and m["max_steps"] == 8 and m["stopped_early"] and m["evaluations"] == 2
    assert m["best_step"] in (1, 2) and math.isfinite(m["best_metric"])
    assert not list(out.glob("checkpoint-*")) and (out / "model.safetensors").exists()
    assert train_dpo(cfg, _groups(4), None, out, eval_groups=_groups(2))["reused"] is True
    assert train_dpo(cfg, _groups(4), None, out, eval_groups=_groups(3))["reused"] is False  # other held-out pairs
