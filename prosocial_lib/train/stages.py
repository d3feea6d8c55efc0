r"""The two-stage runner: stage 1 (MIC) then stage 2 (ProsocialDialog + casual) from the stage-1 checkpoint.

In the order data flows: :func:`stage_groups` builds the groups (:mod:`prosocial_lib.groups`), ``GroupCollator``
packs them into token batches, ``score_groups`` gives the ``(B, 1 + K)`` scores, ``ContrastiveTrainer`` (set up by
a ``ContrastiveConfig``) minimises ``CE(positive) + lambda * L_npair`` (``lambda = 0``: plain CE fine-tuning, the
negatives not even run), and ``evaluate_groups`` scores held-out groups before and after each stage. With
``stageN.eval_steps`` > 0 the same held-out groups (the validation split) decide when training stops
(transformers' ``EarlyStoppingCallback``) and which checkpoint the stage keeps (``load_best_model_at_end``): the
rule every compared system of chapter 04 trains under. The "after" scores are then those of the selected
checkpoint on the groups that selected it (slightly optimistic; chapter 04 compares systems on test contexts).

Each stage writes ``<run_dir>/stage<N>/`` with the model, tokenizer, ``run_config.json``, ``metrics.json`` and
``log_history.json``; a stage whose config fingerprint and weight hashes match a finished one is reused, an
interrupted one resumes from the newest complete ``checkpoint-*`` (:mod:`.checkpoints`), and a second process
writing the same stage folder is refused (:func:`~prosocial_lib.runs.exclusive_run`). The CE term is the mean over
groups of each positive's per-token negative log-likelihood (every group counts the same, whatever its length),
which is also ``-s^+`` of the likelihood score. Chapters 02 and 03 run the stages; chapter 04 trains the compared
systems with them.
"""

from __future__ import annotations

import dataclasses
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
from ..groups.types import BuildReport, ContrastiveGroup, summarize_groups
from ..runs import atomic_path, file_digests, fingerprint, read_json, write_json_atomic
from .checkpoints import (
    CheckpointKeeper,
    StageInterrupted,
    TrainingDivergedError,
    prepare_trainer_dir,
    require_finite,
    require_finite_weights,
    resume_point,
    stage_lock,
    train_metrics,
    weights_problem,
)
from .collator import GroupCollator, TrainingSetupError
from .config import contrastive_args, early_stopping_callbacks
from .losses import ProjectionHead
from .scoring import evaluate_groups
from .trainer import ContrastiveTrainer, quiet_trainer

log = logging.getLogger(__name__)
# transformers 5 warns about its own deprecated alias when peft or the Trainer asks for it: not the reader's concern
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

RUN_CONFIG = "run_config.json"  # the experiment config (the model's own config.json sits beside it)
METRICS = "metrics.json"  # written last: its presence (with a matching fingerprint) marks a finished stage
LOG_HISTORY = "log_history.json"
HEAD_FILE = "npair_projection_head.pt"  # the embedding score's projection head, when one is trained
TRAINER_DIR = "trainer"  # the Trainer's resumable checkpoint-* folders while a stage runs


