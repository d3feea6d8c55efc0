"""The book pipeline: papermill execution, Jupyter Book build, and the HTML check that gates them."""

import html as html_lib
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from prosocial_lib.book.builder import build_book
from prosocial_lib.book.html_check import check_html
from prosocial_lib.book.kernel import BookBuildError
from prosocial_lib.book.notebook import SETUP_CELL, tag_plumbing


# ------------------------------------------------------------------ check_html on hand-made pages
def _page(tmp_path: Path, body: str, name: str = "index.html") -> Path:
    (tmp_path / name).write_text(f"<html><head></head><body>{body}</body></html>")
    return tmp_path


def test_clean_page_passes(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.html").write_text("<html></html>")
    _page(tmp_path, '<img src="img.png"><a href="other.html#sec">x</a><a href="https://example.org">ext</a>'
                    '<a href="#top">top</a><script src="_static/x.js" hidden></script>')
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "x.js").write_text("")
    assert check_html(tmp_path) == []


@pytest.mark.parametrize("body,problem", [
    ('<script src="https://cdn.example.org/mathjax.js"></script>', "loads https://cdn.example.org"),
    ('<link rel="stylesheet" href="//fonts.example.org/a.css">', "loads //fonts.example.org"),
    ('<img src="missing.png">', "points to missing missing.png"),
    ('<a href="nowhere.html">x</a>', "link to missing nowhere.html"),
    ('<div class="output traceback highlight-ipythontb">Traceback</div>', "traceback"),
    ('<span id="papermill-error-cell"></span>', "papermill's error cell"),
])
def test_each_problem_is_found(tmp_path, body, problem):
    problems = check_html(_page(tmp_path, body))
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize("body,problem", [
    ("<main><p>wrote /tmp/book-runs/smoke/data/summary.json</p></main>", "a path under /tmp/"),
    ("<main><pre>/usr/lib/python3/site-packages/x.py:3</pre></main>", "installed packages"),
    ("<main><pre>tasks.py:244: DataSkipWarning: skipped 28 empty turns</pre></main>", "a library warning"),
    ("<main><pre>stage 1: reusing the finished checkpoint in runs/x</pre></main>", "log line"),
    ("<main><table><tr><td>embedded</td></tr></table></main>", "internal key 'embedded'"),
    ('<main><div class="output stderr"><pre>stage 2: training it again</pre></div></main>', "stderr"),
])
def test_leaks_of_the_build_machine_and_internals_are_found(tmp_path, body, problem):
    problems = check_html(_page(tmp_path, body))
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_builds_own_paths_are_forbidden(tmp_path):
    page = _page(tmp_path, "<main><p>run folder srv/build-7/runs/smoke</p><script>var p = 'srv/build-7';</script>"
                           "</main>")
    assert check_html(page) == []
    problems = check_html(page, forbidden=["srv/build-7"])
    assert len(problems) == 1 and "a path of the build machine" in problems[0]  # text only, not the script


def test_prose_about_warnings_and_sample_data_is_not_a_leak(tmp_path):
    body = ("<main><p>The embedded sample is written for this book; a warning is shown in chapter 00.</p>"
            "<table><tr><td>SmolLM2-135M-Instruct</td></tr></table></main>")
    assert check_html(_page(tmp_path, body)) == []


def test_external_links_are_not_loads(tmp_path):
    assert check_html(_page(tmp_path, '<link rel="canonical" href="https://example.org/">')) == []


# ------------------------------------------------------------------ a temporary book
def _notebook(title: str, cells: list[str]):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('preset = "cpu"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), nbformat.v4.new_code_cell(SETUP_CELL), params]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    tag_plumbing(nb)  # the setup and parameters cells are hidden, as in every chapter
    return nb


def _temp_book(tmp_path: Path, repo_root: Path, cells: list[str], guide: list[str] | None = None) -> Path:
    """A one-chapter book; with ``guide``, a page listed before the chapter that executes last."""
    root = tmp_path / "book_root"
    (root / "book").mkdir(parents=True)
    for name in ("_config.yml", "references.bib", "_static"):
        src = repo_root / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    files = ["book/guide", "book/chapter"] if guide is not None else ["book/chapter"]
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   + "".join(f"  - file: {f}\n" for f in files))
    (root / "book" / "intro.md").write_text("# Intro\n\nMath: $a^2 + b^2 = c^2$, see {doc}`chapter`.\n")
    nbformat.write(_notebook("Chapter", cells), root / "book" / "chapter.ipynb")
    if guide is not None:
        nb = _notebook("Guide", guide)
        nb.metadata["prosocial"] = {"execute_last": True}
        nbformat.write(nb, root / "book" / "guide.ipynb")
    return root


