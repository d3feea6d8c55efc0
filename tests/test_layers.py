"""The package's layering (../shared/DESIGN.md, README "The library"), checked on every import in the source.

Each layer imports only from layers strictly below it or from itself; lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prosocial_lib"

#: Bottom to top. A module's layer is its first path part under prosocial_lib (``runs.py`` -> "runs").
LAYERS: list[set[str]] = [
    {"config", "runs", "data"},
    {"modeling", "groups"},
    {"train"},
    {"eval", "bench"},
    {"report"},
    {"book", "cli"},
]
#: Same-level parts that may import each other in one direction only (importer -> imported).
SAME_LEVEL = {("bench", "eval"), ("groups", "modeling"), ("cli", "book")}


def _level(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"prosocial_lib/{part} is in no layer: add it to LAYERS and to DESIGN.md")


def _imports(path: Path):
    """(line, imported top-level part) for every import of the package in ``path``."""
    rel = path.relative_to(PACKAGE)
    pkg = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # "from .. import x" at the package root
                    parts = [a.name for a in node.names]
                    for name in parts:
                        yield node.lineno, name
                    continue
            elif node.module and node.module.split(".")[0] == "prosocial_lib":
                parts = node.module.split(".")[1:] or [a.name for a in node.names]
            else:
                continue
            yield node.lineno, parts[0]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("prosocial_lib."):
                    yield node.lineno, a.name.split(".")[1]


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    me = _part(path)
    bad = []
    for line, other in _imports(path):
        other = other.removesuffix(".py")
        if other == me or (me, other) in SAME_LEVEL:
            continue
        if _level(other) >= _level(me):
            bad.append(f"line {line}: {me} (layer {_level(me)}) imports {other} (layer {_level(other)})")
    assert not bad, f"{path.relative_to(PACKAGE)}:\n  " + "\n  ".join(bad)


def test_every_part_has_a_layer():
    parts = {_part(p) for p in MODULES}
    assert parts <= set().union(*LAYERS), parts - set().union(*LAYERS)
