"""The package's import rules (docs/architecture.md, "Layers"), enforced on its source.

Every import counts: at module level and inside functions, and what it reaches transitively,
so a rule cannot be kept by moving an import into a function or by going through a third
module. Read from the source with ``ast`` (nothing is imported or run), so it takes
milliseconds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "confusion_exporter"
ROOT = Path(__file__).resolve().parents[1] / "exporter" / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports, anywhere in its body: package modules by their full name,
    third-party ones by their top-level name."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name if alias.name.startswith(PACKAGE) else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
                if not target.startswith(PACKAGE):
                    if target != "__future__":
                        yield target.split(".")[0]
                    continue
            yield target
            for alias in node.names:  # "from . import logs" imports the module logs
                if f"{target}.{alias.name}" in MODULES:
                    yield f"{target}.{alias.name}"


GRAPH = {name: set(_imports(name)) for name in MODULES}


def reached(name: str) -> set[str]:
    """What ``name`` imports, directly or through other modules of the package."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                if target in GRAPH:
                    todo.append(target)
    return seen


def in_layer(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == f"{PACKAGE}.{prefix}" or m.startswith(f"{PACKAGE}.{prefix}."))


def test_the_graph_is_read():
    # A reader that found nothing would pass every rule below.
    assert len(MODULES) > 40
    assert f"{PACKAGE}.evaluate" in reached(f"{PACKAGE}.refresher")
    assert "sqlalchemy" in reached(f"{PACKAGE}.refresher")
    assert f"{PACKAGE}.logs" in GRAPH[f"{PACKAGE}.serve"]  # "from . import logs"


LOWEST = {f"{PACKAGE}", f"{PACKAGE}.domain", f"{PACKAGE}.windows"}


@pytest.mark.parametrize("module", in_layer("stats"))
def test_statistics_are_pure(module):
    """stats/ is numpy and scipy on the shared domain types: no database, no Prometheus, no
    config, nothing above it."""
    outside = {
        m
        for m in reached(module)
        if m.startswith(PACKAGE) and m not in LOWEST and not m.startswith(f"{PACKAGE}.stats")
    }
    assert not outside, f"{module} reaches {sorted(outside)}"
    assert not reached(module) & {"sqlalchemy", "prometheus_client", "pandas", "psycopg2"}, module


@pytest.mark.parametrize("module", in_layer("source"))
def test_the_database_readers_know_neither_statistics_nor_outputs(module):
    """source/ turns configuration into SQL and rows into counts: it reaches no statistics, no
    exposition, no web server and nothing that orchestrates it."""
    above = ("stats", "exposition", "web", "httpserver", "refresher", "evaluate", "cli", "serve", "report")
    bad = {
        m
        for m in reached(module)
        for layer in above
        if m == f"{PACKAGE}.{layer}" or m.startswith(f"{PACKAGE}.{layer}.")
    }
    assert not bad, f"{module} reaches {sorted(bad)}"
    assert "prometheus_client" not in reached(module), module


@pytest.mark.parametrize("module", [f"{PACKAGE}.web", f"{PACKAGE}.httpserver", f"{PACKAGE}.webconfig"])
def test_the_web_server_never_reaches_the_database(module):
    """The web server serves what a refresh published: it reaches no reader and no driver, so
    no request can cause a query (SQLAlchemy's URL parser, through the config, is not one)."""
    bad = {m for m in reached(module) if m.startswith(f"{PACKAGE}.source")} | (reached(module) & {"psycopg2"})
    assert not bad, f"{module} reaches {sorted(bad)}"


@pytest.mark.parametrize("module", [f"{PACKAGE}.config", f"{PACKAGE}.domain", f"{PACKAGE}.windows"])
def test_the_base_layers_import_no_statistics_and_no_database(module):
    bad = {
        m for m in reached(module) if m.startswith(f"{PACKAGE}.stats") or m.startswith(f"{PACKAGE}.source")
    }
    assert not bad, f"{module} reaches {sorted(bad)}"
    assert not reached(module) & {"prometheus_client", "psycopg2", "pandas"}, module


def test_no_import_cycles():
    cycles = sorted(m for m in MODULES if m in reached(m))
    assert not cycles, f"modules on an import cycle: {cycles}"
