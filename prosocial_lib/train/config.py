"""The training arguments of every trainer in the book: :class:`ContrastiveConfig` and its builders.

:class:`ContrastiveConfig` is a ``transformers.TrainingArguments`` with the settings of the socially aware n-pair
loss (method.md section 2), in the style of TRL's ``DPOConfig``: one dataclass field with a help text per setting.
:func:`contrastive_args` builds it from the preset's ``loss`` and ``stageN`` sections for the stage runner
(chapters 02 and 03) and the benchmark (chapter 05); :func:`dpo_args` builds TRL's ``DPOConfig`` for the DPO baseline
(chapter 04) from the same optimisation keywords (:func:`optimisation_kwargs`), so the three trainers share one
source of truth for batch size, learning rate, precision and seeds.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from ..config.schema import LossConfig, StageConfig

SCORES = ("likelihood", "embedding")
LOSS_FIELDS = ("npair_weight", "tau", "social_alpha", "num_negatives", "score", "shared_context",
               "in_batch_negatives", "projection_dim")


@dataclass
class ContrastiveConfig(TrainingArguments):
    r"""``TrainingArguments`` plus the socially aware n-pair loss settings read by
    :class:`~prosocial_lib.train.trainer.ContrastiveTrainer` (``L = CE + lambda * L_npair``, method.md 2).

    Every loss default is a reconstruction (the paper's values are not available to us); the user-facing switches
    are the preset's ``loss.*`` keys, turned into this config by :func:`contrastive_args`.

    Raises:
        ValueError: an impossible loss setting (unknown score, tau <= 0, lambda < 0, alpha < 0, K < 1).

    References:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016;
        method.md sections 2 and 2.1. Used by chapters 02 and 03 (through the stage runner) and 05 (benchmark).
    """

    npair_weight: float = field(default=1.0, metadata={
        "help": "lambda in L = CE + lambda * L_npair. 0 gives plain cross-entropy fine-tuning (the negatives are "
                "not even scored)."})
    tau: float | None = field(default=None, metadata={
        "help": "tau, dividing every score before the softmax. None: 1.0 for the 'likelihood' score, 0.1 for "
                "'embedding' (cosines in [-1, 1] need a sharper softmax)."})
    social_alpha: float = field(default=1.0, metadata={
        "help": "alpha in the social weights w = 1 + alpha * severity (severity in [0, 1]); 0 turns them off. "
                "The weights themselves travel with the groups (neg_weights); this records the setting."})
    num_negatives: int = field(default=3, metadata={
        "help": "K, negatives per group the groups were built with (groups may hold fewer: padded slots are "
                "masked)."})
    score: str = field(default="likelihood", metadata={
        "help": "s(c, y): 'likelihood' (length-normalised log-prob of the reply) or 'embedding' (cosine of "
                "mean-pooled hidden states of context and reply)."})
    shared_context: bool = field(default=True, metadata={
        "help": "Packed layout: one row [context, reply_0, ..., reply_K] per group with a 4D attention mask (the "
                "context is computed once). False: one row per (group, reply). Both give the same scores."})
    in_batch_negatives: bool = field(default=False, metadata={
        "help": "Also use the other groups' positives as negatives (weight 1). Only the 'embedding' score "
                "provides the (B, B) scores this needs."})
    projection_dim: int | None = field(default=None, metadata={
        "help": "Output size of an optional projection head for the 'embedding' score (None: no head)."})

    def __post_init__(self):
        super().__post_init__()
        checks = ((self.score in SCORES, "score", self.score, "'likelihood' or 'embedding'"),
                  (self.effective_tau > 0, "tau", self.tau, "> 0"),
                  (self.npair_weight >= 0, "npair_weight", self.npair_weight, ">= 0"),
                  (self.social_alpha >= 0, "social_alpha", self.social_alpha, ">= 0"),
                  (self.num_negatives >= 1, "num_negatives", self.num_negatives, ">= 1"))
        for ok, name, value, expected in checks:
            if not ok:
                raise ValueError(f"ContrastiveConfig.{name} = {value!r}: expected {expected}")

    @property
    def effective_tau(self) -> float:
        """The temperature in use: ``tau``, else 1.0 (likelihood) / 0.1 (embedding)."""
        if self.tau is not None:
            return self.tau
        return 1.0 if self.score == "likelihood" else 0.1


def loss_kwargs(loss: LossConfig) -> dict[str, Any]:
    """The ``loss`` section as :class:`ContrastiveConfig` keywords (the same names)."""
    return {name: getattr(loss, name) for name in LOSS_FIELDS}


def optimisation_kwargs(stage: StageConfig, output_dir: str | os.PathLike, *, seed: int, device: torch.device,
                        mp_dtype: torch.dtype) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords every trainer here shares, from one ``stageN`` section.

    Args:
        stage: batch size, accumulation, learning rate, epochs / max_steps, weight decay.
        output_dir: the Trainer's folder.
        seed: the run's seed (``cfg.seed``).
        device: where training runs (``use_cpu`` on the CPU).
        mp_dtype: the configured dtype; bf16 / fp16 become Trainer mixed precision on a GPU (fp32 master weights).

    Returns:
        A dict of keywords (activation checkpointing off, under either of its transformers names).
    """
    cuda = device.type == "cuda"
    return dict(
        output_dir=str(output_dir), per_device_train_batch_size=stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum, learning_rate=stage.learning_rate,
        num_train_epochs=stage.epochs, max_steps=stage.max_steps, weight_decay=stage.weight_decay,
        report_to="none", seed=seed, dataloader_num_workers=0, use_cpu=device.type == "cpu",
        bf16=mp_dtype == torch.bfloat16 and cuda, fp16=mp_dtype == torch.float16 and cuda,
        activation_checkpointing=False, gradient_checkpointing=False)


def early_stopping_kwargs(stage: StageConfig, metric: str | None = None) -> dict[str, Any]:
    """The ``TrainingArguments`` keywords of early stopping (:class:`StageConfig` ``eval_steps`` > 0; {} when 0).

    Evaluate every ``eval_steps`` steps, save a checkpoint at each evaluation (``save_steps = eval_steps``: the
    Trainer keeps the best checkpoint only among those it saved), load the best one at the end
    (``load_best_model_at_end``, lower is better) and restore the early-stopping counter when a run resumes.

    Args:
        stage: the ``stageN`` section.
        metric: the evaluation metric to watch, without its ``eval_`` prefix (default
            ``stage.early_stopping_metric``; the DPO baseline passes ``"loss"``, its own objective).

    Returns:
        A dict of keywords, empty when early stopping is off.
    """
    if stage.eval_steps <= 0:
        return {}
    return dict(eval_strategy="steps", eval_steps=stage.eval_steps, save_strategy="steps",
                save_steps=stage.eval_steps, load_best_model_at_end=True,
                metric_for_best_model=f"eval_{metric or stage.early_stopping_metric}", greater_is_better=False,
                per_device_eval_batch_size=stage.batch_size, restore_callback_states_from_checkpoint=True)


def early_stopping_callbacks(stage: StageConfig) -> list:
    """``[transformers.EarlyStoppingCallback(patience, threshold)]`` when ``stage.eval_steps`` > 0, else [].

    References:
        transformers' ``EarlyStoppingCallback``; Prechelt (1998), "Early stopping - but when?".
    """
    from transformers import EarlyStoppingCallback
    if stage.eval_steps <= 0:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=stage.early_stopping_patience,
                                  early_stopping_threshold=stage.early_stopping_threshold)]


