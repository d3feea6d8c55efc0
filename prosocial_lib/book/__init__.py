"""The book itself: the papermill + Jupyter Book builder, notebook conventions, the student edition, the course guide.

Layer: top (beside ``cli``). The builder's entry points are re-exported here: ``build_book`` (what ``make book`` and
``prosocial book`` run), ``execute_notebooks``, ``stage`` and ``check_html``.
"""

from .builder import NotebookRun, build_book, execute_notebooks, stage
from .html_check import check_html
from .kernel import BookBuildError

__all__ = ["BookBuildError", "NotebookRun", "build_book", "check_html", "execute_notebooks", "stage"]
