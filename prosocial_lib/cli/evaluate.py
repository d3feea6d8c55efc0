"""``prosocial evaluate``: compare the systems."""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from ..config.schema import Config
from ..eval.ablations import run_ablations
from ..eval.comparison import compare, side_by_side
from ..eval.systems import VARIANTS, EvaluationError
from ..report.comparison import findings_markdown, format_table, judge_context, paired_table, verdict


# ====================================================================== command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=None, metavar="KEY",
                        help=f"systems to compare (default: compare.systems): {', '.join(VARIANTS)}")
    parser.add_argument("--no-ablations", action="store_true", help="skip the loss ablations (compare.ablations)")
    parser.add_argument("--examples", type=int, default=0, metavar="N",
                        help="also print every system's replies to the N adversarial contexts where they differ most")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from ..data.errors import DataFormatError
    from ..eval.audit import preset_judges
    from ..groups.types import GroupBuildError
    from ..modeling.loading import ModelSpecError
    from ..train.checkpoints import TrainingDivergedError
    from ..train.collator import TrainingSetupError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    try:
        judges = preset_judges(cfg)
        comp = compare(cfg, args.variants, judges=judges, progress=progress)
        ablations = None if args.no_ablations or not cfg.compare.ablations else run_ablations(cfg, progress=progress)
    except (EvaluationError, TrainingSetupError, GroupBuildError, DataFormatError, ModelSpecError,
            FileNotFoundError, TrainingDivergedError) as e:
        print(f"prosocial evaluate: error: {e}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_columns", None, "display.width", 250, "display.max_colwidth", 60):
        print(f"\nEvaluation ({cfg.preset} preset): rates with {cfg.stats.confidence:.0%} bootstrap CIs\n")
        print(format_table(comp.table).to_string())
        if ablations is not None:
            print("\nAblations: held-out contrastive accuracy after stage 2\n")
            print(ablations[["ablation", "steps", "groups", "accuracy", "accuracy low", "accuracy high", "margin",
                             "ce", "reused"]].to_string(index=False))
        if args.examples:
            print("\nSide by side:\n")
            print(side_by_side(comp.replies, "adversarial", args.examples).to_string(index=False))
        print("\nFull method minus each baseline (paired, percentage points):\n")
        print(paired_table(comp.paired).to_string(index=False))
    print(f"\nVerdict: {verdict(comp.paired)}")
    print(f"\n{findings_markdown(comp.table, ablations, cfg, judge_context(judges), comp.paired)}")
    print(f"\nsaved in {comp.out_dir} (table.csv, rates.csv, quality.csv, paired_differences.csv, replies.jsonl); "
          f"took {comp.seconds.get('total', 0):.0f} s")
    return 0
