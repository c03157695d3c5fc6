"""The notebooks' one namespace, `cirtutor/nb.py`: a notebook imports cirtutor's helpers from it alone, and
its `USED_IN` names exactly the notebooks that use each helper (so it cannot go stale)."""
from __future__ import annotations

import ast
import collections
import json
from pathlib import Path

import cirtutor.nb as nb

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cirtutor_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from cirtutor... import name` in a notebook's code cells."""
    out = []
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                           for line in "".join(cell["source"]).splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cirtutor"):
                out += [(node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(a.name, "") for a in node.names if a.name.startswith("cirtutor")]
    return out


def test_notebooks_import_cirtutor_only_through_the_namespace():
    elsewhere = {f"{p.name}: {m} {n}" for p in NOTEBOOKS for m, n in cirtutor_imports(p) if m != "cirtutor.nb"}
    assert NOTEBOOKS and not elsewhere, f"import these through cirtutor.nb: {sorted(elsewhere)}"


def test_used_in_names_exactly_the_notebooks_that_use_each_helper():
    used = collections.defaultdict(set)
    for p in NOTEBOOKS:
        for _, name in cirtutor_imports(p):
            used[name].add(p.name[:2])
    assert {k: set(v) for k, v in nb.USED_IN.items()} == dict(used)


def test_every_helper_is_there():
    assert nb.__all__ == list(nb.USED_IN) + list(nb.STUDENT_ONLY)
    missing = [name for name in nb.__all__ if not hasattr(nb, name)]
    assert not missing
