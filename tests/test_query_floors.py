"""The query plane's floor: ``freshindex.query`` imports only contracts, settings, storage and
models (floors 1-2), never the transforms, pipelines or operator commands above it. Every
import counts, including one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import freshindex.query

QUERY_DIR = Path(freshindex.query.__file__).parent
ALLOWED = (
    "freshindex.query",
    "freshindex.schemas",
    "freshindex.errors",
    "freshindex.config",
    "freshindex.settings",
    "freshindex.runtime",
    "freshindex.store",
    "freshindex.embedding",
    "freshindex.observability",
)


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "freshindex":
                names += [f"freshindex.{a.name}" for a in node.names]
            else:
                names.append(node.module)
    return [n for n in names if n == "freshindex" or n.startswith("freshindex.")]


def test_the_query_plane_imports_only_the_floors_below_it():
    wrong = []
    for path in sorted(QUERY_DIR.rglob("*.py")):
        rel = path.relative_to(QUERY_DIR).as_posix()
        for name in _imports(path):
            ok = any(name == a or name.startswith(a + ".") for a in ALLOWED)
            if not ok:
                wrong.append(f"{rel}: {name}")
    assert wrong == []


def test_no_query_module_is_long_without_saying_why():
    for path in QUERY_DIR.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 420:
            head = text.split('"""', 2)[1] if text.startswith('"""') else ""
            assert "Why" in head, f"{path.name}: over ~400 lines without a reason at its top"