# ---------------------------------------------------------------------- data for a stage
def stage_groups(cfg: Config, stage: int, split: str = "train") -> tuple[list[ContrastiveGroup], BuildReport]:
    """Load the stage's data split and build its groups (an orchestrator step: it reads the whole config).

    Args:
        cfg: the experiment config (data sources and caps, loss, the stage's section).
        stage: 1 (MIC) or 2 (ProsocialDialog + casual chat).
        split: "train" (at most ``stageN.max_groups`` groups, seed ``seed``) or a held-out split (at most
            ``stageN.eval_groups``, seed ``seed + 1000``), taken from the same split of each source.

    Returns:
        ``(groups, report)`` from :func:`~prosocial_lib.groups.stage1.build_stage1_groups` or
        :func:`~prosocial_lib.groups.stage2.build_stage2_groups`.

    Raises:
        TrainingSetupError: ``stage`` is not 1 or 2. Loader and builder errors name the file, row and field.

    Chapters 02 and 03 show these groups.
    """
    from ..groups.stage1 import build_stage1_groups
    from ..groups.stage2 import build_stage2_groups, stage2_negative_inputs
    st = _stage_cfg(cfg, stage)
    train = split == "train"
    max_rows = cfg.data.max_train_examples if train else cfg.data.max_eval_examples
    max_groups = st.max_groups if train else st.eval_groups
    seed = cfg.seed + (0 if train else 1000)
    if stage == 1:
        from ..data.mic import load_mic
        ds = load_mic(cfg.data.mic_source, split=split, max_rows=max_rows)
        return build_stage1_groups(ds, cfg.loss, cfg.stage1, max_groups=max_groups, seed=seed,
                                   where=f"MIC ({cfg.data.mic_source}, {split})")
    from ..data.casual import load_casual
    from ..data.prosocial_dialog import load_prosocial_dialog
    pd = load_prosocial_dialog(cfg.data.prosocial_source, split=split, max_rows=max_rows)
    casual_rows = max_rows if max_rows is not None else (4 * max_groups if max_groups else None)
    casual = load_casual(cfg.data.casual_source, split=split, seed=cfg.seed, max_rows=casual_rows)
    negatives = stage2_negative_inputs(cfg.stage2, mic_source=cfg.data.mic_source, split=split, max_rows=max_rows,
                                       cache_dir=Path(cfg.run_dir).parent / "embeddings", device=cfg.model.device)
    return build_stage2_groups(pd, casual, cfg.loss, cfg.stage2, max_groups=max_groups, seed=seed,
                               where=f"ProsocialDialog ({cfg.data.prosocial_source}, {split})", **negatives)