@pytest.mark.book
def test_a_passing_notebook_builds_clean(tmp_path, repo_root):
    guide = ["import json, os\n"
             "seen = json.load(open(os.environ['PROSOCIAL_BOOK_REPORT']))['notebooks']\n"
             "print('the guide saw', [n['notebook'] for n in seen])"]
    root = _temp_book(tmp_path, repo_root, ["print('preset is', preset)"], guide=guide)
    index = build_book("smoke", root=root, out=tmp_path / "out", runs_dir=tmp_path / "runs", log=lambda *_: None)
    html = (index.parent / "book" / "chapter.html").read_text()
    assert "preset is smoke" in html  # papermill injected the parameter and the output was rendered
    assert (index.parent / "_static" / "mathjax" / "tex-mml-chtml.js").exists()
    report = json.loads((tmp_path / "out" / "_build" / "execution-report-smoke.json").read_text())
    assert report["html_problems"] == [] and all(n["ok"] for n in report["notebooks"])
    # the guide is listed first but runs last, reading the report of the chapters run before it
    assert [n["notebook"] for n in report["notebooks"]] == ["book/chapter.ipynb", "book/guide.ipynb"]
    guide_html = html_lib.unescape((index.parent / "book" / "guide.html").read_text())
    assert "the guide saw ['book/chapter.ipynb']" in guide_html
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["date"]


@pytest.mark.book
def test_a_failing_cell_fails_the_build(tmp_path, repo_root):
    root = _temp_book(tmp_path, repo_root, ["x = 1", "raise RuntimeError('deliberate failure')", "print('never')"])
    with pytest.raises(BookBuildError, match="book/chapter.ipynb failed.*deliberate failure"):
        build_book("smoke", root=root, out=tmp_path / "out", runs_dir=tmp_path / "runs", log=lambda *_: None)
    # Jupyter Book alone would have rendered the failure with exit 0: the HTML check catches it as well.
    problems = check_html(tmp_path / "out" / "_build" / "html")
    assert any("traceback" in p for p in problems) and any("papermill" in p for p in problems), problems


@pytest.mark.book
@pytest.mark.slow
def test_the_whole_book_in_the_smoke_preset(tmp_path, repo_root):
    """Every chapter executes with papermill (smoke preset), the HTML builds with -W and passes the check."""
    index = build_book("smoke", root=repo_root, out=tmp_path / "out", runs_dir=tmp_path / "runs")
    assert index.exists()
    report = json.loads((tmp_path / "out" / "_build" / "execution-report-smoke.json").read_text())
    print("\n".join(f"{n['notebook']}: {n['seconds']:.1f} s" for n in report["notebooks"]))
    assert all(n["ok"] for n in report["notebooks"]) and report["html_problems"] == []
    # every exercise renders as an exercise with its solution collapsed (sphinx-exercise, dropdown)
    for path in (repo_root / "book").glob("*.ipynb"):
        exercises = sum("```{exercise}" in c.source for c in nbformat.read(path, as_version=4).cells)
        page = (index.parent / "book" / f"{path.stem}.html").read_text()
        assert page.count('class="exercise admonition') == exercises, path.name
        assert page.count('class="solution dropdown admonition') == exercises, path.name


