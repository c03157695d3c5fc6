"""The notebooks as a read-only book: static HTML for readers without a kernel.

Every `notebooks/[0-9][0-9]_*.ipynb` is rendered as it is committed, with its executed outputs
(figures stay embedded in the page), by nbconvert's `HTMLExporter`; nothing is executed. An
`index.html` lists the notebooks in order, each with its title (its first markdown heading) and
one line: the first thing it says you will learn (or its first paragraph). Interactive widgets
need a live kernel, so their saved state is dropped and a note stands in their place.

    build_book(notebooks="notebooks", out="book") -> [out/index.html, out/00_overview.html, ...]
    `cirtutor book [--out book]`, `make book`
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_text

PATTERN = "[0-9][0-9]_*.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(an interactive ipywidgets app: it needs a live kernel, so open this notebook in Jupyter to use it)"
HEADING = re.compile(r"^#{1,6}\s+(.+?)(?:\s+#+)?\s*$")
LABEL = re.compile(r"^\*\*[^*]+\*\*:?$")           # a bold label on its own line, e.g. **What you will learn**
BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
NAV_STYLE = "font-family: sans-serif; font-size: 0.9em; margin: 0.5em 0 1em"


@dataclass
class Chapter:
    """One notebook of the book: where it is read from, its page, title and one-line summary."""
    source: Path
    page: str
    title: str
    summary: str


def chapters(notebooks: str | Path) -> list[Chapter]:
    """The numbered notebooks of `notebooks`, in order, with their titles and summaries."""
    folder = Path(notebooks)
    if not folder.is_dir():
        raise CirtutorError(f"no notebooks folder at {folder} (expected the repository's notebooks/; "
                            "run from the repository root or pass --notebooks DIR)")
    paths = sorted(folder.glob(PATTERN))
    if not paths:
        raise CirtutorError(f"{folder} holds no numbered notebooks ({PATTERN})")
    return [Chapter(p, p.stem + ".html", *describe(read_notebook(p), p.stem)) for p in paths]


def read_notebook(path: Path):
    """The notebook at `path` as an nbformat v4 node; a file that is not one is a one-line error."""
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError, KeyError, AttributeError) as e:     # NotJSONError is a ValueError
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CirtutorError(f"cannot read the notebook {path}: {first}") from None


def describe(nb, fallback: str) -> tuple[str, str]:
    """(title, summary): the first markdown heading (else `fallback`), and the first item of the
    list or the first paragraph that follows it, as inline HTML ("You will learn ..." when the list
    is the notebook's "What you will learn")."""
    lines = [line for cell in nb.cells if cell.cell_type == "markdown" for line in cell.source.splitlines() + [""]]
    at = next((i for i, line in enumerate(lines) if HEADING.match(line)), None)
    if at is None:
        return fallback, ""
    title = plain(HEADING.match(lines[at]).group(1))
    item: list[str] = []
    label = ""
    for line in lines[at + 1:]:
        if not item and (not line.strip() or LABEL.match(line.strip())):
            label = line.strip() or label
            continue
        if HEADING.match(line) or not line.strip() or (item and BULLET.match(line)):
            break
        item.append(BULLET.sub("", line).strip())
    text = " ".join(item).rstrip(" ;:,.")
    if text and "you will learn" in label.lower():
        text = "You will learn " + text
    return title, inline(text + "." if text else "")


def plain(markdown: str) -> str:
    """`markdown` without emphasis, code marks or link targets."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"\*\*|__|`|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)", "", text).strip()


def inline(markdown: str) -> str:
    """One line of markdown as HTML: escaped, with `code`, **bold** and *italics* kept."""
    text = html.escape(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<!\w)\*(\S.*?)\*(?!\w)", r"<em>\1</em>", text)


def without_widgets(nb):
    """`nb` with its saved widget state dropped and each widget output replaced by a note."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if WIDGET in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}
    return nb


def render(chapter: Chapter, previous: Chapter | None, following: Chapter | None) -> str:
    """The notebook's page: nbconvert's lab template, titled, with links to the contents and neighbours."""
    nb = without_widgets(read_notebook(chapter.source))
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": chapter.title}})
    links = ['<a href="index.html">contents</a>']
    if previous:
        links.insert(0, f'<a href="{previous.page}">&larr; {html.escape(previous.title)}</a>')
    if following:
        links.append(f'<a href="{following.page}">{html.escape(following.title)} &rarr;</a>')
    nav = f'<nav class="book-nav" style="{NAV_STYLE}">' + " &middot; ".join(links) + "</nav>"
    return body.replace("<main>", "<main>\n" + nav, 1).replace("</main>", nav + "\n</main>", 1)


INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cirtutor: the notebooks</title>
<style>
body {{ font-family: sans-serif; max-width: 52em; margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #222; }}
li {{ margin-bottom: 0.9em; }} li p {{ margin: 0.2em 0 0; }} code {{ background: #f2f2f2; padding: 0 0.2em; }}
</style>
</head>
<body>
<h1>cirtutor: the notebooks</h1>
<p>A read-only rendition of the executed notebooks in <code>notebooks/</code>, with the outputs they
were committed with; nothing here runs. To run them, open <code>notebooks/</code> with
<code>jupyter lab</code>. They reproduce <em>Candidate Set Re-ranking for Composed Image Retrieval
with Dual Multi-modal Encoder</em> (Liu, Sun, Teney, Gould; TMLR 2024).</p>
<ol start="0">
{items}
</ol>
</body>
</html>
"""


def index_page(book: list[Chapter]) -> str:
    """`index.html`: every notebook in order, its title linking its page, its summary below."""
    items = [f'<li><a href="{html.escape(c.page)}">{html.escape(c.title)}</a>'
             + (f"<p>{c.summary}</p>" if c.summary else "") + "</li>" for c in book]
    return INDEX.format(items="\n".join(items))


def build_book(notebooks: str | Path = "notebooks", out: str | Path = "book") -> list[Path]:
    """Render every numbered notebook of `notebooks` and an index into `out`; return the files written
    (index first). Every page is rendered before the first is written, each file atomically."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == out else f"lies under {existing}, which is a file"
        raise CirtutorError(f"the book's output {out} {where}, not a folder: pass another --out")
    book = chapters(notebooks)
    pages = {c.page: render(c, book[i - 1] if i else None, book[i + 1] if i + 1 < len(book) else None)
             for i, c in enumerate(book)}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CirtutorError(f"cannot create the book's folder {out}: {e.strerror or e}") from None
    written = [atomic_write_text(out / name, text) for name, text in pages.items()]
    return [atomic_write_text(out / "index.html", index_page(book))] + written
