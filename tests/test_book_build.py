"""A book build that cannot silently run the wrong thing (issue #16, book build part).

- kernel binding: the chapters run in the interpreter (and the copy of ``prosocial_lib``) that runs the build, or
  the build stops before executing with an error naming the kernelspec;
- the parameters cell: a chapter whose ``preset`` would not be the one asked for is refused before executing, and
  every run is checked afterwards for the preset it really ran with;
- the offline HTML check: remote URLs in inline scripts, inline styles, style attributes and CSS files count.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from prosocial_lib.book.builder import execute_notebooks, stage
from prosocial_lib.book.html_check import check_html
from prosocial_lib.book.kernel import LIBRARY_ROOT, PROBE_CELL_ID, BookBuildError, bound_kernel, ran_with_problems
from prosocial_lib.book.notebook import assigned_names, parameters_problems

QUIET = {"log": lambda *_: None}


# ------------------------------------------------------------------ helpers
def _chapter(*cells: str, tagged: int | None = 0):
    """A notebook of code cells; the cell at index ``tagged`` is tagged ``parameters`` (None: no tag)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    if tagged is not None:
        nb.cells[tagged].metadata["tags"] = ["parameters"]
    return nb


def _book(tmp_path: Path, nb) -> Path:
    """A one-chapter book (``book/ch1.ipynb``) like the cases under shared/cases."""
    root = tmp_path / "book_root"
    (root / "book").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/ch1\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    nbformat.write(nb, root / "book" / "ch1.ipynb")
    return root


def _execute(tmp_path: Path, nb, preset: str = "smoke"):
    """Stage and execute a one-chapter book; return its runs and the texts its executed copy printed."""
    root = _book(tmp_path, nb)
    staging = stage(root, tmp_path / "staging")
    runs = execute_notebooks(root, staging, preset, timeout=120, **QUIET)
    out = nbformat.read(staging / "book" / "ch1.ipynb", as_version=4)
    texts = [o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs]
    return runs, texts, out


