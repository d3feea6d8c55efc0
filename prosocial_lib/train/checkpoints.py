"""A stage's run state on disk: resumable checkpoints, what counts as finished, and the checks before reuse.

The stage runner (:mod:`.stages`) and the DPO baseline (:mod:`.dpo`) build on these rules:

- **Complete checkpoints only.** The Trainer writes ``checkpoint-N`` file by file; a process killed meanwhile
  leaves a folder without some of them. :class:`CheckpointKeeper` marks a checkpoint complete
  (:data:`COMPLETE`) once the Trainer has written all of it, then deletes the older ones, so a complete
  checkpoint exists at every moment after the first save. A rerun resumes from the newest complete checkpoint and
  drops the incomplete ones (:func:`resume_point`, :func:`drop_incomplete`).
- **A loss over the whole run.** The Trainer's ``train_loss`` counts only the steps of the last call to
  ``train()``; :class:`CheckpointKeeper` logs at every checkpoint and at the last step, so :func:`whole_run_loss`
  recomputes the mean over every step from the log history, the same for a resumed run as for one never
  interrupted.
- **Verified reuse.** A finished stage records the SHA-256 of its weight files; :func:`weights_problem` says why
  a stage on disk no longer matches them, and the runner then trains it again.
- **Finite or not finished.** :func:`require_finite` refuses to mark a stage finished when its loss or held-out
  metrics are NaN or infinite.
- **Ctrl-C.** :class:`StageInterrupted` (a ``KeyboardInterrupt``) says which checkpoint a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

from transformers import TrainerCallback

from ..runs import exclusive_run, file_digests, read_json, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

COMPLETE = "checkpoint_complete.json"  # written into checkpoint-N once the Trainer has saved all of it
FINGERPRINT_FILE = "fingerprint.txt"  # the config fingerprint of the run the checkpoints belong to
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C during a stage: a ``KeyboardInterrupt`` that knows where a rerun resumes.

    Attributes:
        stage: the stage (1, 2) or the name of the run (``"dpo"``).
        folder: the folder of its resumable checkpoints.
        checkpoint: the newest complete ``checkpoint-N`` (None: none yet, a rerun starts the stage over).
    """

    def __init__(self, stage: int | str, folder: Path, checkpoint: Path | None):
        self.stage, self.folder, self.checkpoint = stage, Path(folder), checkpoint
        super().__init__(self.message)

    @classmethod
    def at(cls, stage: int | str, folder: Path) -> "StageInterrupted":
        """The interruption of a run whose checkpoints are in ``folder`` (it resumes from the newest complete)."""
        return cls(stage, folder, newest_complete(folder))

    @property
    def message(self) -> str:
        """One line for the command line: what a rerun of the same command does."""
        if self.checkpoint is None:
            return f"interrupted; no checkpoint yet in {self.folder}: rerun the same command to start over"
        return f"interrupted; rerun the same command to resume from {self.checkpoint.name} (in {self.folder})"


class TrainingDivergedError(RuntimeError):
    """A stage whose loss or held-out metrics are not finite: it is not saved as finished."""


