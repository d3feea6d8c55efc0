"""Where judges live and when saved ones are reused: ``judge_root``, ``judge_settings`` (what decides what the judges
learn) and ``load_judges`` (load when the fingerprint matches, train and save otherwise).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config.schema import DataConfig, JudgesConfig
from ...runs import fingerprint
from .cross import CrossEncoderSettings
from .encoder import ENCODER_NAME, JudgeError, SentenceEncoder
from .judges import JUDGE_FORMAT, Judges, train_judges
from .tasks import JudgeTask, judge_train_splits, load_judge_tasks, tasks_digest


def judge_root(settings: JudgesConfig, runs_root: str | Path) -> Path:
    """Folder holding saved judges and the embedding cache: ``settings.dir``, or ``<runs_root>/judges`` (shared by
    every run under that root)."""
    if settings.dir:
        return Path(settings.dir).expanduser()
    return Path(runs_root) / "judges"


def judge_settings(settings: JudgesConfig, data: DataConfig, *, seed: int = 0) -> dict[str, Any]:
    """Everything that decides what the judges learn (the fingerprint of saved judges covers it)."""
    train_splits = judge_train_splits(settings, data)
    return {"format": JUDGE_FORMAT, "encoder": ENCODER_NAME, "prosocial_source": data.prosocial_source,
            "mic_source": data.mic_source, "casual_source": data.casual_source, "train_splits": train_splits,
            "shares_rows_with_finetuning": "train" in train_splits, "test_split": settings.test_split,
            "max_train_examples": settings.max_train_examples, "max_test_examples": data.max_eval_examples,
            "casual_examples": settings.casual_examples, "context_turns": settings.context_turns, "C": settings.C,
            "threshold": settings.threshold, "seed": seed, "data_seed": seed, "model": settings.model,
            "cross_encoder": {k: getattr(settings, k) for k in (
                "epochs", "context_epochs", "learning_rate", "batch_size", "max_length", "max_steps")},
            "max_pairs_per_label": settings.max_pairs_per_label, "incoherent_share": settings.incoherent_share,
            "labelled_pairs": settings.labelled_pairs, "labelled_repeat": settings.labelled_repeat,
            "calibration_share": settings.calibration_share, "check_set": "embedded"}


def cross_settings(settings: JudgesConfig, seed: int = 0) -> CrossEncoderSettings:
    """The cross-encoders' training settings from the ``judges`` section (``epochs`` is the reply judge's)."""
    return CrossEncoderSettings(epochs=settings.epochs, learning_rate=settings.learning_rate,
                                batch_size=settings.batch_size, max_length=settings.max_length,
                                max_steps=settings.max_steps, seed=seed)


def load_judges(settings: JudgesConfig, data: DataConfig, *, runs_root: str | Path, seed: int = 0,
                device: str = "auto", retrain: bool = False, encoder: SentenceEncoder | None = None,
                tasks: Sequence[JudgeTask] | None = None, progress: bool = False) -> Judges:
    """The judges for ``settings`` and ``data``: loaded from ``judge_root(settings, runs_root)/<fingerprint>``
    when they were trained before on the same settings and data, trained (and saved) otherwise.

    Args:
        settings: the ``judges`` section (splits, C, threshold, context turns, folder).
        data: the ``data`` section (sources and caps of the judge data).
        runs_root: the runs folder (``Config.run_dir.parent``); judges live in ``<runs_root>/judges`` unless
            ``settings.dir`` says otherwise.
        seed: ``Config.seed`` (casual-chat draw, example order, the heads).
        device: where the sentence encoder runs ("auto" | "cpu" | "cuda" | "mps"), usually ``model.device``.
        tasks: replaces the data loaded from ``data`` (tests).
        progress: show the cross-encoders' training progress bars.

    Chapters 01 and 04 load them through :func:`prosocial_lib.eval.audit.preset_judges`.
    """
    judge_info = judge_settings(settings, data, seed=seed)
    tasks = list(tasks) if tasks is not None else load_judge_tasks(settings, data, seed=seed)
    key = fingerprint([judge_info, tasks_digest(tasks)])
    root = judge_root(settings, runs_root)
    path = root / key
    if encoder is None:
        from ...modeling.loading import resolve_device

        encoder = SentenceEncoder(device=str(resolve_device(device)))
    if not retrain and (path / "judges.json").exists():
        try:
            return Judges.load(path, encoder)
        except (JudgeError, OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # damaged files
            warnings.warn(f"saved judges in {path} could not be read ({e}); retraining them", stacklevel=2)
    cache = root / "embeddings" / f"{encoder.name}.npz"
    encoder.load_cache(cache)
    from ...data.judge_check import load_judge_check

    judges = train_judges(tasks, encoder, C=settings.C, threshold=settings.threshold,
                          context_turns=settings.context_turns, seed=seed, model=settings.model,
                          cross_settings=cross_settings(settings, seed), context_epochs=settings.context_epochs,
                          check=load_judge_check(), progress=progress,
                          extra_settings={"fingerprint": key, "data": judge_info})
    encoder.save_cache(cache, [t for task in tasks for t in task.texts()])
    judges.save(path)
    return judges
