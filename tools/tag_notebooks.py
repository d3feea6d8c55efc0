"""Keep the book's plumbing out of sight: tag setup, parameters, imports and glue cells in every chapter.

    python tools/tag_notebooks.py          # rewrite book/*.ipynb in place (idempotent)
    python tools/tag_notebooks.py --check  # exit 1 and list the cells that break the convention

Glue statements mixed into a cell the reader sees move into a hidden cell right after it (see
``prosocial_lib.book.notebook.tag_plumbing``); tests/test_book_conventions.py checks every notebook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4.rwbase import split_lines

from prosocial_lib.book.notebook import plumbing_problems, tag_plumbing

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report, change nothing")
    parser.add_argument("--tags-only", nargs="*", default=[], metavar="NAME",
                        help="notebooks (stems) whose cells are only tagged, not split")
    args = parser.parse_args(argv)
    bad = 0
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if args.check:
            for problem in plumbing_problems(nb):
                print(f"{path.relative_to(ROOT)}: {problem}")
                bad += 1
            continue
        changed = tag_plumbing(nb, split=path.stem not in args.tags_only)
        if changed:
            nbformat.validate(nb)
            # json, not nbformat.write: keeps the file's key order, so the diff shows only the tags and new cells
            path.write_text(json.dumps(split_lines(nb), indent=1, ensure_ascii=False) + "\n")
            print(f"{path.relative_to(ROOT)}: {changed} cells tagged or split")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
