"""The student edition: the chapters without solution cells."""

from __future__ import annotations

import shutil
from pathlib import Path

from .builder import repo_root, toc_files

# ---------------------------------------------------------------------------------------------- student edition
SOLUTION_TAG = "solution"


def student_edition(root: Path | None = None, out: Path | None = None) -> list[Path]:
    """Write the chapters without their solutions into ``out`` (default ``<repo>/student``), for a teacher to hand out.

    Every cell tagged ``solution`` is removed (in a notebook, a solution is its ``{solution-start}`` markdown
    cell, its code cells and its ``{solution-end}`` cell, all tagged); exercises, outputs-free code and prose
    stay. Returns the written notebooks.
    """
    import nbformat

    root = Path(root or repo_root()).resolve()
    out = Path(out or root / "student").resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "book").mkdir(parents=True)
    written = []
    for src in toc_files(root):
        dest = out / src.relative_to(root)
        if src.suffix != ".ipynb":
            shutil.copy2(src, dest)
            continue
        nb = nbformat.read(src, as_version=4)
        nb.cells = [c for c in nb.cells if SOLUTION_TAG not in c.metadata.get("tags", [])]
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, dest)
        written.append(dest)
    return written