def score_heldout(model, tokenizer, groups: Sequence[ContrastiveGroup], cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """:func:`~prosocial_lib.train.scoring.evaluate_groups` with the run's settings: the ``loss`` section,
    ``model.max_length`` and the larger of the two stage batch sizes (an orchestrator step: it reads the whole
    config). ``kwargs``: ``head``, ``progress``, ``desc``."""
    return evaluate_groups(model, tokenizer, groups, cfg.loss, max_length=cfg.model.max_length,
                           batch_size=max(cfg.stage1.batch_size, cfg.stage2.batch_size), **kwargs)


def own_groups(train_groups: Sequence[ContrastiveGroup | dict[str, Any]] | str | os.PathLike
               ) -> list[ContrastiveGroup]:
    """A caller's own training groups, checked: groups, group dicts, or a ``.json`` / ``.jsonl`` file of them.

    Raises:
        GroupBuildError: a malformed group (names the file or ``train_groups``, the row and the field).
    """
    from ..groups.io import read_groups
    from ..groups.types import as_groups
    if isinstance(train_groups, (str, os.PathLike)):
        return read_groups(train_groups)
    return as_groups(train_groups, "train_groups, group")


def _stage_cfg(cfg: Config, stage: int):
    if stage not in (1, 2):
        raise TrainingSetupError(f"stage must be 1 or 2, got {stage!r}")
    return cfg.stage1 if stage == 1 else cfg.stage2


# ---------------------------------------------------------------------- the stage runner
@dataclass
class StageResult:
    """One finished stage (:func:`run_stage`).

    Attributes:
        stage: 1 or 2.
        checkpoint_dir: the folder holding the model, tokenizer and ``metrics.json``.
        metrics: ``before`` / ``after`` (held-out ``evaluate_groups``), ``train`` (steps, seconds, groups, ...),
            ``groups`` (summaries and the build report), ``fingerprint``.
        log_history: the Trainer's logs (``loss``, ``ce``, ``npair``, ``contrastive_accuracy``, ``margin``).
        reused: True when a finished run with the same fingerprint was loaded instead of trained.
    """

    stage: int
    checkpoint_dir: Path
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def stage_fingerprint(cfg: Config, stage: int, init_from: str | os.PathLike | None = None,
                      train_groups: Sequence[ContrastiveGroup | dict[str, Any]] | None = None) -> str:
    """A 12-hex-digit hash of what decides a stage's result.

    Data, model, loss, this stage's settings, the seed, the starting checkpoint (its own fingerprint when it is
    one of ours) and, when the caller brings them, the training groups themselves. Knobs that do not change the
    result (threads, checkpoint frequency) are left out.
    """
    d = cfg.to_dict()
    st = dict(d[f"stage{stage}"])
    for k in ("save_steps", "save"):
        st.pop(k, None)
    model = dict(d["model"])
    model.pop("threads", None)
    start: Any = None
    if init_from is not None:
        start = str(init_from)
        finished = read_json(Path(init_from) / METRICS)
        if isinstance(finished, dict):
            start = finished.get("fingerprint", start)
            if finished.get("weights"):  # the very weights: a retrained stage 1 that differs retrains stage 2
                start = {"fingerprint": start, "weights": finished["weights"]}
    payload = {"stage": stage, "data": d["data"], "model": model, "loss": d["loss"], "stage_cfg": st,
               "seed": d["seed"], "init_from": start}
    if train_groups is not None:
        plain = [g.to_dict() if isinstance(g, ContrastiveGroup) else g for g in train_groups]
        payload["train_groups"] = fingerprint(plain, length=64)
    return fingerprint(payload)


def load_stage_result(checkpoint_dir: str | os.PathLike, *, verify: bool = True) -> StageResult | None:
    """A finished stage's :class:`StageResult` from its folder (``reused`` True), or None when it did not finish
    (no readable ``metrics.json`` or no model config) or, with ``verify``, when its weight files no longer match
    the SHA-256 its ``metrics.json`` recorded (logged as a warning naming the folder)."""
    out = Path(checkpoint_dir)
    metrics = read_json(out / METRICS)
    if not isinstance(metrics, dict) or not (out / "config.json").exists():
        return None
    problem = weights_problem(out, metrics) if verify else None
    if problem:
        log.warning("%s: it does not count as finished", problem)
        return None
    history = read_json(out / LOG_HISTORY) or []
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
              train_groups: Sequence[ContrastiveGroup | dict[str, Any]] | str | os.PathLike | None = None
              ) -> StageResult:
    """Train one stage (or reuse its finished checkpoint) and return its :class:`StageResult`.

    Args:
        cfg: the experiment config (the stage runner is an orchestrator: it reads every section).
        stage: 1 (MIC) or 2 (ProsocialDialog + casual chat).
        init_from: the folder of the model to start from (stage 2 normally starts from stage 1's); None = the
            configured base model.
        callbacks: extra ``TrainerCallback`` objects.
        progress: show progress bars.
        train_groups: your own training groups instead of :func:`stage_groups` (e.g. from another negative
            sampler, built with :func:`prosocial_lib.groups.types.make_group`): groups, group dicts or a
            ``.json`` / ``.jsonl`` file (:func:`own_groups`). Their content is part of the fingerprint, so other
            groups never reuse this checkpoint.

    Returns:
        The stage's result; outputs go to ``cfg.run_dir / f"stage{stage}"`` (module docstring).

    Raises:
        TrainingSetupError: a bad stage, a missing ``init_from``, no training or held-out groups.
        GroupBuildError: malformed ``train_groups`` (names the file or group and the field).
        RunBusyError: another live process is writing the stage folder (names its pid); nothing is changed.
        TrainingDivergedError: the loss or the held-out metrics are not finite; the stage is not marked finished.
        StageInterrupted: Ctrl-C (a ``KeyboardInterrupt``); it names the checkpoint a rerun resumes from.

    Chapters 02 and 03 run it (and chapter 03's exercise passes its own groups).
    """
    cfg.validate()
    own = None if train_groups is None else own_groups(train_groups)
    out = Path(cfg.run_dir) / f"stage{stage}"
    fp = stage_fingerprint(cfg, stage, init_from, own)
    with stage_lock(out):
        done = _reusable(out, stage, fp)
        if done is not None:
            return done
        try:
            return _train_stage(cfg, stage, init_from, out, fp, own, callbacks, progress)
        except KeyboardInterrupt:
            raise StageInterrupted.at(stage, out / TRAINER_DIR) from None
        except TrainingDivergedError as e:
            if str(e).startswith(f"stage {stage}"):
                raise
            raise TrainingDivergedError(f"stage {stage} ({out}), {e}") from None


