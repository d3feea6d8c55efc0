"""``prosocial train``: run the fine-tuning stages."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config.schema import Config
from ..report.training import format_stage_result
from ..train.collator import TrainingSetupError
from ..train.stages import _resolve_init, run_stage, run_stages


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
            init = _resolve_init(cfg, stage, args.init_from)
            results = {stage: run_stage(cfg, stage, init_from=init, progress=progress)}
    except (TrainingSetupError, GroupBuildError, DataFormatError, ModelSpecError, FileNotFoundError) as e:
        print(f"prosocial train: error: {e}", file=sys.stderr)
        return 1
    for s, r in results.items():
        print(format_stage_result(r))
    return 0
