"""`cirtutor book`: the executed notebooks as static HTML, an index linking each in order, and
one-line errors for a missing notebooks folder, an output that is a file, or a broken notebook."""
import html
import json
import re
from pathlib import Path

import pytest

from cirtutor.book import build_book, chapters, describe
from cirtutor.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def first_heading(path: Path) -> str:
    """The notebook's first markdown heading, read straight from its JSON."""
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    raise AssertionError(f"{path.name} has no heading")


def test_the_book_links_every_notebook_in_order_with_its_title(tmp_path, capsys):
    assert len(NOTEBOOKS) >= 10
    out = tmp_path / "book"
    assert main(["book", "--out", str(out), "--notebooks", str(ROOT / "notebooks")]) == 0
    assert f"{len(NOTEBOOKS)} notebooks rendered" in capsys.readouterr().out
    index = (out / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<li><a href="([^"]+)">([^<]+)</a>', index)
    assert [href for href, _ in links] == [p.stem + ".html" for p in NOTEBOOKS]
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.html"] + [href for href, _ in links])
    for path, (href, title) in zip(NOTEBOOKS, links):
        assert html.unescape(title) == first_heading(path), path.name
        page = (out / href).read_text(encoding="utf-8")
        assert f"<title>{html.escape(first_heading(path), quote=False)}</title>" in page, href
        assert first_heading(path).split(" · ")[1][:30] in html.unescape(page), href
        assert 'href="index.html"' in page, href
        images = sum(k.startswith("image/") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                     for o in c.get("outputs", []) for k in o.get("data", {}))
        assert page.count('src="data:image/') >= images > 0, f"{href}: the outputs' figures are not embedded"
    assert index.count("<p>You will learn ") == len(NOTEBOOKS)     # every notebook opens with what you will learn
    explorer = (out / "06_qualitative_analysis.html").read_text(encoding="utf-8")
    assert "widget-state+json" not in explorer and "needs a live kernel" in explorer


def test_describe_reads_the_heading_and_the_first_item():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell(
        "# 42 · A *title*\n\n**What you will learn**\n- how `K` matters\n  across two lines;\n- something else")])
    assert describe(nb, "fallback") == ("42 · A title", "You will learn how <code>K</code> matters across two lines.")
    nb.cells[1].source = "# Plain\n\nA first paragraph\non two lines.\n\nA second one."
    assert describe(nb, "f") == ("Plain", "A first paragraph on two lines.")
    assert describe(nbformat.v4.new_notebook(), "no heading") == ("no heading", "")


def one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    one_line_error(capsys, ["book", "--notebooks", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")],
                   "no notebooks folder", "nowhere")
    one_line_error(capsys, ["book", "--out", str(afile), "--notebooks", str(ROOT / "notebooks")], "is a file", "afile")
    one_line_error(capsys, ["book", "--out", str(afile / "sub"), "--notebooks", str(ROOT / "notebooks")],
                   "lies under", "which is a file")
    one_line_error(capsys, ["book", "--notebooks", str(tmp_path), "--out", str(tmp_path / "b")], "no numbered notebooks")
    (tmp_path / "nbs").mkdir()
    (tmp_path / "nbs" / "00_broken.ipynb").write_text("{not json")
    one_line_error(capsys, ["book", "--notebooks", str(tmp_path / "nbs"), "--out", str(tmp_path / "b")],
                   "cannot read the notebook", "00_broken.ipynb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "nbs"]
    with pytest.raises(Exception, match="no notebooks folder"):
        chapters(tmp_path / "nowhere")
    with pytest.raises(Exception, match="is a file"):
        build_book(ROOT / "notebooks", afile)
