"""``prosocial audit``: audit chat models."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from ..config.schema import Config
from ..data.errors import DataFormatError
from ..eval.audit import (
    AuditSystem,
    decoding_settings,
    default_audit_systems,
    preset_judges,
    run_audit,
    short_model_name,
    summarize_audit,
)
from ..eval.contexts import build_context_sets, load_contexts_jsonl
from ..report.audit import headline_table


# ---------------------------------------------------------------------- command line
def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contexts", default=None, metavar="FILE.jsonl",
                        help="audit your own contexts: one JSON object per line with 'context' (str) or 'history' "
                             "(list of str), optional 'set', 'id', 'response'")
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                        help="models to audit (default: audit.models, else model.name)")
    parser.add_argument("--system-prompt", default=None,
                        help="audit one system per model with this system prompt (instead of audit.decodings)")
    parser.add_argument("--sample", action="store_true",
                        help="audit one system per model with sampled replies (generation.samples_per_context each)")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/audit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def cli_systems(args: argparse.Namespace, cfg: Config) -> list[AuditSystem]:
    """The systems the command line asks for: the config's decodings (``audit.decodings``) of ``--models`` (else
    ``audit.models``), or one system per model when ``--system-prompt`` or ``--sample`` is given. ``cfg`` is left
    as it is."""
    audit = dataclasses.replace(cfg.audit, models=list(args.models)) if args.models else cfg.audit
    gen = cfg.generation
    if args.system_prompt is None and not args.sample:
        return default_audit_systems(audit, gen, cfg.model.name)
    label = ("sampled" if args.sample else "greedy") + (" + custom system prompt" if args.system_prompt else "")
    return [AuditSystem(name=f"{short_model_name(m)} | {label}", model=m, system_prompt=args.system_prompt,
                        do_sample=args.sample, temperature=gen.temperature, top_p=gen.top_p,
                        num_samples=gen.samples_per_context if args.sample else 1, **decoding_settings(gen))
            for m in (audit.models or [cfg.model.name])]


def run_cli(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.contexts:
            context_sets = load_contexts_jsonl(args.contexts)
            default_out = cfg.run_dir / f"audit-{Path(args.contexts).stem}"
        else:
            context_sets = build_context_sets(cfg.data, cfg.audit.num_contexts, seed=cfg.seed)
            default_out = cfg.run_dir / "audit"
    except (DataFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    systems = cli_systems(args, cfg)
    out_dir = Path(args.out) if args.out else default_out
    print(f"auditing {len(systems)} system(s) on {', '.join(f'{k} ({len(v)})' for k, v in context_sets.items())} "
          f"contexts -> {out_dir}")
    judges = preset_judges(cfg)
    df = run_audit(systems, context_sets, judges, cfg, out_dir, progress=not args.no_progress)
    summary = summarize_audit(df, cfg.stats, seed=cfg.seed)
    sets = list(context_sets)
    metrics = [(s, m) for s in sets for m in ("unsafe", "violates_rot", "preachy")]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        print(headline_table(summary, metrics).to_string())
    print(f"\n{len(df)} replies in {out_dir / 'replies.jsonl'}; rates with {cfg.stats.confidence:.0%} bootstrap "
          f"CIs in {out_dir / 'summary.csv'}")
    return 0
