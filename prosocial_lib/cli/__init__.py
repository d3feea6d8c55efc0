"""The ``prosocial`` command line: one subcommand per part of the experiment.

Each subcommand lives in the module that does the work, which exposes two functions:
``configure_cli(parser)`` adds its arguments and ``run_cli(args, cfg) -> int`` runs it with the resolved
:class:`~prosocial_lib.config.Config`. Only the chosen module is imported, so ``prosocial --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..config.presets import get_config, parse_set_args
from ..config.schema import DEFAULT_PRESET, PRESET_NAMES, ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("prosocial_lib.cli.data", "inspect, validate and export the datasets"),
    "train": ("prosocial_lib.cli.train", "fine-tune: stage 1 (MIC), stage 2 (ProsocialDialog + casual) or both"),
    "audit": ("prosocial_lib.cli.audit", "generate replies for context sets and judge them"),
    "evaluate": ("prosocial_lib.cli.evaluate", "compare the fine-tuned models with the baselines"),
    "sweep": ("prosocial_lib.cli.sweep", "choose lambda, tau and the stage-2 learning rate on the validation split"),
    "bench": ("prosocial_lib.cli.bench", "benchmark training objectives, generation and judges on this machine"),
    "book": ("prosocial_lib.cli.book", "execute the notebooks with papermill and build the HTML book"),
}


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES,
                   help=f"smoke (CI, seconds) | cpu (embedded default, minutes) | gpu (hub data). "
                        f"Default: {DEFAULT_PRESET}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set stage1.learning_rate=3e-5 (repeatable)")
    p.add_argument("--run-name", default=None, help="outputs go to <runs-dir>/<run-name>/ (default: the preset)")
    p.add_argument("--runs-dir", default=None, help="root of all runs (default: $PROSOCIAL_RUNS_DIR or ./runs)")
    return p


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prosocial",
        description="Socially aware contrastive fine-tuning for dialog safety (Das & Srihari, 2024), re-implemented.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_parser()
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, parents=[common], description=help_)
        if name == command:
            importlib.import_module(module).configure_cli(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given (a sweep records it)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        overrides = parse_set_args(args.overrides)
        if args.run_name:
            overrides["run_name"] = args.run_name
        if args.runs_dir:
            overrides["runs_dir"] = args.runs_dir
        cfg = get_config(args.preset, overrides)
    except ConfigError as e:
        parser.error(str(e))
    return _run(args, cfg)


#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130


def _run(args: argparse.Namespace, cfg) -> int:
    """Run the subcommand. Ctrl-C prints one line (where a rerun resumes) instead of a traceback and exits with
    :data:`INTERRUPTED`; a folder another live process is writing exits with 1."""
    from ..runs import RunBusyError

    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run_cli(args, cfg) or 0)
    except KeyboardInterrupt as e:
        # a StageInterrupted names the checkpoint a rerun resumes from; finished steps of any command are reused
        message = getattr(e, "message", None) or "interrupted; rerun the same command to continue (finished " \
                                                  "steps are reused)"
        print(f"prosocial {args.command}: {message}", file=sys.stderr)
        return INTERRUPTED
    except RunBusyError as e:
        print(f"prosocial {args.command}: error: {e}", file=sys.stderr)
        return 1

