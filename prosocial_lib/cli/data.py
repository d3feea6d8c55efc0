"""``prosocial data``: look at the data a preset uses, check a file before training on it, export a split.

    prosocial data summary --preset cpu                     # counts per split, label / source shares
    prosocial data validate PATH --kind prosocial|mic|casual|subtle|judge_check  # every bad row: file, row, field; exit 1 if any
    prosocial data export --kind mic --split dev --out dev.jsonl
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

from ..data.errors import DataFormatError, DataSkipWarning, LoadReport, last_load_report
from ..data.readers import EMBEDDED_NOTICE, split_of_path

KINDS = ("prosocial", "mic", "casual", "subtle", "judge_check")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("summary", "validate", "export"),
                        help="summary: counts and shares of the preset's data | validate PATH: report every bad "
                             "row | export: write one split as JSON lines")
    parser.add_argument("path", nargs="?", default=None,
                        help="validate: the file or folder to check; summary/export: overrides the preset's source")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="which dataset (validate/export; summary shows all when omitted); subtle: the "
                             "book's subtle contexts (test only); judge_check: the judges' check set (test only)")
    parser.add_argument("--split", default=None, help="train | validation | test (MIC: train | dev | test)")
    parser.add_argument("--out", default=None, help="export: output .jsonl file")
    parser.add_argument("--show", type=int, default=20, help="validate: how many bad rows to print (default 20)")


def _source(kind: str, cfg, override: str | None) -> str:
    if override:
        return override
    return {"prosocial": cfg.data.prosocial_source, "mic": cfg.data.mic_source,
            "casual": cfg.data.casual_source, "subtle": "embedded", "judge_check": "embedded"}[kind]


def _splits(kind: str) -> tuple[str, ...]:
    return {"mic": ("train", "dev", "test"), "subtle": ("test",), "judge_check": ("test",)}.get(kind, ("train", "validation", "test"))


def _load(kind: str, source: str, split: str, strict: bool = True, seed: int = 0):
    from ..data import load_casual, load_judge_check, load_mic, load_prosocial_dialog, load_subtle

    if kind == "prosocial":
        return load_prosocial_dialog(source, split, strict=strict)
    if kind == "mic":
        return load_mic(source, split, strict=strict)
    if kind == "subtle":
        return load_subtle(source, split, strict=strict)
    if kind == "judge_check":
        return load_judge_check(source, strict=strict)
    return load_casual(source, split, seed=seed, strict=strict)


def summary_tables(cfg, kinds: tuple[str, ...] = KINDS, override: str | None = None) -> dict[str, pd.DataFrame]:
    """The tables ``prosocial data summary`` prints, keyed by title (also handy in a notebook)."""
    from ..data import stats
    from ..data.judge_check import judge_check_counts

    tables: dict[str, pd.DataFrame] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataSkipWarning)
        if "prosocial" in kinds:
            src = _source("prosocial", cfg, override)
            splits = {s: _load("prosocial", src, s) for s in _splits("prosocial")}
            tables[f"ProsocialDialog ({src}): turns, dialogues and label shares per split"] = \
                stats.prosocial_overview(splits)
            tables[f"ProsocialDialog ({src}): share of turns per source"] = stats.source_table(splits).pivot(
                index="split", columns="source", values="share").fillna(0.0).reindex(list(splits))
        if "mic" in kinds:
            src = _source("mic", cfg, override)
            splits = {s: _load("mic", src, s) for s in _splits("mic")}
            tables[f"MIC ({src}): rows, prompts and answer agreement per split"] = stats.mic_overview(splits)
        if "casual" in kinds:
            src = _source("casual", cfg, override)
            rows = []
            for s in _splits("casual"):
                ds = _load("casual", src, s, seed=cfg.seed)
                rows.append({"split": s, "turns": len(ds),
                             "mean history length": sum(map(len, ds["history"])) / max(1, len(ds))})
            tables[f"casual chat ({src}): (history, response) turns per split"] = pd.DataFrame(rows).set_index(
                "split")
        if "subtle" in kinds:
            src = override if override and kinds == ("subtle",) else "embedded"
            tables[f"subtle contexts ({src}): contexts and label shares (test only)"] = \
                stats.subtle_overview(_load("subtle", src, "test"))
        if "judge_check" in kinds:
            src = override if override and kinds == ("judge_check",) else "embedded"
            tables[f"judge check set ({src}): pairs per label and origin (test contexts only)"] = \
                judge_check_counts(_load("judge_check", src, "test"))
    return tables


def _print_report(report: LoadReport, show: int) -> None:
    print(report.summary())
    for line in report.examples[:show]:
        print(f"  - {line}")
    if report.rows_skipped > len(report.examples[:show]):
        print(f"  ... and {report.rows_skipped - len(report.examples[:show])} more")
    for line in report.problems:
        print(f"  - {line}")


def _summary(args: argparse.Namespace, cfg) -> int:
    kinds = (args.kind,) if args.kind else KINDS
    print(f"preset {cfg.preset}; caps in this preset: train rows {cfg.data.max_train_examples}, eval rows "
          f"{cfg.data.max_eval_examples} (the counts below are before the caps)")
    if "embedded" in (cfg.data.prosocial_source, cfg.data.mic_source):
        print(f"note: {EMBEDDED_NOTICE}")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        for title, table in summary_tables(cfg, kinds, args.path).items():
            print(f"\n{title}\n{table}")
    return 0


def _validate_splits(kind: str, path: Path, split: str | None) -> tuple[str, ...]:
    if kind == "mic":
        return (split or "train",)  # one pass validates the whole file, whatever the split
    if kind in ("subtle", "judge_check"):
        return ("test",)
    if path.is_file() and path.suffix.lower() != ".zip":
        return (split or split_of_path(Path(path.name)) or "train",)
    return (split,) if split else _splits(kind)


def _validate(args: argparse.Namespace) -> int:
    if not args.path or not args.kind:
        print("validate needs PATH and --kind prosocial|mic|casual|subtle|judge_check")
        return 2
    path = Path(args.path)
    bad = 0
    for split in _validate_splits(args.kind, path, args.split):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataSkipWarning)
            try:
                _load(args.kind, str(path), split, strict=False)
            except (FileNotFoundError, DataFormatError, ValueError) as e:  # a whole-file problem
                print(f"[{split}] {e}")
                bad += 1
                continue
        report = last_load_report()
        _print_report(report, args.show)
        bad += report.rows_skipped + len(report.problems)
    print("OK: no bad rows" if not bad else f"FAILED: {bad} problem(s)")
    return 0 if not bad else 1


def _export(args: argparse.Namespace, cfg) -> int:
    if not args.kind or not args.out:
        print("export needs --kind and --out")
        return 2
    split = args.split or "train"
    ds = _load(args.kind, _source(args.kind, cfg, args.path), split, seed=cfg.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    ds.to_json(args.out, lines=True)
    print(f"wrote {len(ds)} rows of {args.kind} [{split}] to {args.out}")
    return 0


def run_cli(args: argparse.Namespace, cfg) -> int:
    """Run ``prosocial data ACTION``. A data file that cannot be used prints one line (file, row, field: problem)
    on stderr and exits 1, never a traceback."""
    try:
        if args.action == "summary":
            return _summary(args, cfg)
        if args.action == "validate":
            return _validate(args)
        return _export(args, cfg)
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
