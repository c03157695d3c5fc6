"""Prose numbers that cannot go stale: every number a notebook's markdown states is

* shown by the notebook itself: it appears, at the prose's precision, in an output or in the code, or it is
  the difference of two numbers shown at its precision (a margin between two printed results), or
* the paper's, marked so: its sentence says "paper" and names a table, and the number is one of that table's
  values as `findings.PAPER` stores them, or
* a reference (a section, table, figure, equation, notebook or exercise number; a citation's year), or
* cited from the repository's docs: its sentence names a docs/*.md file that holds the number, or
* in an exercise (its numbers are the settings it asks for), or
* a fact of the setup stated with its source, listed below in `STATED` (BLIP's sizes, the tiny world's).

Anything else is a number the notebook asserts without showing, and the test names it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cirtutor.findings import PAPER

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
NUMBER = re.compile(r"(?<![\w.@/_])(?<![A-Za-z]-)[-+−]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")
REFERENCE = re.compile(r"(§|\bSection|\bsections?|\bTables?|\bFig\.|\bFigure|\bEqs?\.|\bnotebooks?|\bNotebooks?|"
                       r"\bexercises?|\bExercises?|\bstep|\bpart|\bversion|\bseeds?|\bentry|\bentries|\blayers?|\bimages?|\brows?)\s*[\d.,–\- and]*$")
RUNTIME = re.compile(r"\bruntime\b|CPU cores?|\bminutes\b|\bhours\b")  # run times: measured elsewhere, not printed
CITATION = re.compile(r"(et al\.|TMLR|SIGIR|CVPR|ICCV|ECCV|NeurIPS),?\s*$")

# What a notebook states about its setup without computing it, each with where it comes from.
STATED = {
    "00": {"256": "BLIP's ITC embedding width (docs/authors_code.md)",
           "576": "BLIP's 24 x 24 patch grid at 384 px"},
    "01": {"256": "BLIP's ITC embedding width", "129": "BLIP's pretraining pairs, 129 M (BLIP paper)",
           "30,524": "BLIP's tokenizer vocabulary", "137": "BLIP's text encoder, 137 M parameters",
           "577": "BLIP's image tokens at 384 px: 576 patches + [CLS]", "768": "BLIP's ViT-B width",
           "576": "BLIP's 24 x 24 patch grid at 384 px", "24": "BLIP's patch grid side at 384 px",
           "86": "ViT-B/16's parameters, 86 M",
           "0.001": "BLIP's clamp on the ITC temperature", "0.5": "BLIP's clamp on the ITC temperature"},
    "02": {"512": "the paper's stage-1 batch size (docs/authors_code.md)",
           "1,000": "the tiny world's training references (data.synthetic_size)"},
    "03": {"12": "BLIP's text encoder layers"},
    "04": {"16": "the paper's stage-2 batch size (docs/authors_code.md)"},
    "06": {"200": "the length of the paper's Table 7 lists"},
    "07": {"500": "the tiny world's validation queries", "1.5": "the synthetic world's position jitter, in pixels"},
}


def paper_values(table: str) -> set[float]:
    """Every number `findings.PAPER` stores for the paper's table `table` ("Table 6", …)."""
    values: set[float] = set()

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(k)                                      # Table 6's K = 30 … 150 are keys
                walk(v)
        elif isinstance(x, (int, float)):
            values.add(round(float(x), 2))
    for dataset in PAPER.values():
        for key, name in dataset["tables"].items():
            if name == table:
                walk(dataset[key])
                if key == "rerank":
                    walk(dataset["filter"])
                if key == "ablations":                       # the full model's row of the ablation table
                    walk(dataset["rerank"][dataset["k"]])
    return values


def value(text: str) -> float:
    return float(text.replace(",", "").replace("−", "-").lstrip("+-"))


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def shown_numbers(nb: dict) -> list[tuple[float, int]]:
    """The numbers of a notebook's code and text outputs, each with the decimals it is printed with."""
    text = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        text.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            text.append("".join(out.get("text", "")))
            data = out.get("data", {})
            text += ["".join(data.get(kind, "")) for kind in ("text/plain", "text/markdown")]
    return [(value(m.group()), decimals(m.group())) for m in NUMBER.finditer("\n".join(text))]


