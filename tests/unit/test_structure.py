"""The code's shape, as docs/architecture.md states it: one role per file, said in its first comment; no file
over 500 lines; the Rust modules import each other without a cycle, and nothing below core.rs imports it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUST = ROOT / "rust" / "src"
PYTHON = ROOT / "python" / "forge"
MAX_LINES = 500

_CRATE_PATH = re.compile(r"\bcrate::(\w+)")
_CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def rust_imports(text: str) -> set[str]:
    """The crate modules a Rust file names (`crate::x`, `crate::{x, y::z}`)."""
    names = set(_CRATE_PATH.findall(text))
    for group in _CRATE_GROUP.findall(text):
        names.update(part.strip().split("::")[0] for part in group.split(",") if part.strip())
    return names


def rust_graph() -> dict[str, set[str]]:
    """module -> the modules it imports, for every module below lib.rs (the crate root)."""
    modules = {path.stem: path for path in RUST.glob("*.rs") if path.stem != "lib"}
    return {name: rust_imports(path.read_text()) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"core": {"db"}, "db": {"tasks"}, "tasks": {"core"}}) == ["core", "db", "tasks", "core"]
    assert find_cycle({"core": {"db", "shared"}, "db": {"shared"}, "shared": set()}) is None
    assert rust_imports("use crate::{db::Db, shared::{lock, Shared}};\nuse crate::sql;") >= {"db", "shared", "sql"}


def test_the_rust_modules_import_each_other_without_a_cycle():
    graph = rust_graph()
    assert {"core", "db", "producer", "reporter", "heartbeat", "maintenance"} <= set(graph)
    assert find_cycle(graph) is None


def test_nothing_below_core_imports_it():
    assert [name for name, imports in rust_graph().items() if "core" in imports] == []


def _sources() -> list[Path]:
    return sorted([*RUST.glob("*.rs"), *PYTHON.rglob("*.py"), *PYTHON.rglob("*.pyi")])


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_is_over_500_lines(path: Path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def first_comment(path: Path) -> str:
    """The text of a file's first comment: a Rust `//!` block, a Python module docstring, a leading SQL comment."""
    text = path.read_text()
    if path.suffix == ".rs":
        lines = [line[3:].strip() for line in text.splitlines() if line.startswith("//!")]
        return " ".join(lines) if text.startswith("//!") else ""
    if path.suffix == ".sql":
        return text.split("\n", 1)[0].removeprefix("--").strip() if text.startswith("--") else ""
    return ast.get_docstring(ast.parse(text)) or ""


@pytest.mark.parametrize("path", [*_sources(), *sorted(PYTHON.rglob("*.sql"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_starts_by_saying_its_role(path: Path):
    assert len(first_comment(path).split()) >= 4, f"{path} has no first comment saying what it is for"
