"""``prosocial book``: execute the chapters and build the HTML."""

from __future__ import annotations

import sys
from pathlib import Path

from ..book.builder import BookBuildError, build_book
from ..book.student import student_edition


def configure_cli(parser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="the book goes to <out>/_build/html (default: the repository root); with "
                             "--student-edition, the folder for the notebooks (default: student/)")
    parser.add_argument("--no-execute", action="store_true", help="render without executing the notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per notebook cell")
    parser.add_argument("--student-edition", action="store_true",
                        help="only write the notebooks without their solution cells (into --out, default student/)")


def run_cli(args, cfg) -> int:
    if args.student_edition:
        written = student_edition(out=args.out)
        print(f"[book] student edition: {len(written)} notebooks without solutions in {written[0].parents[1]}"
              if written else "[book] student edition: no notebooks")
        return 0
    try:
        index = build_book(cfg.preset, out=args.out, runs_dir=Path(cfg.runs_dir) if cfg.runs_dir else None,
                           execute=not args.no_execute, timeout=args.timeout)
    except BookBuildError as e:
        print(f"[book] ERROR: {e}", file=sys.stderr)
        return 1
    print(f"[book] done: open file://{index}")
    return 0
