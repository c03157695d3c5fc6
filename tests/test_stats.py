"""`cirtutor data-stats`: counts per split/category, image checks, exit codes."""
import json

from cirtutor.cli import main


def run(capsys, *argv):
    code = main(["data-stats", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(text):
    """The table lines of the text report, whitespace-normalised."""
    return [" ".join(line.split()) for line in text.splitlines()]


def test_fixture_counts_and_ok(capsys, fiq_root):
    code, out, _ = run(capsys, "--dataset", "fashioniq", "--annotations", str(fiq_root), "--images", str(fiq_root / "images"))
    assert code == 0 and out.strip().endswith("OK")
    assert "train dress 4 6" in rows(out) and "test toptee 3 6" in rows(out)
    assert "54 checked, 0 missing, 0 corrupt" in out


def test_missing_and_corrupt_images_fail_with_a_report(capsys, cirr_root):
    (cirr_root / "dev" / "dev-0-1-img1.png").unlink()
    (cirr_root / "test1" / "test1-1-0-img0.png").write_bytes(b"oops")
    code, out, _ = run(capsys, "--dataset", "cirr", "--annotations", str(cirr_root), "--images", str(cirr_root), "--json")
    report = json.loads(out)
    assert code == 1
    assert report["images"]["missing"] == [str(cirr_root / "dev" / "dev-0-1-img1.png")]
    assert report["images"]["corrupt"] == [str(cirr_root / "test1" / "test1-1-0-img0.png")]
    assert [(r["split"], r["queries"], r["gallery"]) for r in report["rows"]] == \
        [("train", 6, 18), ("val", 4, 12), ("test1", 4, 12)]


def test_names_outside_the_image_list_are_reported(capsys, fiq_root):
    path = fiq_root / "captions" / "cap.dress.val.json"
    entries = json.loads(path.read_text())
    entries[0]["target"] = "B000000000"
    path.write_text(json.dumps(entries))
    code, out, _ = run(capsys, "--dataset", "fashioniq", "--annotations", str(fiq_root))
    assert code == 1 and "INCONSISTENT val/dress: 1 name(s)" in out and "B000000000" in out


def test_missing_split_files_show_as_absent(capsys, cirr_root):
    (cirr_root / "cirr" / "captions" / "cap.rc2.train.json").unlink()
    (cirr_root / "cirr" / "image_splits" / "split.rc2.test1.json").unlink()
    code, out, _ = run(capsys, "--dataset", "cirr", "--annotations", str(cirr_root / "cirr"))
    assert code == 0
    assert "train - absent 18" in rows(out) and "test1 - 4 absent" in rows(out)


def test_no_annotations_is_exit_2_with_a_hint(capsys, tmp_path):
    code, _, err = run(capsys, "--dataset", "cirr", "--annotations", str(tmp_path))
    assert code == 2 and "does not look like CIRR" in err and "download_cirr.py" in err


def test_real_annotation_counts(capsys, shared_data):
    code, out, _ = run(capsys, "--dataset", "fashioniq", "--annotations", str(shared_data / "fashion-iq"), "--json")
    rows = {(r["split"], r["category"]): (r["queries"], r["gallery"]) for r in json.loads(out)["rows"]}
    assert code == 0
    assert rows[("val", "dress")] == (2017, 3817) and rows[("val", "shirt")] == (2038, 6346)
    assert rows[("val", "toptee")] == (1961, 5373) and rows[("train", "toptee")] == (6027, 16121)
    code, out, _ = run(capsys, "--dataset", "cirr", "--annotations", str(shared_data / "cirr"), "--json")
    rows = {r["split"]: (r["queries"], r["gallery"]) for r in json.loads(out)["rows"]}
    assert code == 0 and rows == {"train": (None, 16939), "val": (4181, 2297)}
