"""The three presets (smoke, cpu, gpu), the reconstructed switches, and building a ``Config`` from them."""

from __future__ import annotations

import copy
import json
from typing import Any

from .coerce import ConfigError, flatten
from .schema import DEFAULT_PRESET, PRESET_NAMES, RENAMED_KEYS, Config

# ---------------------------------------------------------------------- presets
# Each preset is a set of dotted overrides on top of the dataclass defaults (which are the cpu preset's values).
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.name": "tiny",
        "model.max_length": 96,
        "data.max_train_examples": 200,
        "data.max_eval_examples": 60,
        "stage1.max_groups": 8,
        "stage1.max_steps": 4,
        "stage1.batch_size": 2,
        "stage1.learning_rate": 2e-3,  # a random tiny model: large steps so the curves move in 4 steps
        "stage1.warmup_ratio": 0.0,
        "stage1.logging_steps": 1,
        "stage1.eval_groups": 4,
        "stage2.max_groups": 8,
        "stage2.max_steps": 4,
        "stage2.batch_size": 2,
        "stage2.learning_rate": 2e-3,
        "stage2.warmup_ratio": 0.0,
        "stage2.logging_steps": 1,
        "stage2.eval_groups": 4,
        "audit.num_contexts": 4,
        "generation.max_new_tokens": 8,
        "generation.batch_size": 4,
        "stats.bootstrap_samples": 200,
        "generation.samples_per_context": 2,  # so the k-sample metrics run in CI
        "judges.max_train_examples": 200,
        # fine-tuned judges in seconds: a few steps on a few pairs per label (their rates mean nothing in smoke)
        "judges.max_steps": 3,
        "judges.batch_size": 8,
        "judges.max_length": 64,
        "judges.max_pairs_per_label": 12,
        "compare.ablations": ["loss.social_alpha=0"],  # one ablation run is enough to exercise the code in CI
        "compare.max_steps": None,  # the smoke budget is already tiny: the full method is chapter 03's run
    },
    "cpu": {
        # Both training stages within minutes on 2 CPU cores (measured in the training chapters): LoRA on every
        # linear layer (no weight gradients for the 135M base weights), a few hundred groups, short sequences.
        "model.lora": True,
        "model.lora_r": 16,
        "model.lora_alpha": 32,
        "model.lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "model.max_length": 160,
        # Every stage (chapters 02, 03 and each compared system of 04) trains on all its groups until the held-out
        # validation loss stops improving, within a cap that keeps chapter 04 (a stage 1, five stage-2 runs and
        # DPO) inside the cpu book's time. Measured on 2 shared cores: a stage-2 step of 4 groups took about 29 s
        # and an evaluation of its 24 held-out groups 72 s (load 4); a stage-1 evaluation of 32 groups cost 1.5 to
        # 5 steps. Hence evaluations every 16 (stage 1) / 8 (stage 2) steps, and stage 2 at most 2 epochs
        "stage1.max_groups": None,  # the embedded sample's 128 training questions: 328 groups, 82 steps an epoch
        "stage1.epochs": 2.0,  # at most 164 steps
        "stage1.learning_rate": 5e-4,
        "stage1.logging_steps": 8,
        "stage1.eval_groups": 32,
        "stage1.eval_steps": 16,
        "stage1.early_stopping_patience": 3,
        "stage2.max_groups": 64,  # 16 steps an epoch
        "stage2.epochs": 2.0,  # at most 32 steps
        "stage2.learning_rate": 1e-3,
        "stage2.logging_steps": 4,
        "stage2.eval_groups": 24,
        "stage2.eval_steps": 8,
        "stage2.early_stopping_patience": 2,
        "compare.max_steps": None,  # every system under the chapter-03 rule; the full method is its run
        # all test contexts (150 adversarial, 150 casual, the 130 subtle) for every system: greedy replies with and
        # without the safety prompt; the sampled decodings (k replies per context) are the gpu preset's
        "audit.decodings": ["greedy", "greedy+safety"],
        # five systems, each isolating one ingredient: the base model, the contrastive term (CE only, both
        # stages), the MIC stage (n-pair, stage 2 only), the full method and a preference loss (DPO); the gpu
        # preset adds plain CE on stage 2. One ablation (alpha = 0): the sweep covers tau and lambda
        "compare.systems": ["base", "ce-both", "npair-stage2", "npair-both", "dpo"],
        "compare.ablations": ["loss.social_alpha=0"],
    },
    "gpu": {
        "data.prosocial_source": "allenai/prosocial-dialog",
        "data.mic_source": "SALT-NLP/MIC",
        "data.casual_source": "daily_dialog",
        "model.name": "HuggingFaceTB/SmolLM2-360M-Instruct",
        "model.max_length": 384,
        "stage1.max_groups": 20000,
        "stage1.batch_size": 8,
        "stage1.grad_accum": 2,
        "stage1.logging_steps": 20,
        "stage1.eval_groups": 500,
        "stage1.epochs": 3.0,  # at most; early stopping on 500 held-out groups every 200 steps
        "stage1.eval_steps": 200,
        "stage1.early_stopping_patience": 3,
        "stage2.max_groups": 40000,
        "stage2.batch_size": 8,
        "stage2.grad_accum": 2,
        "stage2.logging_steps": 20,
        "stage2.eval_groups": 500,
        "stage2.epochs": 3.0,
        "stage2.eval_steps": 200,
        "stage2.early_stopping_patience": 3,
        "audit.num_contexts": 500,
        "generation.max_new_tokens": 64,
        "generation.batch_size": 32,
        "generation.samples_per_context": 5,
        # the real data has thousands of pairs per label: more of them, two passes (minutes on a GPU)
        "judges.max_pairs_per_label": 5000,
        "judges.epochs": 2.0,
        "compare.num_contexts": None,  # chapter 04 compares the systems on all audit.num_contexts contexts
        "compare.max_new_tokens": None,
        "compare.max_steps": None,  # every system gets the chapter-03 budget; the full method is its run
        "compare.eval_groups": None,
        "compare.ablations": ["loss.social_alpha=0", "loss.tau=0.5", "loss.tau=2.0"],
        # chapter 01 audits real chat models from the hub (DialoGPT and BlenderBot have no system prompt: their
        # "+safety" decodings are skipped with a note)
        "audit.models": ["microsoft/DialoGPT-medium", "facebook/blenderbot-400M-distill",
                              "HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct",
                              "Qwen/Qwen2.5-0.5B-Instruct"],
        "audit.decodings": ["greedy", "greedy+safety", "sampled"],
    },
}

