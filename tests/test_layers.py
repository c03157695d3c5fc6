"""The package's layers point down: the building blocks (models, engine, data, evaluation) never
import the modules that orchestrate runs (pipeline, stages, trained, study, report, cli), not even
inside a function, so a reader can follow one query from data to score without going back up."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cirtutor"
LOWER = ("models", "engine", "data", "evaluation")
UPPER = ("cirtutor.pipeline", "cirtutor.stages", "cirtutor.trained", "cirtutor.study", "cirtutor.report",
         "cirtutor.cli")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}      # from cirtutor import pipeline
    return names


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_never_import_the_run_orchestration(layer):
    upward = {f"{p.relative_to(PACKAGE)}: {m}" for p in sorted((PACKAGE / layer).rglob("*.py"))
              for m in imported_modules(p) if m in UPPER or m.startswith(tuple(u + "." for u in UPPER))}
    assert not upward, f"imports that run up the layers: {sorted(upward)}"


def test_the_import_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cirtutor.pipeline import is_tiny\n    from cirtutor import trained\n")
    assert {"cirtutor.pipeline", "cirtutor.trained"} <= imported_modules(module)


def test_models_hold_models_only():
    """models/ builds, runs and loads networks; reading datasets (data/) and caching runs belong to the layers above."""
    below = {f"{p.relative_to(PACKAGE)}: {m}" for p in sorted((PACKAGE / "models").rglob("*.py"))
             for m in imported_modules(p) if m.startswith(("cirtutor.data", "cirtutor.cache"))}
    assert not below, f"models/ reaching into data or the cache: {sorted(below)}"
