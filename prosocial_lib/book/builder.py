"""Execute the chapters with papermill and build the Jupyter Book, then check the HTML.

Why a staging copy: the committed notebooks stay free of outputs; papermill writes executed copies into
``_build/staging/`` (with the book's config and static files), and Jupyter Book 1 renders those saved outputs with
``execute_notebooks: "off"``. A notebook that fails under papermill would still render (with its traceback), so
both the papermill status and :func:`check_html` gate the build.

    prosocial book --preset cpu            # what `make book` runs
    prosocial book --preset smoke --out /tmp/smoke-book   # HTML in /tmp/smoke-book/_build/html
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..runs import machine_info
from .html_check import check_html
from .kernel import (
    KERNEL_NAME,
    PROBE_CELL_ID,
    RAN_WITH_MIME,
    BookBuildError,
    _probe_cell,
    bound_kernel,
    ran_with_problems,
)
from .notebook import INJECTED_TAG, REMOVE_CELL, parameters_problems

# Files and folders at the book root that the staging copy needs (relative to the repository root).
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib", "_static", "book")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
# For every executed chapter: progress bars would render as frozen "0%" text in the HTML.
BOOK_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    ok: bool
    error: str | None = None




def repo_root() -> Path:
    """The folder holding ``_toc.yml``: the current directory or one above it."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists():
            return folder
    raise FileNotFoundError(f"no _toc.yml in {here} or above: run this from the book's repository")


def toc_files(root: Path) -> list[Path]:
    """The documents listed in ``_toc.yml``, in reading order, as paths that exist (``.ipynb`` or ``.md``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))
            walk(item.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    paths = []
    for entry in entries:
        matches = [root / f"{entry}{ext}" for ext in (".ipynb", ".md") if (root / f"{entry}{ext}").exists()]
        if not matches:
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but neither {entry}.ipynb nor {entry}.md exists")
        paths.append(matches[0])
    return paths


def stage(root: Path, staging: Path) -> Path:
    """Copy the book's sources into a fresh ``staging`` folder."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in BOOK_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, staging / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        elif src.exists():
            shutil.copy2(src, staging / name)
    return staging


def execute_notebooks(root: Path, staging: Path, preset: str, *, timeout: int = 1800,
                      runs_dir: Path | None = None, report_path: Path | None = None, log=print
                      ) -> list[NotebookRun]:
    """Run every notebook in the table of contents with papermill, in order, writing into ``staging``.

    Notebooks whose metadata sets ``prosocial.execute_last`` (the course guide, which shows how long the chapters
    took) run after all the others, with ``$PROSOCIAL_BOOK_REPORT`` naming the report of the chapters so far
    (written to ``report_path``). Every chapter runs in a kernel bound to this interpreter and this copy of the
    library (:func:`bound_kernel`); a chapter whose ``preset`` would not be the one asked for is refused, and
    each run is checked afterwards for the preset, interpreter and library it really ran with.

    Args:
        root: the book's root (holding ``_toc.yml``).
        staging: where the executed copies go (see :func:`stage`).
        preset: the value papermill injects as ``preset``.
        timeout: seconds allowed per cell.
        runs_dir: exported to the chapters as ``$PROSOCIAL_RUNS_DIR``.
        report_path: where the report read by the ``execute_last`` notebooks is written.
        log: called with one progress line at a time.

    Returns:
        One record per notebook run; stops at the first failure (later chapters build on earlier ones).

    Raises:
        BookBuildError: before executing anything, when no kernel bound to this interpreter can be set up.
    """
    runs: list[NotebookRun] = []
    notebooks = [p for p in toc_files(root) if p.suffix == ".ipynb"]
    last = [p for p in notebooks if _executes_last(p)]
    with _book_environment(preset, runs_dir):
        for src in [p for p in notebooks if p not in last] + last:
            if src in last and report_path is not None:  # it reads the times of the chapters run so far
                write_report(report_path, preset, runs)
                os.environ[REPORT_ENV] = str(report_path)
            runs.append(execute_chapter(src, staging / src.relative_to(root), src.relative_to(root), preset,
                                        timeout=timeout, log=log))
            if not runs[-1].ok:
                break
    return runs


