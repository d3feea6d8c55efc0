"""Binding the chapters' kernel to the interpreter (and library copy) that runs the build, and checking afterwards
what each chapter really ran with (interpreter, library, preset).
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------------------- kernel binding
KERNEL_NAME = "python3"


# The folder holding this copy of ``prosocial_lib`` (the repository root for a checkout or an editable install).
LIBRARY_ROOT = Path(__file__).resolve().parents[2]


def bound_kernel(jupyter_dir: Path, name: str = KERNEL_NAME) -> Path:
    """Make the kernelspec ``name`` run this interpreter with this copy of the library, and check Jupyter agrees.

    Writes ``<jupyter_dir>/kernels/<name>/kernel.json`` for ``sys.executable`` and puts ``jupyter_dir`` first on
    ``$JUPYTER_PATH`` (which Jupyter searches before any other folder), so no ``python3`` kernelspec of another
    interpreter (on ``$JUPYTER_PATH``, in ``~/.local/share/jupyter``, system-wide) is used. When this copy of the
    library is not in site-packages (a checkout), its folder goes first on the kernel's ``PYTHONPATH`` so the
    chapters import the code that runs the build, not another installed version.

    Args:
        jupyter_dir: a private folder that outlives the execution.
        name: the kernel name papermill is asked for.

    Returns:
        The kernelspec's folder.

    Raises:
        BookBuildError: when ipykernel is missing from this interpreter, or Jupyter still resolves ``name`` to
            another kernelspec (e.g. a Jupyter configuration that overrides the kernel folders).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    if importlib.util.find_spec("ipykernel") is None:
        raise BookBuildError(f"ipykernel is not installed for {sys.executable}, which runs the build: "
                             "pip install ipykernel (it is in the [book] extra)")
    spec_dir = jupyter_dir / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python"}
    if not _in_site_packages(LIBRARY_ROOT):
        spec["env"] = {"PYTHONPATH": os.pathsep.join(filter(None, [str(LIBRARY_ROOT), os.environ.get("PYTHONPATH")]))}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")]))
    try:
        found = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        found = None
    if found is None or Path(found.resource_dir).resolve() != spec_dir.resolve():
        where = f"{found.resource_dir} (runs {found.argv[0]})" if found else "nothing"
        raise BookBuildError(f"Jupyter resolves the kernel {name!r} to {where}, not to the kernelspec written for "
                             f"{sys.executable} in {spec_dir}: check KernelSpecManager settings in your Jupyter "
                             "configuration")
    return spec_dir


def _in_site_packages(folder: Path) -> bool:
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return any(Path(d).resolve() == folder for d in site_dirs if d)


# ---------------------------------------------------------------------------------------------- ran-with probe
RAN_WITH_MIME = "application/vnd.prosocial.ran-with+json"


PROBE_CELL_ID = "prosocial-ran-with-probe"


PROBE_SOURCE = f"""\
import importlib.util as _pl_util, sys as _pl_sys
from IPython.display import display as _pl_display
_pl_spec = _pl_util.find_spec("prosocial_lib")
_pl_display({{{RAN_WITH_MIME!r}: {{"preset": repr(globals().get("preset")), "executable": _pl_sys.executable,
              "library": getattr(_pl_spec, "origin", None)}}}}, raw=True)"""


def _probe_cell():
    import nbformat

    cell = nbformat.v4.new_code_cell(PROBE_SOURCE)
    cell.id = PROBE_CELL_ID
    cell.metadata["tags"] = ["remove-cell"]  # hidden by Jupyter Book should it ever stay
    return cell


def ran_with_problems(ran_with: dict | None, preset: str) -> list[str]:
    """Compare what an executed chapter reported (its probe cell) with what the build asked for.

    Args:
        ran_with: the probe's record (``preset`` as a repr, ``executable``, ``library``), or None when the probe
            did not run.
        preset: the preset the build asked for.

    Returns:
        Human-readable problems, empty when the chapter ran with ``preset``, this interpreter and this library.
    """
    if not ran_with:
        return ["the chapter did not report the preset it ran with (its last cell did not run)"]
    problems = []
    if ran_with.get("preset") != repr(preset):
        problems.append(f"it ran with preset {ran_with.get('preset')} although the build asked for {preset!r} "
                        "(a cell sets preset after the injected parameters)")
    if ran_with.get("executable") != sys.executable:
        problems.append(f"it ran in {ran_with.get('executable')}, not in {sys.executable} which runs the build")
    library = LIBRARY_ROOT / "prosocial_lib" / "__init__.py"
    if not ran_with.get("library") or Path(ran_with["library"]).resolve() != library:
        problems.append(f"it imported prosocial_lib from {ran_with.get('library')}, not from {library} which "
                        "runs the build")
    return problems


class BookBuildError(RuntimeError):
    """The book did not build cleanly: a notebook failed, Sphinx warned, or the HTML check found problems."""
