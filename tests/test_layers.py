"""The package's layers point down: the building blocks (models, engine, data, evaluation) never
import the modules that orchestrate runs (features, pipeline, analysis, reproduce, stages, trained, study,
report, cli), not even inside a function, so a reader can follow one query from data to score without
going back up. Imports sit at the top of their modules (a short, explained list of exceptions), and the
modules import each other without a cycle."""
from __future__ import annotations

import ast
import fnmatch
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


DATASET_NAMES = {"cirr", "fashioniq", "CIRR", "Fashion-IQ", "FashionIQ"}


def dataset_branches(source: str) -> list[int]:
    """Lines that compare something with a dataset's name (`x == "cirr"`, `ds.dataset_name != "CIRR"`, `in ("cirr", …)`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            names = {c.value for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant)}
            named = any(isinstance(p, ast.Attribute) and p.attr == "dataset_name" for p in parts)
            if names & DATASET_NAMES or named:
                lines.append(node.lineno)
    return lines


def test_the_retrieval_protocol_is_decided_in_data_only():
    """How a dataset's queries are ranked (gallery groups, reference removed or kept, subsets) is stated once,
    by its loader in data/ (`retrieval_groups`, `remove_reference`, `server_split`); nothing else asks for its name."""
    found = {f"{p.relative_to(PACKAGE).as_posix()}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
             if "data" not in p.relative_to(PACKAGE).parts[:1] for line in dataset_branches(p.read_text())}
    assert not found, f"dataset-name branches outside cirtutor/data: {sorted(found)}"


def test_the_branch_scan_sees_dataset_names():
    assert dataset_branches('if cfg.data.dataset == "cirr":\n    pass\n') == [1]
    assert dataset_branches('x = ds.dataset_name != "x"\ny = k in ("fashioniq", "b")\n') == [1, 2]
    assert dataset_branches('if group.remove_reference:\n    pass\n') == []


def test_the_reference_layer_takes_no_speed_path_arguments():
    """The layers a reader holds against Fig. 3 take tokens and masks only; `grid` and `index` (the exact
    speed paths, models/reranker_fast.py) are chosen once, in DualEncoderReranker.forward."""
    import inspect

    from cirtutor.models import reranker
    for layer in (reranker.Attention, reranker.DualAttention, reranker.DualEncoderLayer, reranker.DualEncoder):
        params = set(inspect.signature(layer.forward).parameters)
        assert not params & {"grid", "index"}, f"{layer.__name__}.forward takes {params & {'grid', 'index'}}"


# Imports inside a function, each with its reason; every other import sits at the top of its module, where a
# reader sees what the module builds on. {"file:function" (fnmatch pattern): (modules it may import, why)}.
INNER_IMPORTS = {
    "cli.py:cmd_*": (("cirtutor.",), "the CLI's lazy dispatch: a command's module loads only when that command "
                                     "runs, so `cirtutor --help` stays fast (cli.py's docstring)"),
    "cli.py:distributed_context": (("torch",), "the same lazy dispatch: torch only for the commands that train"),
    "evaluation/search.py:_faiss_top_k": (("faiss",), "optional dependency (pip install 'cirtutor[search]')"),
    "evaluation/topk.py:_numpy_globals": (("numpy._core.", "numpy.core."),
                                          "numpy 2 renamed numpy.core (try/except ImportError)"),
    "explore.py:explorer": (("ipywidgets",), "optional dependency (the notebooks' extra)"),
}


def inner_imports(path: Path) -> list[tuple[str, str]]:
    """(function, module) for every import inside a function of `path` (a method: Class.method;
    imports in nested functions count for the outer one)."""
    tree = ast.parse(path.read_text())
    functions = [(node.name, node) for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    functions += [(f"{c.name}.{f.name}", f) for c in tree.body if isinstance(c, ast.ClassDef)
                  for f in c.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found = []
    for name, function in functions:
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                found += [(name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found += [(name, f"{'.' * node.level}{node.module or ''}.{a.name}") for a in node.names]
    return found


def test_imports_sit_at_the_top_of_their_modules():
    """No import inside a function beyond INNER_IMPORTS, and no entry there that nothing uses any more."""
    unexplained, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for function, module in inner_imports(path):
            where = f"{path.relative_to(PACKAGE).as_posix()}:{function}"
            allowed = [p for p, (prefixes, _) in INNER_IMPORTS.items() if fnmatch.fnmatchcase(where, p)
                       and module.startswith(prefixes)]
            used.update(allowed)
            if not allowed:
                unexplained.append(f"{where}: {module}")
    assert not unexplained, ("imports inside functions (move them to the top of the module, or add an entry with "
                             f"its reason to INNER_IMPORTS): {unexplained}")
    assert used == set(INNER_IMPORTS), f"INNER_IMPORTS entries nothing needs any more: {set(INNER_IMPORTS) - used}"


def test_the_inner_import_scan_sees_nested_functions_and_methods(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    def g():\n        import json\n    return g\n\n"
                      "class C:\n    def m(self):\n        from cirtutor import trained\n")
    assert inner_imports(module) == [("f", "json"), ("C.m", "cirtutor.trained")]


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def top_level_imports(path: Path) -> set[str]:
    """The cirtutor modules `path` imports at its top level (`from cirtutor import x` names the module x)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}") else node.module
                      for a in node.names}
    return {n for n in names if n.startswith("cirtutor")}


def test_the_modules_import_each_other_without_a_cycle():
    """With every import at the top, a cycle between two modules would make one of them see the other half
    imported: the graph of the package's top-level imports has none."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        graph[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = top_level_imports(path)
    state = {}

    def visit(module: str, trail: tuple[str, ...]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(trail[trail.index(module):] + (module,))}"
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            visit(other, trail + (module,))
        state[module] = "done"
    for module in sorted(graph):
        visit(module, ())
