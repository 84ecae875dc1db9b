"""Data walks one way: the import graph between Vivix's packages has no cycles.

Imports under `if TYPE_CHECKING:` are annotations only and do not count (domain code
names the composition root's `Runtime` type that way). The composition root (`runtime`,
`app`, `cli`) may import anything; nothing below it imports it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import vivix

SOURCE = Path(vivix.__file__).parent
COMPOSITION_ROOT = {"runtime", "app", "cli", "__main__"}


def package_imports() -> dict[str, set[str]]:
    """Top-level package (or root module) → the ones it imports at run time."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SOURCE.rglob("*.py"):
        source = path.relative_to(SOURCE).parts[0].removesuffix(".py")
        pending: list[ast.AST] = [ast.parse(path.read_text("utf-8"))]
        while pending:
            node = pending.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                names: list[str] = []
                if isinstance(child, ast.ImportFrom) and child.module:
                    names = [child.module]
                elif isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "vivix" and len(parts) > 1 and parts[1] != source:
                        edges[source].add(parts[1])
                pending.append(child)
    return edges


def test_no_package_imports_the_composition_root() -> None:
    edges = package_imports()
    offenders = {
        source: targets & COMPOSITION_ROOT
        for source, targets in edges.items()
        if source not in COMPOSITION_ROOT and targets & COMPOSITION_ROOT
    }
    assert offenders == {}


def test_the_package_graph_has_no_cycles() -> None:
    edges = package_imports()
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        assert package not in path, " → ".join([*path, package])
        if package in done:
            return
        for target in sorted(edges.get(package, ())):
            visit(target, [*path, package])
        done.add(package)

    for package in sorted(edges):
        visit(package, [])


def test_money_is_written_only_by_the_ledger() -> None:
    """No module but `billing/ledger.py` names the ledger table or the account's money
    columns in a write."""
    writers = []
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        if relative == "billing/ledger.py" or relative.startswith(("migrations/", "models/")):
            continue
        text = path.read_text("utf-8")
        for pattern in ("LedgerEntry(", "insert(LedgerEntry", 'tables["ledger_entries"]'):
            if pattern in text:
                writers.append(f"{relative}: {pattern}")
        for column in ("balance", "held", "active_jobs", "spent_this_cycle"):
            for write in (f".{column} +=", f".{column} -=", f"{column}=Account."):
                if write in text:
                    writers.append(f"{relative}: {write}")
    assert writers == []
