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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from ..runs import machine_info

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


class BookBuildError(RuntimeError):
    """The book did not build cleanly: a notebook failed, Sphinx warned, or the HTML check found problems."""


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
    (written to ``report_path``). Stops at the first failure (later chapters build on earlier ones) and returns
    one record per notebook run.
    """
    import papermill as pm

    env_backup = dict(os.environ)
    os.environ.update(BOOK_ENV)
    if preset != "gpu":  # the gpu preset loads the real data and models from the hub
        os.environ.update(OFFLINE_ENV)
    if runs_dir is not None:
        os.environ["PROSOCIAL_RUNS_DIR"] = str(Path(runs_dir).resolve())
    runs: list[NotebookRun] = []
    notebooks = [p for p in toc_files(root) if p.suffix == ".ipynb"]
    last = [p for p in notebooks if _executes_last(p)]
    try:
        for src in [p for p in notebooks if p not in last] + last:
            rel = src.relative_to(root)
            if src in last and report_path is not None:  # it reads the times of the chapters run so far
                write_report(report_path, preset, runs)
                os.environ[REPORT_ENV] = str(report_path)
            out = staging / rel
            log(f"[book] executing {rel} (preset={preset}) ...")
            start = time.perf_counter()
            try:
                pm.execute_notebook(str(src), str(out), parameters={"preset": preset}, kernel_name="python3",
                                    cwd=str(out.parent), progress_bar=False, log_output=False,
                                    execution_timeout=timeout)
            except Exception as e:  # papermill has already written the notebook with its error banner
                runs.append(NotebookRun(str(rel), time.perf_counter() - start, False, _short_error(e)))
                log(f"[book] FAILED {rel} after {runs[-1].seconds:.0f} s: {runs[-1].error}")
                break
            _strip_widgets(out)
            runs.append(NotebookRun(str(rel), time.perf_counter() - start, True))
            log(f"[book] ok {rel} in {runs[-1].seconds:.0f} s")
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return runs


REPORT_ENV = "PROSOCIAL_BOOK_REPORT"


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


def _strip_widgets(path: Path) -> None:
    """Drop interactive widget outputs (progress bars) and their saved state from an executed notebook.

    Their static rendering is a frozen bar, and myst-nb would load require.js and the widget manager from a CDN
    for them, which breaks the offline book.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
    nbformat.write(nb, path)


def build_html(staging: Path, out: Path, *, log=print) -> tuple[int, str]:
    """Run ``jupyter-book build`` on the staging copy (warnings are errors); HTML lands in ``out/_build/html``."""
    cmd = [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
           "build", str(staging), "--path-output", str(out), "-W", "--keep-going", "--builder", "html"]
    log(f"[book] jupyter-book {' '.join(cmd[3:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV, "MPLBACKEND": "Agg"})
    output = proc.stdout + proc.stderr
    return proc.returncode, output


# ---------------------------------------------------------------------------------------------- HTML check
_LOADING_ATTRS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src",
                  "video": "src", "embed": "src", "object": "data", "link": "href"}


def check_html(html_dir: Path) -> list[str]:
    """Problems a reader would hit: network loads, broken local links/images, tracebacks, papermill errors.

    Returns human-readable problems (empty when the book is clean).
    """
    from bs4 import BeautifulSoup

    html_dir = Path(html_dir)
    problems: list[str] = []
    # _static holds theme templates (Jinja, not pages) and _sources the reStructuredText/notebook sources.
    pages = sorted(p for p in html_dir.rglob("*.html") if p.relative_to(html_dir).parts[0] not in ("_static", "_sources"))
    if not pages:
        return [f"{html_dir}: no HTML pages"]
    for page in pages:
        rel = page.relative_to(html_dir)
        soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "html.parser")
        for tag in soup.find_all(list(_LOADING_ATTRS)):
            url = tag.get(_LOADING_ATTRS[tag.name])
            if not url:
                continue
            if tag.name == "link" and not set(tag.get("rel") or []) & {"stylesheet", "preload", "icon",
                                                                       "modulepreload", "manifest"}:
                continue
            if _is_remote(url):
                problems.append(f"{rel}: <{tag.name}> loads {url} from the network")
            elif not _resolves(page, url):
                problems.append(f"{rel}: <{tag.name}> points to missing {url}")
        for a in soup.find_all("a", href=True):
            href = a["href"]
            if not _is_remote(href) and not href.startswith(("mailto:", "javascript:")) and not _resolves(page, href):
                problems.append(f"{rel}: link to missing {href}")
        if soup.find(class_=lambda c: c and "traceback" in c.split()) is not None:
            problems.append(f"{rel}: shows a Python traceback")
        if soup.find(id="papermill-error-cell") is not None or "papermill-error-cell" in str(soup):
            problems.append(f"{rel}: contains papermill's error cell (a notebook failed)")
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for marker in ("@import url(http", "@import url(\"http", "@import url('http", "@import \"http"):
            if marker in text:
                problems.append(f"{css.relative_to(html_dir)}: imports a stylesheet from the network")
    return problems


def _is_remote(url: str) -> bool:
    return url.startswith(("http://", "https://", "//", "ftp://"))


def _resolves(page: Path, url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme or not parts.path:  # data:, blob:, or a same-page fragment
        return True
    return (page.parent / unquote(parts.path)).exists()


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
    problems = check_html(html) if html.exists() else [f"{html} was not created"]
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
