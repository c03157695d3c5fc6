"""The student edition of the notebooks (docs/course/outline.md): the teaching notebooks with every output
cleared, so that a student sees each result by running the cell, and with the cells tagged "solution"
removed; after the exercises, a cell with the self-checks that exist for that notebook (`cirtutor.check`).

    write_student_edition(notebooks="notebooks", out="student") -> the written paths
    `cirtutor student [--out student]`, `make student`; tests/test_student.py fails when the committed
    edition differs from what this module makes of the committed notebooks.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

PATTERN = "[0-9][0-9]_*.ipynb"        # the teaching notebooks (as cirtutor.book reads them)
from cirtutor.check import EXERCISES
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_text

SOLUTION_TAG = "solution"
NOTE = ("# Your answers. Where an exercise's answer is a number, a tuple or a set, check it with\n"
        "# check(\"{number}.k\", answer): it says whether it is right and gives a hint if not.\n"
        "from cirtutor.nb import check\n\n")


def check_cell(number: str) -> dict | None:
    """The code cell that follows a notebook's exercises: one commented `check(...)` line per checkable exercise."""
    ids = [e for e in EXERCISES if e.startswith(f"{number}.")]
    if not ids:
        return None
    lines = "".join(f"# check(\"{e}\", ...)   # {EXERCISES[e].question}\n" for e in ids)
    return {"cell_type": "code", "execution_count": None, "id": f"student-check-{number}", "metadata": {},
            "outputs": [], "source": (NOTE.format(number=number) + lines).rstrip("\n")}


def student_notebook(nb: dict, number: str) -> dict:
    """A teaching notebook (as a dict) -> its student edition: outputs and counts cleared, solution cells
    dropped, the self-check cell after the cell that holds '## Exercises'."""
    out = copy.deepcopy(nb)
    cells = []
    for cell in out["cells"]:
        if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
            continue
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            cell["metadata"] = {k: v for k, v in cell["metadata"].items() if k == "tags"}
        cells.append(cell)
        if cell["cell_type"] == "markdown" and "## Exercises" in "".join(cell["source"]) and check_cell(number):
            cells.append(check_cell(number))
    out["cells"] = cells
    return out


def render(nb: dict) -> str:
    """The notebook as the JSON text Jupyter writes (keys sorted, indent 1, UTF-8 kept, a final newline)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def student_edition(notebooks: str | Path = "notebooks") -> dict[str, str]:
    """{file name: JSON text} of the student edition of every numbered notebook in `notebooks`."""
    folder = Path(notebooks)
    paths = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
    if not paths:
        raise CirtutorError(f"no numbered notebooks ({PATTERN}) in {folder}: run from the repository root")
    return {p.name: render(student_notebook(load(p), p.name[:2])) for p in paths}


def load(path: Path) -> dict:
    """A notebook's JSON; an unreadable file is a one-line error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CirtutorError(f"cannot read the notebook {path}: {str(e).splitlines()[0][:200]}") from None


def write_student_edition(notebooks: str | Path = "notebooks", out: str | Path = "student") -> list[Path]:
    """Write the student edition into `out` (made if needed); a file there of another name is left alone."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CirtutorError(f"--out {out} is a file: choose a folder for the student edition")
    return [atomic_write_text(out / name, text) for name, text in student_edition(notebooks).items()]
