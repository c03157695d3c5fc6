"""Every citation a reader meets can be followed: to the paper, or to a page in `docs/`.

Pure text scanning, no imports of the package: the package's sources (their docstrings and
comments), the notebooks' cell sources, the tests and the README.
"""
from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cirtutor"
DOCS = ROOT / "docs"

# What the paper (Liu, Sun, Teney, Gould, TMLR 2024) has: its numbered sections, Tables 1-7,
# Eqs. 1-2 (the filter's and the re-ranker's B x B cross-entropy) and Figs. 1-8.
PAPER_SECTIONS = {"1", "2", "3", "3.1", "3.2", "4", "4.1", "4.2", "4.3", "4.4", "5"}
PAPER_TABLES = set(range(1, 8))
PAPER_EQUATIONS = {1, 2}
PAPER_FIGURES = set(range(1, 9))

# Pointers to notes that readers never see. Built from pieces so that this file does not match itself.
PRIVATE = re.compile("|".join([r"\b" + "fa" + r"cts\b", "qu" + r"irk [0-9]", "TINY_MODE_" + "FINDINGS",
                               "is" + r"sue [0-9]"]), re.IGNORECASE)

SECTION = re.compile(r"§\s?([0-9A-Z][0-9.]*?)\.?(?=[^0-9.]|$)")
SECTION_RANGE = re.compile(r"§\s?[0-9][0-9.]*\s?[-–]\s?§?\s?([0-9][0-9.]*)")
NUMBERED = re.compile(r"\b(Tables?|Eqs?\.|Equations?|Fig(?:s?\.|ures?))\s?(\d+)((?:\s?(?:/|,|-|–|and)\s?\d\b)*)")
DOCS_REF = re.compile(r"docs/([\w./-]+?\.md)((?:\s?[,(]?\s?'[^'\n]+'\)?)*)")
NEAR = 160          # characters either side within which a docs/ reference covers a non-paper §


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".json"}
                  and "__pycache__" not in p.parts)


def _notebook_sources(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells)


def _texts() -> dict[str, str]:
    """Everything a reader of the repository reads, by path (notebooks: their cell sources)."""
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in _package_files()}
    texts.update({str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("*.py"))
                  if p.name != Path(__file__).name})
    texts.update({str(p.relative_to(ROOT)): _notebook_sources(p) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))})
    texts["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
    texts.update({str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))})
    return texts


def _strings_and_comments(path: Path) -> list[str]:
    """The docstrings, other string literals and comments of one Python file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    kinds = {tokenize.STRING, tokenize.COMMENT} | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set())
    return [t.string for t in tokens if t.type in kinds]


def _headings(page: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


def test_no_pointer_to_private_notes():
    hits = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()!r}"
            for path, text in _texts().items() for m in PRIVATE.finditer(text)]
    assert not hits, "citations of notes readers never see:\n" + "\n".join(hits)


def _bad_numbers(text: str) -> list[str]:
    """The §, Table, Eq. and Fig. references in `text` that name nothing in the paper and have no
    docs/ page next to them."""
    bad = []

    def covered(pos: int) -> bool:
        return "docs/" in text[max(0, pos - NEAR):pos + NEAR]

    for m in SECTION.finditer(text):
        if m.group(1) not in PAPER_SECTIONS and not covered(m.start()):
            bad.append(m.group())
    for m in SECTION_RANGE.finditer(text):
        if m.group(1) not in PAPER_SECTIONS and not covered(m.start()):
            bad.append(m.group())
    for m in NUMBERED.finditer(text):
        kind = m.group(1)[:3]
        allowed = {"Tab": PAPER_TABLES, "Eq.": PAPER_EQUATIONS, "Eqs": PAPER_EQUATIONS, "Equ": PAPER_EQUATIONS,
                   "Fig": PAPER_FIGURES}[kind]
        numbers = [int(m.group(2))] + [int(n) for n in re.findall(r"\d+", m.group(3))]
        if any(n not in allowed for n in numbers) and not covered(m.start()):
            bad.append(m.group())
    return bad


@pytest.mark.parametrize("path", [p for p in _package_files() if p.suffix == ".py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_package_numbers_name_the_paper_or_a_docs_page(path):
    bad = [ref for chunk in _strings_and_comments(path) for ref in _bad_numbers(chunk)]
    assert not bad, f"{path.relative_to(ROOT)}: references the paper does not have, with no docs/ page: {bad}"


def test_the_number_check_catches_what_it_should():
    assert _bad_numbers("see §9.4") == ["§9.4"]
    assert _bad_numbers("paper §3.2, Eq. 2, Table 7, Fig. 8 and Tables 2/6") == []
    assert _bad_numbers("Table 9") == ["Table 9"] and _bad_numbers("Eq. 3") == ["Eq. 3"]
    assert _bad_numbers("§8.1-8.9") != []
    assert _bad_numbers("§9.4 (docs/metrics.md, 'Re-ranked evaluation')") == []
    assert _bad_numbers("Tables 5, 150 queries") == []
    assert PRIVATE.search("q" + "uirk 12") and not PRIVATE.search("the rounding quirk")
    refs = DOCS_REF.findall("(docs/metrics.md, 'Recall@K', 'Averages'; paper Table 1)")
    assert refs and re.findall(r"'([^'\n]+)'", refs[0][1]) == ["Recall@K", "Averages"]


def test_docs_references_name_a_page_and_its_sections():
    """A `docs/PAGE.md, 'Section'` pointer names a page that exists and (by its first words) one of its headings."""
    problems, seen = [], 0
    for path, text in _texts().items():
        for m in DOCS_REF.finditer(text):
            page = DOCS / m.group(1)
            if not page.is_file():
                problems.append(f"{path}: no page {m.group()!r}")
                continue
            headings = _headings(page)
            for wanted in re.findall(r"'([^'\n]+)'", m.group(2)):
                seen += 1
                if not any(h.startswith(wanted) for h in headings):
                    problems.append(f"{path}: {page.name} has no section {wanted!r}")
    assert not problems, "\n".join(problems)
    assert seen > 50          # the pointers are really being read
