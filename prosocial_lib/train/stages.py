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

import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import TrainerCallback

from ..config.schema import Config, ModelConfig
from ..runs import write_json_atomic
from .collator import GroupCollator, TrainingSetupError
from .losses import ProjectionHead
from .scoring import evaluate_groups
from .trainer import ContrastiveTrainer, _training_args, quiet_trainer

log = logging.getLogger(__name__)
# transformers 5 warns about its own deprecated alias when peft or the Trainer asks for it: not the reader's concern
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

RUN_CONFIG = "run_config.json"  # the experiment config (the model's own config.json sits beside it)
METRICS = "metrics.json"  # written last: its presence (with a matching fingerprint) marks a finished stage
LOG_HISTORY = "log_history.json"
HEAD_FILE = "npair_projection_head.pt"  # the embedding score's projection head, when one is trained
TRAINER_DIR = "trainer"  # the Trainer's resumable checkpoint-* folders while a stage runs


# ---------------------------------------------------------------------- data for a stage
def stage_groups(cfg: Config, stage: int, split: str = "train") -> list[dict[str, Any]]:
    """Load the stage's data split and build its groups (train: ``stageN.max_groups``; held out:
    ``stageN.eval_groups``). Held-out groups come from the held-out split of each source."""
    from ..groups.stage1 import build_stage1_groups
    from ..groups.stage2 import build_stage2_groups
    st = _stage_cfg(cfg, stage)
    train = split == "train"
    max_rows = cfg.data.max_train_examples if train else cfg.data.max_eval_examples
    max_groups = st.max_groups if train else st.eval_groups
    seed = cfg.seed + (0 if train else 1000)
    if stage == 1:
        from ..data.mic import load_mic
        ds = load_mic(cfg.data.mic_source, split=split, max_rows=max_rows)
        return build_stage1_groups(ds, cfg, max_groups=max_groups, seed=seed, where=f"MIC ({cfg.data.mic_source}, {split})")
    from ..data.casual import load_casual
    from ..data.prosocial_dialog import load_prosocial_dialog
    pd = load_prosocial_dialog(cfg.data.prosocial_source, split=split, max_rows=max_rows)
    casual_rows = max_rows if max_rows is not None else (4 * max_groups if max_groups else None)
    casual = load_casual(cfg.data.casual_source, split=split, seed=cfg.seed, max_rows=casual_rows)
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
    from ..modeling.loading import resolve_device, resolve_dtype
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

    from ..groups.types import last_build_report, summarize_groups
    from ..modeling.loading import apply_lora, load_model_and_tokenizer

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
        write_json_atomic(out / METRICS, metrics)
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
