"""``prosocial bench``: the benchmark."""

from __future__ import annotations

import argparse
import logging
import sys

from ..bench.run import run_bench, save_bench
from ..bench.settings import BENCH_FILE, BenchError, bench_path, bench_settings
from ..config.schema import Config
from ..report.bench import format_bench


# ---------------------------------------------------------------------- the command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per training row")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per training row (median reported)")
    parser.add_argument("--ks", default=None, help="comma-separated K values for the n-pair rows (default 1,3,7)")
    parser.add_argument("--batch-size", type=int, default=None, help="groups per step (default stage2.batch_size)")
    parser.add_argument("--gen-contexts", type=int, default=None, help="contexts for the generation rows")
    parser.add_argument("--no-dpo", action="store_true", help="skip the TRL DPO row")
    parser.add_argument("--no-generation", action="store_true", help="skip the generation rows")
    parser.add_argument("--no-judges", action="store_true", help="skip the judge row")
    parser.add_argument("--out", default=None, help=f"JSON path (default <run_dir>/bench/{BENCH_FILE})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    from ..data.errors import DataFormatError
    from ..groups.types import GroupBuildError
    from ..modeling.loading import ModelSpecError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        ks = tuple(int(k) for k in args.ks.split(",")) if args.ks else None
        settings = bench_settings(cfg, warmup_steps=args.warmup, timed_steps=args.steps, ks=ks,
                                  batch_size=args.batch_size, gen_contexts=args.gen_contexts,
                                  dpo=False if args.no_dpo else None,
                                  generation=False if args.no_generation else None,
                                  judges=False if args.no_judges else None)
        result = run_bench(cfg, settings, progress=not args.no_progress, save=args.out is None)
    except (BenchError, GroupBuildError, DataFormatError, ModelSpecError, ValueError) as e:
        print(f"prosocial bench: error: {e}", file=sys.stderr)
        return 1
    path = save_bench(result, args.out) if args.out else bench_path(cfg)
    print(format_bench(result))
    print(f"saved {path}")
    return 0
