"""CIRR test-server files (docs/data_formats.md, 'CIRR submission files'): the writer, and the validator on every kind of fault."""
import json

import numpy as np
import pytest

from cirtutor.evaluation import EvaluationError, submission, validate_cirr_submission, write_cirr_submission

GALLERY = [f"test1-{i}-0-img0" for i in range(60)]
QUERIES = [  # like CIRR(split="test1").queries: subset = the 5 non-reference members
    {"pairid": 7, "reference": GALLERY[0], "subset": GALLERY[1:6]},
    {"pairid": 12, "reference": GALLERY[10], "subset": GALLERY[11:16]},
    {"pairid": 100, "reference": GALLERY[20], "subset": GALLERY[21:26]},
]


def ranking(query):
    """55 names best first, without the reference (as stage 1 / 2 produce them)."""
    return [n for n in GALLERY if n != query["reference"]][::-1][:55]


@pytest.fixture
def files(tmp_path):
    ranked = np.array([ranking(q) for q in QUERIES])                      # (3, 55)
    subset = np.array([q["subset"][::-1] for q in QUERIES])               # (3, 5)
    return write_cirr_submission(tmp_path, "demo", [q["pairid"] for q in QUERIES], ranked, subset)


def edit(path, change):
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))
    return path


def test_written_files_are_valid_and_sorted(files):
    assert files["recall"].name == "recall_submission_demo.json"
    assert files["recall_subset"].name == "recall_subset_submission_demo.json"
    recall = json.loads(files["recall"].read_text())
    assert list(recall) == ["100", "12", "7", "metric", "version"]        # sort_keys, as the authors
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert recall["7"] == ranking(QUERIES[0])[:50]
    assert json.loads(files["recall_subset"].read_text())["12"] == GALLERY[15:12:-1]
    for path in files.values():
        assert validate_cirr_submission(path, QUERIES) == []
        assert validate_cirr_submission(path) == []


def test_writer_rejects_short_lists_and_repeated_pairids(tmp_path):
    ranked, subset = np.array([ranking(q) for q in QUERIES]), np.array([q["subset"] for q in QUERIES])
    with pytest.raises(EvaluationError, match="≥50"):
        write_cirr_submission(tmp_path, "x", [7, 12, 100], ranked[:, :49], subset)
    with pytest.raises(EvaluationError, match="≥3"):
        write_cirr_submission(tmp_path, "x", [7, 12, 100], ranked, subset[:, :2])
    with pytest.raises(EvaluationError, match="unique"):
        write_cirr_submission(tmp_path, "x", [7, 7, 100], ranked, subset)


@pytest.mark.parametrize("metric, change, message", [
    ("recall", lambda o: o.pop("12"), "1 test1 queries have no entry (e.g. pairids 12)"),
    ("recall", lambda o: o.update({"999": o["7"]}), "1 keys are not test1 pairids (e.g. 999)"),
    ("recall", lambda o: o.update(version="rc1"), "\"version\" is 'rc1'"),
    ("recall", lambda o: o.update(metric="recall@50"), "\"metric\" is 'recall@50'"),
    ("recall", lambda o: o.update(metric="recall_subset"), "but the file is named"),
    ("recall", lambda o: o["7"].pop(), "1 entries do not have exactly 50 names (e.g. pairids 7)"),
    ("recall", lambda o: o["7"].__setitem__(1, o["7"][0]), "1 entries name an image twice"),
    ("recall", lambda o: [o[k].__setitem__(0, q["reference"]) for k, q in (("7", QUERIES[0]), ("100", QUERIES[2]))],
     "2 entries name their query's reference image (e.g. pairids 7, 100)"),
    ("recall", lambda o: o.update({"7": "test1-1-0-img0"}), "1 entries are not lists of image names"),
    ("recall_subset", lambda o: o["12"].append(GALLERY[11]), "1 entries do not have exactly 3 names"),
    ("recall_subset", lambda o: o["12"].__setitem__(0, GALLERY[40]), "name images outside their query's subset"),
    ("recall_subset", lambda o: o["12"].__setitem__(0, GALLERY[10]), "name their query's reference image"),
])
def test_each_fault_is_reported(files, metric, change, message):
    problems = validate_cirr_submission(edit(files[metric], change), QUERIES)
    assert any(message in p for p in problems), problems


def test_without_queries_only_the_structure_is_checked(files):
    path = edit(files["recall"], lambda o: o.update({"abc": o.pop("7")}))
    assert validate_cirr_submission(path) == ["1 keys are not test1 pairids (e.g. abc)"]


def test_unreadable_or_oversized_files(tmp_path, files, monkeypatch):
    assert validate_cirr_submission(tmp_path / "absent.json") == [f"missing file {tmp_path / 'absent.json'}"]
    (tmp_path / "broken.json").write_text('{"version": "rc2", ')
    assert validate_cirr_submission(tmp_path / "broken.json")[0].startswith("not valid JSON")
    (tmp_path / "list.json").write_text("[]")
    assert validate_cirr_submission(tmp_path / "list.json") == ["expected one JSON object, found a list"]
    monkeypatch.setattr(submission, "MAX_BYTES", 1000)
    assert "the server accepts files under 1,000" in validate_cirr_submission(files["recall"], QUERIES)[0]