def _train_stage(cfg: Config, stage: int, init_from, out: Path, fp: str, own, callbacks, progress: bool
                 ) -> StageResult:
    """Train the stage into ``out`` (its lock held) and save it; :func:`run_stage` without the reuse."""
    from transformers import set_seed

    from ..modeling.loading import apply_lora

    t_start = time.perf_counter()
    train, report, held_out = _stage_data(cfg, stage, own)
    model_cfg, mp_dtype, device = _training_model_cfg(cfg, init_from)
    set_seed(cfg.seed)
    model, tok, head = _load_model(cfg, model_cfg, init_from, device)
    before = score_heldout(model, tok, held_out, cfg, head=head, progress=progress,
                           desc=f"stage {stage}: held-out before")
    model = apply_lora(model, cfg.model)
    if head is not None:
        model.add_module("npair_projection_head", head)  # so the Trainer's optimizer trains it
    trainer, resume = _trainer(cfg, stage, out, fp, model, tok, head, train, held_out, callbacks, mp_dtype, device)
    quiet_trainer(trainer, progress=progress)
    t_train = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    train_seconds = time.perf_counter() - t_train

    model = trainer.model
    if head is not None:
        del model.npair_projection_head
    if cfg.model.lora:
        model = model.merge_and_unload()
    after = score_heldout(model, tok, held_out, cfg, head=head, progress=progress,
                          desc=f"stage {stage}: held-out after")
    history = [dict(h) for h in trainer.state.log_history]
    metrics = {
        "stage": stage, "fingerprint": fp, "preset": cfg.preset, "init_from": None if init_from is None
        else str(init_from), "before": before, "after": after,
        "train": train_metrics(trainer, train_out, history, train_seconds, len(train), resume is not None),
        "groups": {"train": summarize_groups(train), "eval": summarize_groups(held_out),
                   "train_build": report.to_dict() if report else None},
        "seconds_total": None,
    }
    require_finite(f"stage {stage} ({out})", {"train_loss": metrics["train"].get("train_loss"),
                                              **{f"held-out {k}": v for k, v in after.items()}})
    require_finite_weights(f"stage {stage} ({out})", model)
    if trainer.is_world_process_zero() and _stage_cfg(cfg, stage).save:
        _save_stage(out, model, tok, head, cfg, metrics, history, t_start)
    trainer.accelerator.wait_for_everyone()
    return StageResult(stage=stage, checkpoint_dir=out, metrics=metrics, log_history=history, reused=False)


def _reusable(out: Path, stage: int, fp: str) -> StageResult | None:
    """The finished stage in ``out`` when its fingerprint is ``fp`` and its weights match their recorded hashes
    (else None, with a warning when another config's run or damaged weights sit there)."""
    done = load_stage_result(out, verify=False)
    if done is None:
        return None
    if done.metrics.get("fingerprint") != fp:
        log.warning("stage %d: %s holds a run with another config (fingerprint %s, now %s): training anew",
                    stage, out, done.metrics.get("fingerprint"), fp)
        return None
    problem = weights_problem(out, done.metrics)
    if problem:
        log.warning("stage %d: %s: training it again", stage, problem)
        return None
    log.info("stage %d: reusing the finished checkpoint in %s (same config)", stage, out)
    done.stage = stage
    return done


def _stage_data(cfg: Config, stage: int, own: list[ContrastiveGroup] | None
                ) -> tuple[list[ContrastiveGroup], BuildReport | None, list[ContrastiveGroup]]:
    """Training groups (the caller's own, else built; with the build report) and the held-out groups."""
    train, report = stage_groups(cfg, stage, "train") if own is None else (own, None)
    held_out, _ = stage_groups(cfg, stage, "validation")
    if not train:
        raise TrainingSetupError(f"stage {stage}: no training groups "
                                 f"({report.summary() if report else 'nothing built'})")
    if not held_out:
        raise TrainingSetupError(f"stage {stage}: no held-out groups from the validation split")
    return train, report, held_out


