"""Every benchmark script still imports: they run outside ``make test`` (``make bench``,
``make study``), so a renamed or moved name would otherwise break them unnoticed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_the_benchmarks_are_found():
    assert len(BENCHMARKS) >= 5


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # scripts import their neighbours
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)  # the scripts run only under __main__
    assert hasattr(module, "main") or any(
        callable(v) for k, v in vars(module).items() if not k.startswith("_")
    )