# Fields whose values the paper does not state; the book labels them as reconstructed (method.md sections 2-4).
RECONSTRUCTED: dict[str, str] = {
    "loss.score": "how a (context, response) pair is scored: length-normalised log-likelihood or pooled-state cosine",
    "loss.tau": "tau: 1.0 for the likelihood score, 0.1 for the embedding score",
    "loss.npair_weight": "lambda, the weight of the n-pair term next to cross-entropy",
    "loss.social_alpha": "alpha, how strongly severity/consensus/safety label up-weight a negative",
    "loss.num_negatives": "K, negatives per group",
    "loss.in_batch_negatives": "whether other groups' positives also serve as negatives",
    "stage1.rot_in_context": "whether the rule of thumb is shown to the model in stage 1",
    "stage2.casual_fraction": "how much casual chat is mixed into stage 2",
    "stage1.fill_negatives": "whether prompts with fewer than K violating answers borrow other prompts' ones",
    "stage2.negative_sources": "where stage-2 negatives come from: near-topic condoning replies (ProsocialDialog "
                               "follow-ups, MIC violations), unrelated casual replies, preachy replies",
}


def get_config(preset: str = DEFAULT_PRESET, overrides: dict[str, Any] | None = None, **kwargs: Any) -> Config:
    """The config for ``preset`` with dotted ``overrides`` (and keyword sections) applied and validated.

    Raises:
        ConfigError: an unknown preset or key, a value of the wrong type or out of range (the message names it).

    Example:
        >>> get_config("smoke", {"loss.social_alpha": 0.0}).loss.social_alpha
        0.0
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    cfg = Config(preset=preset).with_overrides(copy.deepcopy(PRESETS[preset]))
    return cfg.with_overrides(overrides, **kwargs).validate()


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config saved with ``to_dict`` (e.g. from a run's ``config.json``). Keys saved before the
    sections were split (the old ``eval`` section, ``loss.temperature``, ``data.seed``) load under their new names
    (:data:`~.schema.RENAMED_KEYS`)."""
    flat = {RENAMED_KEYS.get(k, k): v for k, v in flatten(d).items()
            if k not in ("eval.seed", "data.seed") or "seed" not in d}
    return Config(preset=d.get("preset", DEFAULT_PRESET)).with_overrides(flat).validate()


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """``["stage1.learning_rate=3e-5", "loss.score=embedding"]`` -> a dict of overrides (values parsed as JSON
    where they parse, strings otherwise)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