def prose(source: str) -> str:
    """A markdown cell without code, math, link targets and list-item numbers."""
    source = re.sub(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$\n]*\$", " ", source, flags=re.S)
    source = re.sub(r"\]\([^)]*\)", "]", source)
    source = re.sub(r"^(\s*)\d+\.\s", r"\1", source, flags=re.M)                   # "1. " of an exercise list
    return re.sub(r"^#+ .*$", "", source, flags=re.M)                                # headings are titles


def paragraph_of(text: str, start: int) -> str:
    end = text.find("\n\n", start)
    return text[text.rfind("\n\n", 0, start) + 1:end if end >= 0 else len(text)]


def is_difference(x: float, d: int, shown: list[tuple[float, int]]) -> bool:
    """Whether x is, at d decimals, the difference of two numbers shown at that precision (a margin)."""
    pool = {round(v, d) for v, places in shown if places == d}
    return any(round(a - x, d) in pool for a in pool)


def is_paper_value(x: float, d: int, table: str) -> bool:
    """Whether x, at d decimals, is one of the table's values or the difference of two (a stated margin)."""
    values = paper_values(table)
    return any(round(v, d) == x for v in values) or any(round(abs(a - b), d) == x for a in values for b in values)


def sentence_of(text: str, start: int) -> str:
    left = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start))
    right = min([i for i in (text.find(". ", start), text.find("\n", start)) if i >= 0] or [len(text)])
    return text[left + 1:right]


def unexplained(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    shown = shown_numbers(nb)
    stated = STATED.get(path.name[:2], {}) if path.parent.name == "notebooks" else {}
    problems = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = prose("".join(cell["source"]).split("## Exercises")[0])      # an exercise's numbers are settings
        for m in NUMBER.finditer(text):
            raw, before = m.group().lstrip("+-−"), text[max(0, m.start() - 40):m.start()]
            if REFERENCE.search(before) or RUNTIME.search(sentence_of(text, m.start())) or (CITATION.search(before) and len(raw) == 4) or raw in stated:
                continue
            x, d = value(raw), decimals(raw)
            if any(round(v, d) == x for v, _ in shown) or (d and is_difference(x, d, shown)):
                continue
            cited = re.search(r"docs/[\w/]+\.md", sentence_of(text, m.start()))
            if cited and (ROOT / cited.group()).is_file() and re.search(rf"(?<![\d.]){re.escape(raw)}(?![\d])",
                                                                        (ROOT / cited.group()).read_text()):
                continue                                     # a measurement the sentence cites from the docs
            paragraph = paragraph_of(text, m.start())
            table = re.search(r"Table (\d)", paragraph)
            if "paper" in paragraph.lower() and table:
                if is_paper_value(x, d, f"Table {table.group(1)}"):
                    continue
                problems.append(f"{raw} is neither shown nor one of the paper's Table {table.group(1)} values "
                                f"(or a difference of two): {sentence_of(text, m.start()).strip()!r}")
            else:
                problems.append(f"{raw} is not shown by the notebook: {sentence_of(text, m.start()).strip()!r}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_prose_number_is_shown_or_the_papers(path):
    assert unexplained(path) == []


def test_the_check_finds_a_number_the_outputs_do_not_show(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["print(24.2)"], "outputs": [{"text": "24.2\n"}]},
                    {"cell_type": "markdown", "source": ["R@1 reaches 24.2, and 31.7 after re-ranking."]},
                    {"cell_type": "markdown", "source": ["The paper's Table 6 gives 53.03 at K = 30, not 53.3."]},
                    {"cell_type": "markdown", "source": ["As notebook 05 and paper §3.2 say (Liu et al., 2024)."]}]}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    found = unexplained(path)
    assert len(found) == 2 and "31.7" in found[0] and "53.3" in found[1]
    assert is_paper_value(7.0, 1, "Table 4") and is_paper_value(46.8, 1, "Table 6") and not is_paper_value(46.9, 1, "Table 6")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_notebook_opens_with_its_runtime(path):
    first = "".join(json.loads(path.read_text())["cells"][0]["source"])
    assert re.search(r"\bruntime:", first, re.I), f"{path.name}: the first cell should say how long the notebook runs"