REPORT_ENV = "PROSOCIAL_BOOK_REPORT"


@contextmanager
def _book_environment(preset: str, runs_dir: Path | None) -> Iterator[None]:
    """Set the chapters' environment variables and bind the kernel; restore ``os.environ`` afterwards.

    Raises:
        BookBuildError: from :func:`bound_kernel`.
    """
    env_backup = dict(os.environ)
    os.environ.update(BOOK_ENV)
    if preset != "gpu":  # the gpu preset loads the real data and models from the hub
        os.environ.update(OFFLINE_ENV)
    if runs_dir is not None:
        os.environ["PROSOCIAL_RUNS_DIR"] = str(Path(runs_dir).resolve())
    try:
        with tempfile.TemporaryDirectory(prefix="prosocial-kernel-") as jupyter_dir:
            bound_kernel(Path(jupyter_dir))
            yield
    finally:
        os.environ.clear()
        os.environ.update(env_backup)


def execute_chapter(src: Path, out: Path, rel: Path, preset: str, *, timeout: int = 1800, log=print
                    ) -> NotebookRun:
    """Execute one notebook with papermill into ``out``, refusing it first if ``preset`` would not reach it.

    A hidden probe cell is appended for the run and removed afterwards: it records the ``preset`` the chapter
    ended with, the interpreter and the ``prosocial_lib`` it imported, which :func:`ran_with_problems` compares
    with what the build asked for. Call it after :func:`bound_kernel` (as :func:`execute_notebooks` does).

    Args:
        src: the committed notebook.
        out: the executed copy (written even when a cell fails, with papermill's error banner).
        rel: the notebook's name in messages and in the record.
        preset: the value injected as ``preset``.
        timeout: seconds allowed per cell.
        log: called with one progress line at a time.

    Returns:
        The run's record; ``ok`` is False when it was refused, failed, or ran with the wrong preset or library.
    """
    import nbformat
    import papermill as pm

    nb = nbformat.read(src, as_version=4)
    refused = parameters_problems(nb)
    if refused:
        log(f"[book] REFUSED {rel}: " + "; ".join(refused))
        return NotebookRun(str(rel), 0.0, False, f"refused before executing: {'; '.join(refused)}")
    nb.cells.append(_probe_cell())
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    log(f"[book] executing {rel} (preset={preset}) ...")
    start = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(str(out), str(out), parameters={"preset": preset}, kernel_name=KERNEL_NAME,
                            cwd=str(out.parent), progress_bar=False, log_output=False, execution_timeout=timeout)
    except Exception as e:  # papermill has already written the notebook with its error banner
        error = _short_error(e)
    ran_with = _finish_staged(out, src)
    if error is None:
        error = "; ".join(ran_with_problems(ran_with, preset)) or None
    run = NotebookRun(str(rel), time.perf_counter() - start, error is None, error)
    log(f"[book] ok {rel} in {run.seconds:.0f} s" if run.ok
        else f"[book] FAILED {rel} after {run.seconds:.0f} s: {error}")
    return run


def _executes_last(path: Path) -> bool:
    import nbformat
    return bool(nbformat.read(path, as_version=4).metadata.get("prosocial", {}).get("execute_last"))