def contrastive_args(loss: LossConfig, stage: StageConfig, output_dir: str | os.PathLike, *, seed: int,
                     device: torch.device, mp_dtype: torch.dtype, n_groups: int, **overrides: Any
                     ) -> ContrastiveConfig:
    """The :class:`ContrastiveConfig` of a stage: :func:`optimisation_kwargs`, the loss section, and the stage
    runner's choices (linear schedule with ``warmup_ratio`` of the steps, logging every ``logging_steps``,
    resumable checkpoints every ``save_steps``, ``data_seed = seed``, no column removal, DDP without unused
    parameters; gloo between CPU processes), and early stopping when ``stage.eval_steps`` > 0
    (:func:`early_stopping_kwargs`: the Trainer then needs an ``eval_dataset`` and
    :func:`early_stopping_callbacks`).

    Args:
        loss: the ``loss`` section (lambda, tau, alpha, K, score, layout, ...).
        stage: the ``stageN`` section.
        output_dir: the Trainer's checkpoint folder.
        seed, device, mp_dtype: see :func:`optimisation_kwargs`.
        n_groups: training groups; with ``$WORLD_SIZE`` they give the step count the warm-up is a share of.
        **overrides: any ``ContrastiveConfig`` keyword, last (the benchmark's fixed settings, a test's).

    Returns:
        The config; keywords this transformers version does not know are left out.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if stage.max_steps > 0:
        total = stage.max_steps
    else:
        total = math.ceil(math.ceil(n_groups / (stage.batch_size * world)) / stage.grad_accum * stage.epochs)
    kwargs = optimisation_kwargs(stage, output_dir, seed=seed, device=device, mp_dtype=mp_dtype)
    kwargs.update(
        warmup_steps=int(math.ceil(total * stage.warmup_ratio)) if stage.warmup_ratio > 0 else 0,
        lr_scheduler_type="linear", logging_strategy="steps", logging_steps=max(1, stage.logging_steps),
        eval_strategy="no", save_strategy="steps" if stage.save_steps > 0 else "no",
        save_steps=max(1, stage.save_steps), save_total_limit=1, remove_unused_columns=False, data_seed=seed,
        disable_tqdm=False, ddp_find_unused_parameters=False, label_names=[],  # the loss needs no labels column
        **loss_kwargs(loss))
    kwargs.update(early_stopping_kwargs(stage))
    if device.type == "cpu" and world > 1:
        kwargs["ddp_backend"] = "gloo"
    kwargs.update(overrides)
    return build_args(ContrastiveConfig, kwargs)


def dpo_args(stage: StageConfig, output_dir: str | os.PathLike, *, seed: int, device: torch.device,
             mp_dtype: torch.dtype, beta: float, max_length: int, sft_weight: float = 0.0, **overrides: Any):
    """TRL's ``DPOConfig`` for the DPO baseline from the same :func:`optimisation_kwargs` as the n-pair runs.

    Args:
        stage, output_dir, seed, device, mp_dtype: see :func:`optimisation_kwargs`.
        beta: DPO's KL strength.
        max_length: tokens per prompt + reply (``model.max_length``).
        sft_weight: > 0 adds TRL's NLL term on the chosen reply with this weight (loss types sigmoid + sft).
        **overrides: any ``DPOConfig`` keyword, last.

    Returns:
        A ``trl.DPOConfig``: warm-up as a share of the steps TRL counts, logging every ``logging_steps``; no
        checkpoints, except with early stopping (``stage.eval_steps`` > 0, :func:`early_stopping_kwargs` on DPO's
        own held-out loss), where each evaluation is one (the best and the newest are kept).
    """
    from trl import DPOConfig

    kwargs = optimisation_kwargs(stage, output_dir, seed=seed, device=device, mp_dtype=mp_dtype)
    kwargs.update(logging_steps=stage.logging_steps, save_strategy="no", beta=beta, max_length=max_length,
                  loss_type=["sigmoid", "sft"] if sft_weight > 0 else ["sigmoid"],
                  loss_weights=[1.0, sft_weight] if sft_weight > 0 else None,
                  **_warmup_kwarg(DPOConfig, stage.warmup_ratio))
    stopping = early_stopping_kwargs(stage, metric="loss")
    if stopping:
        stopping.update(save_total_limit=1)  # with load_best_model_at_end the Trainer keeps the best one too
    kwargs.update(stopping)
    kwargs.update(overrides)
    return build_args(DPOConfig, kwargs)


def build_args(args_cls, kwargs: dict[str, Any]):
    """``args_cls(**kwargs)`` without the keywords this transformers / TRL version does not take (checkpointing
    goes under the one name it knows; ``eval_strategy`` was ``evaluation_strategy`` before transformers 4.41)."""
    names = {f.name for f in dataclasses.fields(args_cls)} | set(inspect.signature(args_cls.__init__).parameters)
    kwargs = dict(kwargs)
    if "activation_checkpointing" in names:  # transformers 5.24 renamed gradient_checkpointing
        kwargs.pop("gradient_checkpointing", None)
    else:
        kwargs.pop("activation_checkpointing", None)
    if "eval_strategy" not in names and "eval_strategy" in kwargs:
        kwargs["evaluation_strategy"] = kwargs.pop("eval_strategy")
    return args_cls(**{k: v for k, v in kwargs.items() if k in names})


def _warmup_kwarg(args_cls, ratio: float) -> dict[str, Any]:
    """transformers 5.x takes a ratio as a float ``warmup_steps``; 4.x had ``warmup_ratio``."""
    names = {f.name for f in dataclasses.fields(args_cls)}
    if "warmup_ratio" in names:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": float(ratio)} if ratio < 1 else {"warmup_steps": 0}

