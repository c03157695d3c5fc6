"""The student edition (cirtutor/student.py, `make student`) is what the teaching notebooks make, and the
exercises' self-checks (cirtutor/check.py) accept the right answer and hint at a wrong one without giving it."""
from pathlib import Path

import pytest

from cirtutor.check import EXERCISES, check, modules_without_encoder_t, r10_gain_without_reference, smallest_covering_k
from cirtutor.config import get_preset
from cirtutor.data.registry import open_dataset
from cirtutor.errors import CirtutorError
from cirtutor.student import student_edition, student_notebook, write_student_edition

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_student_edition_is_current():
    made = student_edition(ROOT / "notebooks")
    committed = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "student").glob("*.ipynb"))}
    stale = sorted(n for n in made.keys() | committed.keys() if made.get(n) != committed.get(n))
    assert not stale, f"the student edition is out of date ({stale}): run `make student` and commit student/"


def test_a_student_notebook_has_no_outputs_no_solutions_and_its_checks():
    nb = {"cells": [{"cell_type": "code", "execution_count": 3, "metadata": {"tags": ["x"], "scrolled": True},
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "42"}], "source": "print(42)"},
                    {"cell_type": "code", "execution_count": 4, "metadata": {"tags": ["solution"]}, "outputs": [],
                     "source": "answer = 42"},
                    {"cell_type": "markdown", "metadata": {}, "source": "## Exercises\n1. ..."}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    out = student_notebook(nb, "00")
    assert [c["cell_type"] for c in out["cells"]] == ["code", "markdown", "code"]
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None
    assert out["cells"][0]["metadata"] == {"tags": ["x"]}
    assert 'check("00.2", ...)' in out["cells"][2]["source"] and nb["cells"][0]["outputs"]   # the input is untouched
    assert len(student_notebook(nb, "06")["cells"]) == 2                                   # no checks for 06


def test_student_edition_errors_are_one_line(tmp_path):
    with pytest.raises(CirtutorError, match="no numbered notebooks"):
        student_edition(tmp_path)
    (tmp_path / "00_x.ipynb").write_text("{not json")
    with pytest.raises(CirtutorError, match="cannot read the notebook") as e:
        student_edition(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(CirtutorError, match="is a file"):
        write_student_edition(ROOT / "notebooks", tmp_path / "file")


def test_checks_accept_the_answer_and_hint_without_giving_it(capsys):
    val = open_dataset(get_preset("tiny").data, "val", load_images=False)
    assert check("00.2", len(val.queries))                 # the synthetic world puts every target in its set
    assert not check("00.2", len(val.queries) - 1)
    out = capsys.readouterr().out
    assert "correct" in out and "Hint:" in out and str(len(val.queries)) not in out.split("Hint:")[1]
    gone = modules_without_encoder_t()
    assert gone and all(any(s in n for s in ("self1", "dense1", "LayerNormB")) for n in gone)   # stream B's modules
    assert check("03.3", sorted(gone)) and not check("03.3", gone - {next(iter(gone))})
    with pytest.raises(CirtutorError, match="no self-check"):
        check("99.1", 0)
    assert set(EXERCISES) == {"00.2", "02.3", "03.3", "05.3"}


def test_the_coverage_check_takes_the_first_k_at_each_share():
    k90, k95 = smallest_covering_k()
    assert 1 <= k90 <= k95 <= 200
    assert check("02.3", (k90, k95)) and not check("02.3", (k90 + 1, k95)) and not check("02.3", k90)


def test_the_reference_check_counts_the_places_a_removed_reference_frees():
    """05.3 from the ranked lists: a reference above the target frees a place, so R@10 can only rise."""
    import numpy as np

    from cirtutor.nb import filter_data, filter_topk, positions_of, target_positions, trained_filter

    gains = r10_gain_without_reference()
    cfg = get_preset("tiny_fashioniq")
    data = filter_data(cfg, verbose=False)
    filt, _ = trained_filter(cfg, data=data, verbose=False)
    mine = []
    for g, t in zip(data.val.retrieval_groups(), filter_topk(filt, data.val, data.stores["val"], k=20)):
        ref = positions_of(t.sorted_index_names, [data.val.queries[i]["reference"] for i in g.indices])
        tgt = target_positions(t.labels)
        freed = (tgt >= 0) & (tgt - ((ref >= 0) & (ref < tgt)) < 10)
        mine.append(100 * (freed.mean() - ((tgt >= 0) & (tgt < 10)).mean()))
    assert np.allclose(gains, mine) and all(g >= 0 for g in gains) and len(gains) == 3
    assert check("05.3", tuple(mine)) and not check("05.3", tuple(g + 1 for g in mine))
