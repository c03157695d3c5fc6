"""The package's layers point down: the building blocks (models, engine, data, evaluation) never
import the modules that orchestrate runs (features, pipeline, analysis, reproduce, stages, trained, study,
report, cli), not even inside a function, so a reader can follow one query from data to score without
going back up."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cirtutor"
LOWER = ("models", "engine", "data", "evaluation")
UPPER = ("cirtutor.features", "cirtutor.pipeline", "cirtutor.analysis", "cirtutor.reproduce", "cirtutor.stages",
         "cirtutor.trained", "cirtutor.study", "cirtutor.report", "cirtutor.cli")


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


def test_one_function_names_every_stage_folder(tmp_path):
    """`layout.stage_dir` builds every RUN/seed{s}/<stage> path; no other module spells the layout out."""
    from cirtutor.layout import seed_dirs, stage_dir, variant_dirs

    assert stage_dir("run", 2, "stage2", "no_zt").as_posix() == "run/seed2/stage2-no_zt"
    assert stage_dir("run", 0, "topk").as_posix() == "run/seed0/topk"
    with pytest.raises(ValueError, match="only stage 2"):
        stage_dir("run", 0, "stage1", "no_zt")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_dir("run", 0, "stage3")
    for seed, stage, ablation in ((10, "stage2", None), (2, "stage2", "no_text"), (2, "stage2", None), (2, "topk", None)):
        stage_dir(tmp_path, seed, stage, ablation).mkdir(parents=True)
    assert [d.name for d in seed_dirs(tmp_path)] == ["seed2", "seed10"]
    assert list(variant_dirs(tmp_path, 2)) == ["no_text"]
    spelled = {f"{p.relative_to(PACKAGE)}" for p in PACKAGE.rglob("*.py") if p.name != "layout.py"
               and any(s in p.read_text() for s in ('f"seed{', '/ "stage1"', '/ "stage2"', '/ "topk"', '/ "zeroshot"'))}
    assert not spelled, f"run-folder paths built outside cirtutor/layout.py: {sorted(spelled)}"


MAX_LINES = 50


def code_lines(node: ast.FunctionDef) -> int:
    """A function's lines from `def` to its end, its docstring left out."""
    first = node.body[0]
    doc = (first.end_lineno - first.lineno + 1
           if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
           else 0)
    return node.end_lineno - node.lineno + 1 - doc


def test_functions_stay_short():
    """At most 50 lines of code per function, so that each reads on one screen."""
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"
                if code_lines(node) > MAX_LINES:
                    long[name] = code_lines(node)
    assert not long, f"functions over {MAX_LINES} lines (split them): {long}"


def test_code_lines_leave_the_docstring_out():
    source = 'def f():\n    """A docstring\n    of two lines."""\n' + "    x = 1\n" * 50
    assert code_lines(ast.parse(source).body[0]) == 51            # over MAX_LINES: the test above would name it