def write_report(path: Path, preset: str, runs: list[NotebookRun], **extra) -> dict:
    """The execution report: every notebook's time, the machine, and ``extra`` fields (build time, problems)."""
    report = {"preset": preset, "machine": machine_info(), "notebooks": [asdict(r) for r in runs],
              "execute_seconds": round(sum(r.seconds for r in runs), 1), **extra}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
    return report


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _finish_staged(path: Path, src: Path) -> dict | None:
    """Remove the probe cell and the widget outputs from an executed notebook; return the probe's record.

    Args:
        path: the executed notebook, rewritten in place.
        src: the committed notebook, recorded as papermill's input (it ran from the probed copy at ``path``).

    Returns:
        What the probe cell displayed, or None when it did not run.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    probes = [c for c in nb.cells if c.get("id") == PROBE_CELL_ID]
    nb.cells = [c for c in nb.cells if c.get("id") != PROBE_CELL_ID]
    records = [o["data"][RAN_WITH_MIME] for c in probes for o in c.outputs if RAN_WITH_MIME in o.get("data", {})]
    _strip_widgets(nb)
    hide_injected_parameters(nb)
    if "papermill" in nb.metadata:
        nb.metadata.papermill["input_path"] = str(src)
    nbformat.write(nb, path)
    return records[-1] if records else None


def hide_injected_parameters(nb) -> None:
    """Tag papermill's injected copy of the parameters ``remove-cell``: it is plumbing, like the cell it copies."""
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags and REMOVE_CELL not in tags:
            cell.metadata["tags"] = [*tags, REMOVE_CELL]


def _strip_widgets(nb) -> None:
    """Drop interactive widget outputs (progress bars) and their saved state from an executed notebook.

    Their static rendering is a frozen bar, and myst-nb would load require.js and the widget manager from a CDN
    for them, which breaks the offline book.

    Args:
        nb: the notebook, changed in place.
    """
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]


def build_html(staging: Path, out: Path, *, log=print) -> tuple[int, str]:
    """Run ``jupyter-book build`` on the staging copy (warnings are errors); HTML lands in ``out/_build/html``."""
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
           "build", str(staging), "--path-output", str(out), "-W", "--keep-going", "--builder", "html"]
    log(f"[book] jupyter-book {' '.join(cmd[3:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV, "MPLBACKEND": "Agg"})
    output = proc.stdout + proc.stderr
    return proc.returncode, output


















def _short_error(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(e).__name__)[:500]


# ---------------------------------------------------------------------------------------------- runner
def build_book(preset: str = "cpu", *, root: Path | None = None, out: Path | None = None,
               runs_dir: Path | None = None, execute: bool = True, timeout: int = 1800, log=print) -> Path:
    """Stage, execute, build and check the book; return the path of ``index.html``.

    Everything goes under ``<out>/_build`` (``out`` defaults to the repository root): the staging copy in
    ``staging/``, the HTML in ``html/``, and ``execution-report-<preset>.json`` with the time of every notebook.
    Raises :class:`BookBuildError` with the reason when any step fails.
    """
    root = Path(root or repo_root()).resolve()
    build = Path(out or root).resolve() / "_build"
    staging = stage(root, build / "staging")
    runs: list[NotebookRun] = []
    start = time.perf_counter()
    report_path = build / f"execution-report-{preset}.json"
    if execute:
        runs = execute_notebooks(root, staging, preset, timeout=timeout, runs_dir=runs_dir or root / "runs",
                                 report_path=report_path, log=log)
    execute_seconds = sum(r.seconds for r in runs)
    rc, output = build_html(staging, build.parent, log=log)
    build_seconds = round(time.perf_counter() - start - execute_seconds, 1)
    html = build / "html"
    machine_paths = [root, build, *([Path(runs_dir).resolve()] if runs_dir else [root / "runs"])]
    problems = check_html(html, forbidden=machine_paths) if html.exists() else [f"{html} was not created"]
    write_report(report_path, preset, runs, build_seconds=build_seconds, html_problems=problems)
    failed = [r for r in runs if not r.ok]
    if failed:
        raise BookBuildError(f"notebook {failed[0].notebook} failed: {failed[0].error}")
    if rc != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise BookBuildError(f"jupyter-book build failed (exit {rc}); last lines:\n{tail}")
    if problems:
        raise BookBuildError("the HTML check found problems:\n  " + "\n  ".join(problems[:50]))
    return html / "index.html"