def test_student_edition_removes_solutions_and_keeps_exercises(tmp_path, repo_root):
    from prosocial_lib.book.student import student_edition

    root = _temp_book(tmp_path, repo_root, ["answer = 42"])
    path = root / "book" / "chapter.ipynb"
    nb = nbformat.read(path, as_version=4)
    exercise = nbformat.v4.new_markdown_cell(":::{exercise}\n:label: ex-one\nCompute the answer.\n:::")
    solution = [nbformat.v4.new_markdown_cell("```{solution-start} ex-one\n:class: dropdown\n```"),
                nbformat.v4.new_code_cell("print(6 * 7)"),
                nbformat.v4.new_markdown_cell("```{solution-end}\n```")]
    for cell in solution:
        cell.metadata["tags"] = ["solution"]
    nb.cells += [exercise, *solution]
    nbformat.write(nb, path)
    written = student_edition(root, tmp_path / "student")
    assert [p.name for p in written] == ["chapter.ipynb"]
    cells = nbformat.read(written[0], as_version=4).cells
    assert not any("solution" in c.metadata.get("tags", []) or "solution-" in c.source for c in cells)
    assert any("{exercise}" in c.source for c in cells) and any(c.source == "answer = 42" for c in cells)
    assert (tmp_path / "student" / "book" / "intro.md").exists()


@pytest.mark.book
def test_widget_outputs_are_stripped_so_the_book_stays_offline(tmp_path, repo_root):
    cell = ("from IPython.display import display\n"
            "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'x', 'version_major': 2,"
            " 'version_minor': 0}, 'text/plain': 'bar'}, raw=True)\nprint('after the widget')")
    root = _temp_book(tmp_path, repo_root, [cell])
    index = build_book("smoke", root=root, out=tmp_path / "out", runs_dir=tmp_path / "runs", log=lambda *_: None)
    staged = nbformat.read(tmp_path / "out" / "_build" / "staging" / "book" / "chapter.ipynb", as_version=4)
    outputs = [o for c in staged.cells if c.cell_type == "code" for o in c.outputs]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert "after the widget" in (index.parent / "book" / "chapter.html").read_text()


@pytest.mark.book
def test_the_reply_explorer_renders_offline_with_its_downloads(tmp_path, repo_root):
    """Chapter 04's explorer: the interactive table and its JavaScript are in the built page, nothing is loaded
    from the network, and the run's files are linked as downloads."""
    pytest.importorskip("itables")
    cell = ("import pandas as pd\nfrom pathlib import Path\nfrom IPython.display import HTML, display\n"
            "from prosocial_lib.report.explorer import copy_downloads, explorer_frame, explorer_html\n"
            "replies = pd.DataFrame({'context_set': ['casual'], 'context': ['Nice day!'], 'system': ['base'],\n"
            "                        'reply': ['It is, and the explorer shows it in full.'], 'sample': [0]})\n"
            "Path('run').mkdir(exist_ok=True)\nreplies.to_json('run/replies.jsonl', orient='records', lines=True)\n"
            "display(HTML(explorer_html(explorer_frame(replies))))\n"
            "copies = copy_downloads('run', 'downloads', prefix='evaluation-')")
    root = _temp_book(tmp_path, repo_root, ["x = 1", cell])
    path = root / "book" / "chapter.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("{download}`every reply <downloads/evaluation-replies.jsonl>`"))
    nbformat.write(nb, path)
    index = build_book("smoke", root=root, out=tmp_path / "out", runs_dir=tmp_path / "runs", log=lambda *_: None)
    page = (index.parent / "book" / "chapter.html").read_text()
    assert "window._itables_2_9_1" in page and "the explorer shows it in full." in page
    assert "evaluation-replies.jsonl" in page and list((index.parent / "_downloads").rglob("evaluation-replies.jsonl"))
    assert check_html(index.parent) == []


@pytest.mark.book
def test_a_chapter_that_prints_a_path_of_the_build_fails_the_check(tmp_path, repo_root):
    root = _temp_book(tmp_path, repo_root, ["x = 1", "import os\nprint('running in', os.getcwd())"])
    with pytest.raises(BookBuildError, match="a path of the build machine"):
        build_book("smoke", root=root, out=tmp_path / "out", runs_dir=tmp_path / "runs", log=lambda *_: None)