def _kernelspec(folder: Path, argv0: str, env: dict | None = None) -> Path:
    """A ``python3`` kernelspec for ``argv0`` under ``folder/kernels`` (what JUPYTER_PATH would point to)."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    kernel = {"argv": [argv0, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
              "display_name": "Python 3 (old install)", "language": "python", **({"env": env} if env else {})}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return folder


# ------------------------------------------------------------------ kernel binding
def _old_library(tmp_path: Path) -> dict:
    """An interpreter that works but imports an older ``prosocial_lib`` (the silent variant of the case)."""
    old = tmp_path / "old_site" / "prosocial_lib"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("OLD = True\n")
    return {"argv0": sys.executable, "env": {"PYTHONPATH": str(old.parent)}}


@pytest.mark.book
@pytest.mark.parametrize("other", ["missing_interpreter", "older_library"])
def test_chapters_run_in_the_build_interpreter_whatever_python3_kernelspec_jupyter_finds(tmp_path, monkeypatch,
                                                                                        other):
    """Case kernel-binding: a python3 kernelspec for another interpreter on JUPYTER_PATH is not used.

    ``missing_interpreter`` is the case (the kernel died); ``older_library`` is the silent variant: a working
    interpreter that would import another prosocial_lib.
    """
    kind = {"argv0": str(tmp_path / "old-env" / "bin" / "python3")} if other == "missing_interpreter" \
        else _old_library(tmp_path)
    jupyter_path = str(_kernelspec(tmp_path / "jupyter_path", **kind))
    monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
    nb = _chapter('preset = "cpu"', "import sys, prosocial_lib\nprint(sys.executable, preset)\n"
                                    "print(prosocial_lib.__file__, hasattr(prosocial_lib, 'OLD'))")
    runs, texts, out = _execute(tmp_path, nb)
    assert [r.ok for r in runs] == [True], runs
    assert out.metadata.kernelspec.name == "python3"  # readers who download the notebook get the usual kernel
    assert out.metadata.papermill.input_path == str(tmp_path / "book_root" / "book" / "ch1.ipynb")
    assert "".join(texts) == f"{sys.executable} smoke\n{LIBRARY_ROOT / 'prosocial_lib' / '__init__.py'} False\n"
    assert os.environ["JUPYTER_PATH"] == jupyter_path  # the private kernelspec folder is gone from the environment


def test_the_build_stops_before_executing_when_jupyter_resolves_another_kernelspec(tmp_path, monkeypatch):
    """When the binding is defeated (here: Jupyter looks only in one fixed folder), the error names the spec."""
    other = _kernelspec(tmp_path / "fixed", "/usr/bin/python3")
    monkeypatch.setattr("jupyter_client.kernelspec.jupyter_path", lambda *sub: [str(other.joinpath(*sub))])
    with pytest.raises(BookBuildError, match=r"resolves the kernel 'python3' to .*fixed.*runs /usr/bin/python3"):
        bound_kernel(tmp_path / "private")
    # execute_notebooks raises it before running any chapter, and restores the environment
    before = dict(os.environ)
    with pytest.raises(BookBuildError, match="resolves the kernel"):
        execute_notebooks(_book(tmp_path, _chapter('preset = "cpu"')), tmp_path / "staging", "smoke", **QUIET)
    assert dict(os.environ) == before


def test_the_build_stops_when_ipykernel_is_missing_from_its_interpreter(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ipykernel"
                        else real(name, *a))
    with pytest.raises(BookBuildError, match=f"ipykernel is not installed for {sys.executable}"):
        bound_kernel(tmp_path)


def test_the_bound_kernelspec_runs_this_interpreter_and_library(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jp", "/usr/bin/python3")))
    spec = json.loads((bound_kernel(tmp_path / "private") / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    assert os.environ["JUPYTER_PATH"].split(os.pathsep) == [str(tmp_path / "private"), str(tmp_path / "jp")]
    if "env" in spec:  # a checkout (not site-packages): the chapters import this copy first
        assert spec["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(LIBRARY_ROOT)


@pytest.mark.parametrize("field,value,problem", [
    ("executable", "/usr/bin/python3", "it ran in /usr/bin/python3"),
    ("library", "/old/site-packages/prosocial_lib/__init__.py", "imported prosocial_lib from /old/site-packages"),
    ("library", None, "imported prosocial_lib from None"),
    ("preset", "'cpu'", "ran with preset 'cpu' although the build asked for 'smoke'"),
])
def test_a_run_reporting_another_interpreter_library_or_preset_fails(field, value, problem):
    good = {"preset": "'smoke'", "executable": sys.executable,
            "library": str(LIBRARY_ROOT / "prosocial_lib" / "__init__.py")}
    assert ran_with_problems(good, "smoke") == []
    problems = ran_with_problems({**good, field: value}, "smoke")
    assert len(problems) == 1 and problem in problems[0], problems
    assert "did not report" in ran_with_problems(None, "smoke")[0]


# ------------------------------------------------------------------ the parameters cell
@pytest.mark.parametrize("cells,tagged,problem", [
    (['preset = "cpu"', 'print("running with preset", preset)'], None, "no cell is tagged 'parameters'"),  # case
    (['preset = "cpu"', 'preset = "cpu"  # pasted again'], 0, "cell 2 sets preset again"),
    (['preset = "cpu"', 'for preset in ["cpu"]:\n    pass'], 0, "cell 2 sets preset again"),
    (['preset = "cpu"', "from prosocial_lib.config import cpu as preset"], 0, "cell 2 sets preset again"),
    (['preset = "cpu"', "if True:\n    preset, seed = 'cpu', 0"], 0, "cell 2 sets preset again"),
    (['seed = 0', 'print(preset)'], 0, "(cell 1) does not set preset"),
    (['preset = "cpu"', 'seed = 0'], 0, None),
])
def test_parameters_problems(cells, tagged, problem):
    problems = parameters_problems(_chapter(*cells, tagged=tagged))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_two_parameters_cells_are_refused():
    nb = _chapter('preset = "cpu"', 'print(preset)', 'preset = "gpu"')
    nb.cells[2].metadata["tags"] = ["parameters"]
    problems = parameters_problems(nb)
    assert any("2 cells are tagged 'parameters' (cells 1, 3)" in p for p in problems), problems


def test_reading_preset_or_binding_it_locally_is_fine():
    nb = _chapter('preset = "cpu"', '!pip install -q x\n%time y = 1',
                  'def f(preset="gpu"):\n    preset = preset.upper()\n    return preset',
                  'names = [preset for preset in "ab"]\nif preset == "cpu":\n    print(preset)',
                  'g = lambda preset: preset')
    assert parameters_problems(nb) == []
    assert assigned_names("import a.b\nx: int = 1\nwith open('f') as fh:\n    pass") == {"a", "x", "fh"}


def test_every_chapter_of_the_book_keeps_the_injected_preset(repo_root):
    for path in sorted((repo_root / "book").glob("*.ipynb")):
        assert parameters_problems(nbformat.read(path, as_version=4)) == [], path.name


def test_a_chapter_without_a_parameters_cell_is_refused_before_executing(tmp_path):
    """Case parameters-cell: refused (ok=False) with the reason, and nothing executed."""
    runs, texts, _ = _execute(tmp_path, _chapter('preset = "cpu"', 'print("running with preset", preset)',
                                                 tagged=None))
    assert len(runs) == 1 and not runs[0].ok and runs[0].notebook == "book/ch1.ipynb"
    assert runs[0].error.startswith("refused before executing: no cell is tagged 'parameters'")
    assert texts == []


@pytest.mark.book
def test_a_chapter_that_resets_preset_at_run_time_fails_after_executing(tmp_path):
    """A reassignment no reader of the cells sees: the run itself reports the preset it ended with."""
    nb = _chapter('preset = "cpu"', 'globals()["preset"] = "cpu"', 'print("running with preset", preset)')
    assert parameters_problems(nb) == []
    runs, texts, out = _execute(tmp_path, nb)
    assert not runs[0].ok and "ran with preset 'cpu' although the build asked for 'smoke'" in runs[0].error
    assert "".join(texts) == "running with preset cpu\n"
    assert all(c.get("id") != PROBE_CELL_ID for c in out.cells)  # the probe never stays in the staged copy


# ------------------------------------------------------------------ offline HTML check
def _site(tmp_path: Path, body: str, head: str = "", files: dict | None = None) -> Path:
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "index.html").write_text(f"<html><head>{head}</head><body>{body}</body></html>")
    return tmp_path


VEGA = ('<div id="vis"></div><script type="text/javascript">requirejs.config({paths: {"vega-embed": '
        '"https://cdn.jsdelivr.net/npm/vega-embed@6?noext"}});require(["vega-embed"], function(v) {});</script>')
THEME = '<link rel="stylesheet" href="_static/theme.css">'
FONT = "<style>@font-face{font-family:X;src:url(https://fonts.gstatic.com/s/x.woff2)}</style>"


@pytest.mark.parametrize("head,body,files,problem", [
    # the three pages of case html-inline-loads
    ("", '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js"></script>', None,
     "index.html: <script> loads https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js"),
    ("", VEGA, None, "index.html: an inline <script> loads https://cdn.jsdelivr.net/npm/vega-embed@6?noext"),
    (FONT, "ok", None, "index.html: an inline <style> loads https://fonts.gstatic.com/s/x.woff2"),
    # more of the same class
    ("", "<script type='module'>import embed from '//esm.sh/vega-embed';</script>", None,
     "an inline <script> loads //esm.sh/vega-embed"),
    ("", '<script>var cfg = {"js_files": ["https:\\/\\/cdn.bokeh.org\\/bokeh.min.js"]};</script>', None,
     "an inline <script> loads https://cdn.bokeh.org/bokeh.min.js"),
    ("", "<script>fetch(`https://api.example.org/data.json`)</script>", None,
     "an inline <script> loads https://api.example.org/data.json"),
    ("<style>@import 'https://fonts.googleapis.com/css?family=Roboto';</style>", "", None,
     "an inline <style> loads https://fonts.googleapis.com/css?family=Roboto"),
    ("", '<div style="background: url(\'http://example.org/bg.png\')">x</div>', None,
     "the style attribute of <div> loads http://example.org/bg.png"),
    ("", '<img src="a.png" srcset="a.png 1x, https://example.org/a@2x.png 2x">', {"a.png": ""},
     "<img> loads https://example.org/a@2x.png"),
    ("", '<svg><image href="https://example.org/logo.png"/></svg>', None,
     "<image> loads https://example.org/logo.png"),
    ('<link rel="preload" as="font" href="https://example.org/f.woff2">', "", None,
     "<link> loads https://example.org/f.woff2"),
    (THEME, "", {"_static/theme.css": "@import url(\"https://e.org/x.css\");"},
     "_static/theme.css: loads https://e.org/x.css"),
    (THEME, "", {"_static/theme.css": "a{background:url( //e.org/i.svg )}"}, "_static/theme.css: loads //e.org/i.svg"),
    (THEME, "", {"_static/theme.css": "@font-face{src:url(fonts/x.woff2)}"},
     "_static/theme.css: points to missing fonts/x.woff2"),
])
def test_network_loads_anywhere_in_a_page_are_found(tmp_path, head, body, files, problem):
    problems = check_html(_site(tmp_path, body, head, files))
    assert len(problems) == 1 and problem in problems[0], problems


def test_urls_that_are_not_loaded_as_the_page_opens_pass(tmp_path):
    head = ('<link rel="stylesheet" href="_static/theme.css"><style>/* from https://example.org/ */ '
            'a{background:url("data:image/svg+xml;charset=utf-8,%3Csvg xmlns=\'http://www.w3.org/2000/svg\'%3E")}'
            '</style>')
    body = ('<script>// see https://example.org/docs\nvar s = document.createElementNS("http://www.w3.org/2000/svg",'
            ' "svg"); if (u.startsWith("https://")) {}</script>'
            '<script>const THEBE_JS_URL = "https://unpkg.com/thebe@0.8.2/lib/index.js"; const x = ".thebe";</script>'
            '<script type="application/ld+json">{"@context": "https://schema.org"}</script>'
            '<a href="https://example.org/paper.pdf">paper</a><div style="color: red">x</div>')
    files = {"_static/theme.css": "@import '../basic.css'; i{src:url(../fonts/x.woff2)}", "basic.css": "",
             "fonts/x.woff2": ""}
    assert check_html(_site(tmp_path, body, head, files)) == []
