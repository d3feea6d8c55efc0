"""The contrastive ``Trainer``: cross-entropy plus the socially aware n-pair term on each batch of groups."""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from .checkpoints import TrainingDivergedError
from .config import ContrastiveConfig
from .losses import combined_loss, npair_loss
from .scoring import score_groups


def quiet_trainer(trainer, *, progress: bool = False):
    """Keep a Trainer's console output to a tqdm bar (or nothing).

    No log lines printed per step, and no notebook progress table, which would land in the book as a frozen HTML
    table (the chapters plot the logs). ``$TQDM_DISABLE`` (set while the book executes) means no bar: the bar's
    log lines would still print.

    Args:
        trainer: any ``transformers.Trainer`` (also TRL's).
        progress: keep (or add) the tqdm progress bar.

    Returns:
        The same trainer, its callbacks changed in place.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    progress = progress and os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")
    from transformers.utils.notebook import NotebookProgressCallback
    for cb in (PrinterCallback, NotebookProgressCallback) + (() if progress else (ProgressCallback,)):
        trainer.remove_callback(cb)
    if progress and not any(isinstance(c, ProgressCallback) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
    return trainer


LOGGED = ("ce", "npair", "contrastive_accuracy", "margin")  # what ContrastiveTrainer adds to the training logs


# ---------------------------------------------------------------------- the trainer
class ContrastiveTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``CE(positive) + lambda * L_npair`` over batches of groups.

    Args:
        args: a :class:`~prosocial_lib.train.config.ContrastiveConfig` (lambda, tau, score, in-batch negatives
            are read from it; build it with :func:`~prosocial_lib.train.config.contrastive_args`).
        train_dataset: a list of :class:`~prosocial_lib.groups.types.ContrastiveGroup`.
        data_collator: a :class:`~prosocial_lib.train.collator.GroupCollator` (``positives_only`` when lambda = 0).
        projection_head: the embedding score's optional head (trained when it is a submodule of the model).
        *other: as ``transformers.Trainer`` (accumulation, mixed precision, DDP, checkpoints are the Trainer's).

    Shapes:
        Each batch gives scores (B, 1 + K) and the positive's per-token CE (B,); the loss is a mean over the B
        groups of a device batch, so gradient accumulation and data parallelism reproduce the single-process
        objective (``loss_is_scaled_for_ga = False``).

    Logs ``ce``, ``npair``, ``contrastive_accuracy`` and ``margin`` (means since the last log) beside ``loss``.
    Given an ``eval_dataset`` of groups (early stopping), an evaluation reports the same on them: ``eval_loss``
    (the objective), ``eval_ce``, ``eval_npair``, ... (means over the held-out groups).

    Raises:
        TypeError: ``args`` is not a ``ContrastiveConfig``.

    References:
        Sohn, NeurIPS 2016 (the n-pair loss); method.md section 2. Used by chapters 02, 03 (stage runner), 04
        (the compared systems) and 05 (benchmark).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer divides by GA steps

    def __init__(self, *args, projection_head: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ContrastiveConfig):
            raise TypeError(f"ContrastiveTrainer needs a ContrastiveConfig as args (contrastive_args builds one), "
                            f"got {type(self.args).__name__}")
        self.projection_head = projection_head
        # older transformers decide GA scaling from this flag alone; our loss never takes num_items_in_batch
        self.model_accepts_loss_kwargs = False
        self._sums: dict[str, float] = {}
        self._count = 0
        self._eval_sums: dict[str, float] = {}  # held-out sums weighted by groups, during an evaluation
        self._eval_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``CE + lambda * L_npair`` of one collated batch (``CE`` alone when lambda = 0)."""
        a = self.args
        gs = score_groups(model, inputs, a.score, self.projection_head, a.in_batch_negatives)
        ce = gs.ce.mean()
        if a.npair_weight > 0:
            self._require_finite_scores(gs.scores, inputs["neg_mask"])
            np_out = npair_loss(gs.scores, inputs["neg_weights"], inputs["neg_mask"], a.effective_tau,
                                in_batch=a.in_batch_negatives, batch_scores=gs.batch_scores)
            loss = combined_loss(ce, np_out.loss, a.npair_weight)
            self._record(gs.ce.shape[0], ce=ce, npair=np_out.loss, contrastive_accuracy=np_out.accuracy,
                         margin=np_out.margin)
        else:
            loss = ce
            self._record(gs.ce.shape[0], ce=ce)
        return (loss, gs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The held-out objective of one batch of groups (no logits or labels: the groups have none)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's evaluation loop, plus the means of ``ce``, ``npair``, ``contrastive_accuracy`` and
        ``margin`` over the held-out groups as ``eval_<name>`` (averaged over processes)."""
        self._eval_sums, self._eval_count = {}, 0
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if self._eval_count:
            names = sorted(self._eval_sums)
            values = torch.tensor([self._eval_sums[n] / self._eval_count for n in names], device=self.args.device)
            if self.args.world_size > 1:
                values = self.accelerator.reduce(values, reduction="mean")
            output.metrics.update({f"{prefix}_{n}": round(float(v), 6) for n, v in zip(names, values.tolist())})
        return output

    def _require_finite_scores(self, scores: torch.Tensor, neg_mask: torch.Tensor) -> None:
        """A NaN or infinite score of a real reply means the model diverged (``npair_loss`` refuses such scores):
        stop with :class:`~prosocial_lib.train.checkpoints.TrainingDivergedError`, so nothing is saved as finished."""
        real = torch.cat([torch.ones_like(neg_mask[:, :1]), neg_mask], dim=1).bool()
        if not bool(torch.isfinite(scores.detach()[real]).all()):
            raise TrainingDivergedError(
                f"training step {self.state.global_step + 1}: not finite: the model's scores of its replies; the run "
                "diverged and is not saved as finished (lower the learning rate or check the data)")

    def _record(self, groups: int, **values: torch.Tensor) -> None:
        """Add one batch's values to the training sums (means per batch), or while evaluating to the held-out
        sums (weighted by the batch's ``groups``, so the means are over groups)."""
        if self.model.training:
            for k, v in values.items():
                self._sums[k] = self._sums.get(k, 0.0) + float(v.detach())
            self._count += 1
            return
        for k, v in values.items():
            self._eval_sums[k] = self._eval_sums.get(k, 0.0) + float(v.detach()) * groups
        self._eval_count += groups

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
