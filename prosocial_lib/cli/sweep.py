"""``prosocial sweep``: choose lambda, tau and the learning rate of stage 2 on the validation split."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from ..config.schema import Config
from ..eval.sweep import DEFAULT_GRID, parse_grid, run_sweep, save_sweep
from ..eval.systems import EvaluationError


def configure_cli(parser: argparse.ArgumentParser) -> None:
    default = " ".join(f"{k}={','.join(map(str, v))}" for k, v in DEFAULT_GRID.items())
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"a config key and its values (repeatable; default: {default})")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="where the results go (default: <run_dir>/sweep/sweep.json; the book reads "
                             "book/sweeps/<preset>.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def recorded_command(argv: list[str]) -> str:
    """The command line as the sweep record keeps it: without ``--runs-dir`` (where this machine keeps its runs
    changes no result, and a book page must not show the build machine's paths)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--runs-dir":
            skip = True
        elif not a.startswith("--runs-dir="):
            kept.append(a)
    return "prosocial " + " ".join(shlex.quote(a) for a in kept)


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from ..groups.types import GroupBuildError
    from ..train.collator import TrainingSetupError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        grid = parse_grid(args.grid) if args.grid else DEFAULT_GRID
        table = run_sweep(cfg, grid, progress=not args.no_progress)
    except (EvaluationError, GroupBuildError, TrainingSetupError, FileNotFoundError) as e:
        print(f"prosocial sweep: error: {e}", file=sys.stderr)
        return 1
    out = args.out or cfg.run_dir / "sweep" / "sweep.json"
    command = recorded_command(getattr(args, "argv", None) or sys.argv[1:])
    save_sweep(table, cfg, grid, out, command)
    cols = ["point", "steps", "groups", "accuracy", "accuracy low", "accuracy high", "margin", "ce", "chosen"]
    print(table[cols].to_string(index=False))
    print(f"\nchosen: {table[table['chosen']].iloc[0]['point']}; saved in {out}")
    return 0
