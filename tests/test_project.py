"""Project set-up: pins agree everywhere, presets resolve, the CLI's main commands run."""
import json
import re
from pathlib import Path

import pytest

from cirtutor.cli import main
from cirtutor.config import PRESETS, apply_overrides, get_preset
from cirtutor.errors import CirtutorError

ROOT = Path(__file__).resolve().parents[1]


def pins(text):
    return dict(re.findall(r"^\s*-?\s*([A-Za-z0-9_.-]+)==([^\s#]+)", text, flags=re.M))


def test_environment_yml_pins_match_constraints():
    constraints = pins((ROOT / "constraints.txt").read_text())
    assert constraints["torch"] == "2.13.0"
    assert pins((ROOT / "environment.yml").read_text()) == constraints


def test_no_timm_or_torchvision_dependency():
    text = (ROOT / "pyproject.toml").read_text() + (ROOT / "constraints.txt").read_text()
    assert "timm" not in text and "torchvision" not in text


def test_presets_and_overrides():
    assert set(PRESETS) == {"tiny", "tiny_fashioniq", "paper_fashioniq", "paper_cirr"}
    assert get_preset("paper_cirr").data.resolution == 384 and get_preset("tiny").data.root is None
    cfg = apply_overrides(get_preset("tiny"), ["data.resolution=32", "data.root=/x", "data.root=none"])
    assert cfg.data.resolution == 32 and cfg.data.root is None
    assert apply_overrides(cfg, ["stage2.eval_ks=10,20,50"]).stage2.eval_ks == (10, 20, 50)
    assert apply_overrides(cfg, ["stage2.eval_ks=(5, 10)"]).stage2.eval_ks == (5, 10)  # a tuple as Python writes it
    assert get_preset("tiny").data.resolution == 64  # presets themselves are never modified
    for bad in (["data.nope=1"], ["data.resolution=big"], ["model.x=1"], ["resolution"]):
        with pytest.raises(CirtutorError):
            apply_overrides(get_preset("tiny"), bad)
    with pytest.raises(CirtutorError, match="unknown preset"):
        get_preset("huge")


def test_make_data_then_loaders_read_it(tmp_path, capsys):
    out = tmp_path / "tiny_cirr"
    assert main(["make-data", "--format", "cirr", "--out", str(out), "--size", "12", "--resolution", "32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"]["images"] == 72
    assert main(["data-stats", "--dataset", "cirr", "--annotations", str(out), "--images", str(out)]) == 0
    assert main(["make-data", "--format", "cirr", "--out", str(tmp_path), "--size", "12"]) == 2  # non-empty, foreign
    assert "refusing to write" in capsys.readouterr().err


def test_reproduce_tiny_fashioniq_end_to_end_and_reuses_its_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIRTUTOR_CACHE", str(tmp_path / "cache"))
    small = ["data.synthetic_size=9", "stage1.batch_size=8", "stage1.epochs=1", "stage2.batch_size=6", "stage2.epochs=1",
             "stage2.k=5", "stage2.eval_ks=3,5", "ablations="]
    argv = ["reproduce", "--preset", "tiny_fashioniq", "--run-dir", str(tmp_path / "run"),
            *[a for s in small for a in ("--set", s)]]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "building synthetic fashioniq dataset" in first and "done in" in first
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"dress R@10", "shirt R@50", "toptee R@10", "R@10", "R@50", "avg"} <= set(metrics["filter"])
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "found synthetic fashioniq dataset" in again and "found trained filter" in again


def test_cli_download_delegates(capsys):
    with pytest.raises(SystemExit) as e:
        main(["download", "--help"])
    assert e.value.code == 0 and "fashioniq" in capsys.readouterr().out


def test_open_dataset_resolves_tiny_presets(tmp_path, monkeypatch):
    from cirtutor.data.registry import open_dataset

    monkeypatch.setenv("CIRTUTOR_CACHE", str(tmp_path))
    for preset, split in (("tiny", "test1"), ("tiny_fashioniq", "test")):
        cfg = apply_overrides(get_preset(preset), ["data.synthetic_size=6", "data.synthetic_resolution=24",
                                                   "data.resolution=16"])
        ds = open_dataset(cfg.data, "train")
        assert ds[0]["ref_image"].shape == (3, 16, 16) and len(ds) == 30
        assert "target" not in open_dataset(cfg.data, split)[0]


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os
    import stat

    from cirtutor.io import UMASK, atomic_write_text

    path = atomic_write_text(tmp_path / "a.txt", "hello")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~UMASK
    assert path.read_text() == "hello" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_cli_pretrain_tiny_is_wired(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain-tiny", "--help"])
    assert e.value.code == 0 and "--steps" in capsys.readouterr().out


def test_every_notebook_teaches_in_the_house_shape_and_is_listed_in_the_readme():
    """Opens with what you will learn, ends with a recap and exercises, is committed executed
    without errors, and appears in the README's table of notebooks."""
    readme = (ROOT / "README.md").read_text()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 10
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        text = lambda c: "".join(c["source"])  # noqa: E731
        assert "What you will learn" in text(cells[0]), path.name
        tail = "\n".join(text(c) for c in cells[-3:] if c["cell_type"] == "markdown")
        assert "Recap" in tail and "Exercises" in tail, path.name
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c.get("execution_count") for c in code if text(c).strip()), f"{path.name} is not executed"
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", [])), path.name
        assert f"`{path.name}`" in readme, f"{path.name} is missing from the README's notebook table"
