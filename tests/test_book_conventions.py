"""Every chapter keeps its plumbing out of the HTML (setup, parameters, imports and glue cells are tagged).

Run ``python tools/tag_notebooks.py`` to fix a notebook this test rejects.
"""

from pathlib import Path

import nbformat
import pytest

from prosocial_lib.book.builder import hide_injected_parameters
from prosocial_lib.book.notebook import (
    REMOVE_CELL,
    REMOVE_INPUT,
    SETUP_CELL,
    plumbing_kinds,
    plumbing_problems,
    split_glue,
    tag_plumbing,
)

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
# Chapter 04's opening and comparison are being rewritten on another branch; its cells are tagged, and its glue
# statements move out of the shown cells (tools/tag_notebooks.py) once that work has landed.
GLUE_STILL_MIXED: set[str] = set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_plumbing_cell_is_hidden_in_the_html(path):
    nb = nbformat.read(path, as_version=4)
    problems = plumbing_problems(nb)
    if path.stem in GLUE_STILL_MIXED:
        problems = [p for p in problems if "mixes glue" not in p]
    assert problems == [], f"{path.name}: {problems} (run tools/tag_notebooks.py)"
    kinds = plumbing_kinds(nb)
    assert sorted(set(kinds.values()) - {"glue"}) == ["imports", "parameters", "setup"], kinds


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_has_an_id(path):
    nb = nbformat.read(path, as_version=4)
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids)


def _nb(*sources: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells[1].metadata["tags"] = ["parameters"]
    return nb


def test_tag_plumbing_splits_glue_out_and_is_idempotent():
    nb = _nb(SETUP_CELL, 'preset = "cpu"', "import pandas as pd\nfrom x import glue",
             'df = pd.DataFrame({"a": [1]})\nglue("n", len(df))\ndf', 'glue("m", 2.0)')
    assert tag_plumbing(nb) > 0
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert [c.source for c in nb.cells[3:]] == ['df = pd.DataFrame({"a": [1]})\ndf', 'glue("n", len(df))',
                                                'glue("m", 2.0)']
    assert REMOVE_CELL in tags[0] and REMOVE_CELL in tags[1] and REMOVE_INPUT in tags[2]
    assert tags[3] == [] and tags[4] == [REMOVE_CELL] and tags[5] == [REMOVE_CELL]
    assert nb.cells[4].id == nb.cells[3].id + "-glue"
    assert plumbing_problems(nb) == []
    before = nbformat.writes(nb)
    assert tag_plumbing(nb) == 0 and nbformat.writes(nb) == before


def test_a_new_mixed_cell_is_reported():
    nb = _nb(SETUP_CELL, 'preset = "cpu"', "import x")
    nb.cells.append(nbformat.v4.new_code_cell('glue("n", 3)\nshow(n)'))
    for i in (0, 1, 2):
        nb.cells[i].metadata.setdefault("tags", []).append(REMOVE_CELL)
    assert any("mixes glue" in p for p in plumbing_problems(nb))


@pytest.mark.parametrize("source", [
    'value = glue("n", 3)\nprint(value)',  # the rest reads what the glue line binds
    'glue("n", len(df))\ndf = df.head()',  # the glue line reads what the rest rebinds
])
def test_glue_that_the_rest_depends_on_stays(source):
    assert split_glue(source) is None


def test_papermill_injected_parameters_are_hidden():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('preset = "smoke"')]
    nb.cells[0].metadata["tags"] = ["injected-parameters"]
    hide_injected_parameters(nb)
    assert nb.cells[0].metadata["tags"] == ["injected-parameters", REMOVE_CELL]