# ---------------------------------------------------------------------- checkpoints
def checkpoints(trainer_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``trainer_dir``, oldest (smallest N) first; [] when there is none."""
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in trainer_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(checkpoint: Path) -> bool:
    """True when the Trainer finished writing ``checkpoint`` (:data:`COMPLETE` and a readable trainer state)."""
    return (checkpoint / COMPLETE).is_file() and isinstance(read_json(checkpoint / TRAINER_STATE), dict)


def newest_complete(trainer_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``trainer_dir``, or None."""
    return next((p for p in reversed(checkpoints(trainer_dir)) if is_complete(p)), None)


def resume_point(trainer_dir: str | Path, fp: str) -> Path | None:
    """The checkpoint to resume from: the newest complete one an interrupted run of this very config (``fp``)
    left in ``trainer_dir``; None when there is none (or the checkpoints belong to another config)."""
    trainer_dir = Path(trainer_dir)
    marker = trainer_dir / FINGERPRINT_FILE
    if not marker.is_file() or marker.read_text().strip() != fp:
        return None
    found = newest_complete(trainer_dir)
    if found is not None:
        log.warning("resuming the interrupted run in %s from %s", trainer_dir, found.name)
    return found


def best_checkpoint_name(checkpoint: Path) -> str | None:
    """The folder name of the best checkpoint (early stopping) recorded in ``checkpoint``'s trainer state, or
    None when it records none."""
    state = read_json(Path(checkpoint) / TRAINER_STATE)
    best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
    return Path(best).name if best else None


def drop_incomplete(trainer_dir: str | Path, keep: Path | None) -> list[str]:
    """Delete every checkpoint of ``trainer_dir`` but ``keep`` (the one resumed from) and the best checkpoint
    ``keep`` records (early stopping goes back to it at the end); returns the names of those deleted that were
    incomplete (a process killed while writing them), which are also logged."""
    dropped = []
    kept = set() if keep is None else {Path(keep).name, best_checkpoint_name(Path(keep))}
    for p in checkpoints(trainer_dir):
        if p.name in kept and is_complete(p):
            continue
        if not is_complete(p):
            dropped.append(p.name)
        shutil.rmtree(p, ignore_errors=True)
    if dropped:
        log.warning("dropped incomplete checkpoint(s) %s in %s (a run was killed while writing them)",
                    ", ".join(dropped), trainer_dir)
    return dropped


def reset_trainer_dir(trainer_dir: str | Path, fp: str) -> None:
    """Empty ``trainer_dir`` and record that its checkpoints will belong to the config ``fp``."""
    trainer_dir = Path(trainer_dir)
    if trainer_dir.exists():
        shutil.rmtree(trainer_dir)
    write_text_atomic(trainer_dir / FINGERPRINT_FILE, fp)


def prepare_trainer_dir(trainer_dir: str | Path, fp: str, resume: Path | None) -> None:
    """Before training (main process only): keep only the checkpoint resumed from (dropping incomplete ones), or
    start an empty folder for the config ``fp`` when there is nothing to resume."""
    if resume is None:
        reset_trainer_dir(trainer_dir, fp)
    else:
        drop_incomplete(trainer_dir, keep=resume)


class CheckpointKeeper(TrainerCallback):
    """Logs at every checkpoint and at the last step; marks each checkpoint complete once saved, then deletes
    the older ones but the best (early stopping loads it at the end) - use it with ``save_total_limit=None``:
    the Trainer's own rotation would delete the previous checkpoint before the new one is marked."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True  # every checkpoint and the end close a logging interval
        return control

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        current = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        write_json_atomic(current / COMPLETE, {"step": state.global_step})
        best = f"checkpoint-{state.best_global_step}" if getattr(state, "best_global_step", None) else None
        for p in checkpoints(args.output_dir):
            if p != current and p.name != best:
                _remove_tree(p)
        return control


def _remove_tree(path: Path) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` that lets a Ctrl-C through as a ``KeyboardInterrupt``: when
    the signal lands inside rmtree, closing its directory handle afterwards can raise ``OSError`` (EBADF), which
    would hide the interruption and the resume message."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except OSError as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise


def stage_lock(out: Path):
    """The stage folder's exclusive lock (:func:`~prosocial_lib.runs.exclusive_run`), taken by the main process
    of a run (under torchrun the other ranks follow it; a refused main process stops them all)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext(out)
    return exclusive_run(out, "training process", "wait for it or use another --run-name (run_name)")


# ---------------------------------------------------------------------- metrics and checks
def train_metrics(trainer, train_out, history: list[dict[str, Any]], seconds: float, n_groups: int,
                   resumed: bool) -> dict[str, Any]:
    """The Trainer's numeric training metrics plus time, steps, groups, truncations and whether it resumed;
    ``train_loss`` is the mean over every step of the run, resumed or not (:func:`whole_run_loss`). With early
    stopping also ``max_steps`` (the budget), ``best_step`` and ``best_metric`` (the checkpoint kept and its
    held-out value), ``evaluations`` and ``stopped_early``."""
    metrics = {k: v for k, v in train_out.metrics.items() if isinstance(v, (int, float))}
    metrics["train_loss"] = whole_run_loss(history)
    if metrics["train_loss"] is None:  # nothing logged (no step ran)
        metrics.pop("train_loss")
    st = trainer.state
    out = {**metrics, "train_seconds": round(seconds, 2), "global_step": st.global_step,
           "groups": n_groups, "truncated_sequences": trainer.data_collator.truncated, "resumed": resumed,
           "max_steps": st.max_steps}
    if getattr(trainer.args, "load_best_model_at_end", False):
        out.update(best_step=getattr(st, "best_global_step", None), best_metric=st.best_metric,
                   metric=trainer.args.metric_for_best_model,
                   evaluations=sum(1 for h in history if trainer.args.metric_for_best_model in h),
                   stopped_early=st.global_step < st.max_steps)
    return out


def whole_run_loss(history: Iterable[dict[str, Any]]) -> float | None:
    """The mean training loss over every logged step: each ``loss`` entry weighted by the steps it covers.

    With :class:`CheckpointKeeper` every step is covered and a resumed run has the same log as one never
    interrupted, so both give the same number. None when nothing was logged.
    """
    total = steps = 0.0
    last = 0
    for h in history:
        if "loss" in h and "step" in h and h["step"] > last:
            total += float(h["loss"]) * (h["step"] - last)
            steps += h["step"] - last
            last = h["step"]
    return total / steps if steps else None


def require_finite(what: str, values: dict[str, Any]) -> None:
    """Raise :class:`TrainingDivergedError` naming ``what`` and the keys whose numbers are NaN or infinite."""
    bad = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not math.isfinite(v)}
    if bad:
        raise TrainingDivergedError(
            f"{what}: not finite: {', '.join(f'{k} = {v}' for k, v in bad.items())}; the run diverged and is not "
            "saved as finished (lower the learning rate or check the data)")


def require_finite_weights(what: str, model) -> None:
    """Raise :class:`TrainingDivergedError` when a parameter of ``model`` holds NaN or infinity (a loss can stay
    finite while the update that follows it is not)."""
    import torch

    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise TrainingDivergedError(
            f"{what}: not finite: the weights of {', '.join(bad[:3])}{' and others' if len(bad) > 3 else ''}; "
            "the run diverged and is not saved as finished (lower the learning rate or check the data)")


def weights_problem(folder: str | Path, metrics: dict[str, Any]) -> str | None:
    """Why the weight files in ``folder`` do not match the SHA-256 recorded in its ``metrics["weights"]`` (a
    truncated, missing or replaced file); None when they match, or when the run recorded none (older runs)."""
    expected = metrics.get("weights")
    if not isinstance(expected, dict) or not expected:
        return None
    actual = file_digests(folder)
    wrong = sorted(n for n in set(expected) | set(actual) if expected.get(n) != actual.get(n))
    if not wrong:
        return None
    return (f"the weights in {folder} ({', '.join(wrong)}) do not match the SHA-256 recorded in its metrics.json: "
            "the files are damaged or were replaced")
