"""``prosocial train``: run the fine-tuning stages."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..config.schema import Config
from ..report.training import format_stage_result
from ..train.checkpoints import TrainingDivergedError
from ..train.collator import TrainingSetupError
from ..train.stages import load_stage_result, run_stage, run_stages


# ---------------------------------------------------------------------- the command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", default="both", choices=["1", "2", "both"],
                        help="1 = MIC, 2 = ProsocialDialog + casual chat, both = 1 then 2 from 1 (default)")
    parser.add_argument("--init-from", default=None, metavar="stage1|base|PATH",
                        help="where stage 2 starts when run alone: 'stage1' (this run's stage-1 checkpoint, "
                             "the default), 'base' (the configured base model) or a model folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from ..data.errors import DataFormatError
    from ..groups.types import GroupBuildError
    from ..modeling.loading import ModelSpecError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    try:
        if args.stage == "both":
            if args.init_from not in (None, "base"):
                raise TrainingSetupError("--init-from only applies to --stage 2")
            results = run_stages(cfg, (1, 2), progress=progress)
        else:
            stage = int(args.stage)
            init = resolve_init(cfg, stage, args.init_from)
            results = {stage: run_stage(cfg, stage, init_from=init, progress=progress)}
    except (TrainingSetupError, GroupBuildError, DataFormatError, ModelSpecError, FileNotFoundError,
            TrainingDivergedError) as e:
        print(f"prosocial train: error: {e}", file=sys.stderr)
        return 1
    for s, r in results.items():
        print(format_stage_result(r))
    return 0


def resolve_init(cfg: Config, stage: int, init: str | None) -> str | None:
    """Where ``--stage N`` starts from ``--init-from``: None (the base model), this run's finished stage 1, or a
    folder. Raises :class:`TrainingSetupError` for a stage-1 ``--init-from``, a missing or damaged stage 1 or a
    missing folder."""
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
