"""Execute the chapters with papermill and build the Jupyter Book, then check the HTML.

Why a staging copy: the committed notebooks stay free of outputs; papermill writes executed copies into
``_build/staging/`` (with the book's config and static files), and Jupyter Book 1 renders those saved outputs with
``execute_notebooks: "off"``. A notebook that fails under papermill would still render (with its traceback), so
both the papermill status and :func:`check_html` gate the build.

    prosocial book --preset cpu            # what `make book` runs
    prosocial book --preset smoke --out /tmp/smoke-book   # HTML in /tmp/smoke-book/_build/html
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

from ..runs import machine_info
from .notebook import parameters_problems

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
    if "papermill" in nb.metadata:
        nb.metadata.papermill["input_path"] = str(src)
    nbformat.write(nb, path)
    return records[-1] if records else None


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


# ---------------------------------------------------------------------------------------------- HTML check
# Elements and the attributes through which they load something as the page opens.
_LOADING_ATTRS = {"script": ("src",), "img": ("src", "srcset"), "iframe": ("src",), "source": ("src", "srcset"),
                  "audio": ("src",), "video": ("src", "poster"), "track": ("src",), "embed": ("src",),
                  "object": ("data",), "input": ("src",), "link": ("href",), "image": ("href", "xlink:href"),
                  "use": ("href", "xlink:href")}
# <link> relations that fetch (or connect to) their href; others (canonical, next, author...) are plain links.
_LOADING_RELS = {"stylesheet", "preload", "prefetch", "icon", "modulepreload", "manifest", "preconnect",
                 "dns-prefetch"}
# <script> types the browser runs (MathJax 2 runs its config blocks); JSON and template blocks are data.
_SCRIPT_TYPES = {"", "text/javascript", "application/javascript", "module", "text/ecmascript",
                 "application/ecmascript", "text/x-mathjax-config"}
# An absolute or protocol-relative URL in a JavaScript string literal (requirejs paths, import(), fetch, ...).
_JS_URL = re.compile(r"""["'`]((?:https?:|wss?:)?//[A-Za-z0-9][^"'`\s]*)""")
# Script text that names a URL without loading it as the page opens: sphinx-thebe fetches THEBE_JS_URL only when
# the reader clicks "live code"; XML namespaces (document.createElementNS) are names, not addresses.
_JS_NOT_LOADS = (re.compile(r"""\bTHEBE_JS_URL\s*=\s*(["'`])[^"'`]*\1"""),)
_XML_NAMESPACES = ("http://www.w3.org/", "https://www.w3.org/")
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)"'\s]*))\s*\)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)  # `@import url(...)` is a url()


def check_html(html_dir: Path) -> list[str]:
    """Problems a reader would hit: network loads, broken local links/images, tracebacks, papermill errors.

    Network loads are looked for in the loading attributes of every page (``src``, ``srcset``, ``href`` of
    stylesheets and icons, ...), in the text of every inline ``<script>`` and ``<style>``, in ``style``
    attributes, and in ``url()``/``@import`` of every CSS file shipped with the book.

    Args:
        html_dir: the built HTML (``_build/html``).

    Returns:
        Human-readable problems, empty when the book is clean.
    """
    html_dir = Path(html_dir)
    # _static holds theme templates (Jinja, not pages) and _sources the reStructuredText/notebook sources.
    pages = sorted(p for p in html_dir.rglob("*.html")
                   if p.relative_to(html_dir).parts[0] not in ("_static", "_sources"))
    if not pages:
        return [f"{html_dir}: no HTML pages"]
    problems = [problem for page in pages for problem in _page_problems(page, page.relative_to(html_dir))]
    for css in sorted(html_dir.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        problems += _css_problems(text, css, f"{css.relative_to(html_dir)}:")
    return problems


def _page_problems(page: Path, rel: Path) -> list[str]:
    """The problems of one page (see :func:`check_html`), each starting with ``rel``."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(page.read_text(encoding="utf-8", errors="replace"), "html.parser")
    problems = _element_load_problems(soup, page, rel) + _inline_load_problems(soup, page, rel)
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if not _is_remote(href) and not href.startswith(("mailto:", "javascript:")) and not _resolves(page, href):
            problems.append(f"{rel}: link to missing {href}")
    if soup.find(class_=lambda c: c and "traceback" in c.split()) is not None:
        problems.append(f"{rel}: shows a Python traceback")
    if soup.find(id="papermill-error-cell") is not None or "papermill-error-cell" in str(soup):
        problems.append(f"{rel}: contains papermill's error cell (a notebook failed)")
    return problems


def _element_load_problems(soup, page: Path, rel: Path) -> list[str]:
    """Remote or missing targets of the loading attributes (:data:`_LOADING_ATTRS`) of a parsed page."""
    problems = []
    for tag in soup.find_all(list(_LOADING_ATTRS)):
        if tag.name == "link" and not set(tag.get("rel") or []) & _LOADING_RELS:
            continue
        for attr in _LOADING_ATTRS[tag.name]:
            value = tag.get(attr) or ""
            urls = [c.split()[0] for c in re.split(r",\s+", value) if c.strip()] if attr == "srcset" else [value]
            for url in filter(None, (u.strip() for u in urls)):
                if _is_remote(url):
                    problems.append(f"{rel}: <{tag.name}> loads {url} from the network")
                elif not _resolves(page, url):
                    problems.append(f"{rel}: <{tag.name}> points to missing {url}")
    return problems


def _inline_load_problems(soup, page: Path, rel: Path) -> list[str]:
    """Network loads named in inline scripts, inline styles and ``style`` attributes of a parsed page."""
    problems = []
    for script in soup.find_all("script"):
        kind = (script.get("type") or "").split(";")[0].strip().lower()
        if script.get("src") or kind not in _SCRIPT_TYPES:
            continue
        text = script.get_text().replace("\\/", "/")  # JSON-escaped slashes: "https:\/\/cdn..."
        for pattern in _JS_NOT_LOADS:
            text = pattern.sub("", text)
        for url in _JS_URL.findall(text):
            if not url.startswith(_XML_NAMESPACES):
                problems.append(f"{rel}: an inline <script> loads {url} from the network")
    for style in soup.find_all("style"):
        problems += _css_problems(style.get_text(), page, f"{rel}: an inline <style>")
    for tag in soup.find_all(style=True):
        problems += _css_problems(tag["style"], page, f"{rel}: the style attribute of <{tag.name}>")
    return problems


def _css_problems(text: str, base: Path, where: str) -> list[str]:
    """Remote and missing targets of ``url()`` and ``@import`` in CSS ``text``.

    Args:
        text: a stylesheet, an inline ``<style>`` or a ``style`` attribute.
        base: the file relative URLs are resolved against (the CSS file, or the page for inline CSS).
        where: how the problems start (e.g. ``"_static/x.css:"``).

    Returns:
        Human-readable problems.
    """
    text = _CSS_COMMENT.sub("", text)
    urls = [next(g for g in m.groups() if g is not None) for m in _CSS_URL.finditer(text)]
    urls += [next(g for g in m.groups() if g is not None) for m in _CSS_IMPORT.finditer(text)]
    problems = []
    for url in filter(None, (u.strip() for u in urls)):
        if _is_remote(url):
            problems.append(f"{where} loads {url} from the network")
        elif not _resolves(base, url):
            problems.append(f"{where} points to missing {url}")
    return problems


def _is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://", "//", "ftp://", "ws://", "wss://"))


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
