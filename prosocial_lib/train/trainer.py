"""The contrastive ``Trainer``: cross-entropy plus the socially aware n-pair term on each batch of groups."""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..config.schema import Config
from .losses import combined_loss, npair_loss
from .scoring import score_groups


def quiet_trainer(trainer, *, progress: bool = False):
    """Keep a Trainer's console output to a tqdm bar (or nothing): no log lines printed per step, and no
    notebook progress table, which would land in the book as a frozen HTML table (the chapters plot the logs).
    ``$TQDM_DISABLE`` (set while the book executes) means no bar: the bar's log lines would still print."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    progress = progress and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")
    from transformers.utils.notebook import NotebookProgressCallback
    for cb in (PrinterCallback, NotebookProgressCallback) + (() if progress else (ProgressCallback,)):
        trainer.remove_callback(cb)
    if progress and not any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
    return trainer
LOGGED = ("ce", "npair", "contrastive_accuracy", "margin")




# ---------------------------------------------------------------------- the trainer
class ContrastiveTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``CE(positive) + lambda * L_npair`` over group batches.

    Build it with ``loss_cfg`` (a :class:`~prosocial_lib.config.LossConfig`), ``train_dataset`` a list of groups
    and ``data_collator`` a :class:`GroupCollator`. Everything else (accumulation, mixed precision, DDP,
    checkpoints, progress bars) is the Trainer's.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by GA steps

    def __init__(self, *args, loss_cfg, projection_head: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_cfg = loss_cfg
        self.projection_head = projection_head
        # older transformers decide GA scaling from this flag alone; our loss never takes num_items_in_batch
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, float] = {}
        self._count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lc = self.loss_cfg
        gs = score_groups(model, inputs, lc.score, self.projection_head, lc.in_batch_negatives)
        ce = gs.ce.mean()
        if lc.npair_weight > 0:
            np_out = npair_loss(gs.scores, inputs["neg_weights"], inputs["neg_mask"], lc.effective_tau,
                                in_batch=lc.in_batch_negatives, batch_scores=gs.batch_scores)
            loss = combined_loss(ce, np_out.loss, lc.npair_weight)
            self._record(ce=ce, npair=np_out.loss, contrastive_accuracy=np_out.accuracy, margin=np_out.margin)
        else:
            loss = ce
            self._record(ce=ce)
        return (loss, gs) if return_outputs else loss

    def _record(self, **values: torch.Tensor) -> None:
        if not self.model.training:
            return
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
        self._count += 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the mean CE, n-pair loss, contrastive accuracy and margin since the last log to training logs."""
        if "loss" in logs and self._count:
            names = sorted(self._sums)
            values = torch.tensor([self._sums[n] / self._count for n in names], device=self.args.device)
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            logs.update({n: round(float(v), 6) for n, v in zip(names, values.tolist())})
            self._sums, self._count = {}, 0
        super().log(logs, *args, **kwargs)


def _training_args(cfg: Config, st, output_dir: Path, n_groups: int, mp_dtype: torch.dtype,
                   device: torch.device) -> TrainingArguments:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if st.max_steps > 0:
        total = st.max_steps
    else:
        total = math.ceil(math.ceil(n_groups / (st.batch_size * world)) / st.grad_accum * st.epochs)
    warmup = int(math.ceil(total * st.warmup_ratio)) if st.warmup_ratio > 0 else 0
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), per_device_train_batch_size=st.batch_size,
        gradient_accumulation_steps=st.grad_accum, learning_rate=st.learning_rate, num_train_epochs=st.epochs,
        max_steps=st.max_steps, warmup_steps=warmup, weight_decay=st.weight_decay, lr_scheduler_type="linear",
        logging_strategy="steps", logging_steps=max(1, st.logging_steps), eval_strategy="no",
        save_strategy="steps" if st.save_steps > 0 else "no", save_steps=max(1, st.save_steps),
        save_total_limit=1, report_to="none", remove_unused_columns=False, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=0, disable_tqdm=False, use_cpu=device.type == "cpu",
        bf16=mp_dtype == torch.bfloat16 and device.type == "cuda",
        fp16=mp_dtype == torch.float16 and device.type == "cuda",
        ddp_find_unused_parameters=False, label_names=[],  # the loss needs no labels column
    )
    if device.type == "cpu" and world > 1:
        kwargs["ddp_backend"] = "gloo"
    accepted = set(inspect.signature(TrainingArguments.__init__).parameters)
    if "eval_strategy" not in accepted:  # transformers < 4.41
        kwargs["evaluation_strategy"] = kwargs.pop("eval_strategy")
    return TrainingArguments(**{k: v for k, v in kwargs.items() if k in accepted or k == "evaluation_strategy"})