def _load_model(cfg: Config, model_cfg: ModelConfig, init_from, device: torch.device):
    """The model, its tokenizer, and the embedding score's projection head (continued from ``init_from``'s)."""
    from ..modeling.loading import load_model_and_tokenizer, load_state_dict
    model, tok = load_model_and_tokenizer(model_cfg, seed=cfg.seed)
    head = None
    if cfg.loss.score == "embedding" and cfg.loss.projection_dim:
        head = ProjectionHead(model.config.hidden_size, cfg.loss.projection_dim).to(device)
        if init_from is not None and (Path(init_from) / HEAD_FILE).exists():  # continue the previous stage's head
            head.load_state_dict(load_state_dict(Path(init_from) / HEAD_FILE, device))
    return model, tok, head


def _trainer(cfg: Config, stage: int, out: Path, fp: str, model, tok, head, train, held_out, callbacks, mp_dtype,
             device) -> tuple[ContrastiveTrainer, Path | None]:
    """The stage's :class:`ContrastiveTrainer` and the complete checkpoint an interrupted run of this config
    left (None: start over); the main process drops incomplete checkpoints and what a run of another config left
    in ``out``. With early stopping (``eval_steps`` > 0) the held-out groups are its evaluation set."""
    trainer_dir = out / TRAINER_DIR
    st = _stage_cfg(cfg, stage)
    args = contrastive_args(cfg.loss, st, trainer_dir, seed=cfg.seed, device=device,
                            mp_dtype=mp_dtype, n_groups=len(train), save_total_limit=None)  # CheckpointKeeper
    resume = resume_point(trainer_dir, fp)  # every rank reads before the main process changes anything
    with args.main_process_first(desc="preparing the stage folder"):
        if args.process_index == 0:
            for stale in (METRICS, LOG_HISTORY):  # this folder no longer holds a finished run
                (out / stale).unlink(missing_ok=True)
            prepare_trainer_dir(trainer_dir, fp, resume)  # drops incomplete checkpoints, or starts empty
    collator = GroupCollator(tok, cfg.model.max_length, positives_only=cfg.loss.npair_weight == 0,
                             shared_context=cfg.loss.shared_context)
    trainer = ContrastiveTrainer(model=model, args=args, train_dataset=list(train), data_collator=collator,
                                 eval_dataset=list(held_out) if st.eval_steps > 0 else None,
                                 processing_class=tok, projection_head=head,
                                 callbacks=[CheckpointKeeper(), *early_stopping_callbacks(st), *(callbacks or [])])
    return trainer, resume


def _save_stage(out: Path, model, tok, head, cfg: Config, metrics: dict[str, Any],
                history: list[dict[str, Any]], t_start: float) -> None:
    """Write the model, tokenizer, head, run config and logs, then ``metrics.json`` last (marks the stage
    finished; it records the weights' SHA-256), and drop the resumable checkpoints."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if head is not None:
        with atomic_path(out / HEAD_FILE) as tmp:
            torch.save(head.state_dict(), tmp)
    write_json_atomic(out / RUN_CONFIG, {"fingerprint": metrics["fingerprint"], "stage": metrics["stage"],
                                         "init_from": metrics["init_from"], "config": cfg.to_dict()})
    write_json_atomic(out / LOG_HISTORY, history, indent=1)
    metrics["weights"] = file_digests(out)
    metrics["seconds_total"] = round(time.perf_counter() - t_start, 2)
    write_json_atomic(out / METRICS, metrics)
    shutil.rmtree(out / TRAINER_DIR, ignore_errors=True)  # finished: the resumable checkpoints are not needed


def run_stages(cfg: Config, stages: Sequence[int] = (1, 2), init_from: str | os.PathLike | None = None,
               **kwargs: Any) -> dict[int, StageResult]:
    """Run the stages in order, each starting from the previous one's checkpoint (the first from
    ``init_from``, None = the base model). Finished stages with the same config are reused.

    Args:
        cfg, init_from, **kwargs: as :func:`run_stage`.
        stages: which stages, in order.

    Returns:
        ``{stage: StageResult}``. Chapter 03 runs both stages with it.
    """
    results: dict[int, StageResult] = {}
    start = init_from
    for s in stages:
        results[s] = run_stage(cfg, s, init_from=start, **kwargs)
        start = results[s].checkpoint_dir
    return results
