"""The main job end to end on a small synthetic world: the per-stage commands chained through
one run folder, `reproduce` (report.md + metrics.json), subsampling, clear errors, and a
two-process DDP run under torchrun (gloo on CPU)."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from cirtutor.cli import main
from cirtutor.config import get_preset
from cirtutor.config import parse_spec
from cirtutor.errors import CirtutorError

SMALL = ["data.synthetic_size=20", "stage1.batch_size=10", "stage1.epochs=2", "stage2.batch_size=6", "stage2.epochs=1",
         "stage2.hard_pool=10", "stage2.k=10", "stage2.eval_ks=5,10"]
SETS = [arg for s in SMALL for arg in ("--set", s)]
RECALLS = {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRTUTOR_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_stage_commands_chain_through_one_run_folder(cache, capsys):
    run = str(cache / "run")
    assert main(["train-stage2", "--run-dir", run, *SETS]) == 2                       # nothing to start from yet
    assert "no trained filter" in capsys.readouterr().err
    assert main(["train-stage1", "--run-dir", run, *SETS]) == 0
    stage1 = cache / "run" / "seed0" / "stage1"
    assert {"filter.pt", "last.pt", "metrics.csv", "metrics.json"} <= {p.name for p in stage1.iterdir()}
    assert main(["extract-topk", "--run-dir", run, "--k", "5", *SETS]) == 0
    assert (cache / "run" / "seed0" / "topk" / "cirr_top_5_val.safetensors").is_file()
    assert main(["train-stage2", "--run-dir", run, *SETS]) == 2                       # too short for R@50: refused
    assert "--k 50" in capsys.readouterr().err
    assert main(["extract-topk", "--run-dir", run, *SETS]) == 0                       # the whole list (K <= 200)
    assert main(["train-stage2", "--run-dir", run, *SETS]) == 0
    out = capsys.readouterr().out
    assert "filter" in out and "K=10" in out
    assert main(["evaluate", "--run-dir", run, *SETS]) == 0
    metrics = json.loads((cache / "run" / "seed0" / "stage2" / "metrics.json").read_text())
    assert set(metrics) == {"filter", "K=5", "K=10"}
    assert metrics["K=10"]["R@10"] == pytest.approx(metrics["K=10"]["coverage"])  # a permutation of the top 10
    assert main(["submit", "--run-dir", run, *SETS]) == 2                              # test1 has no lists yet
    assert "extract-topk" in capsys.readouterr().err
    assert main(["extract-topk", "--run-dir", run, "--split", "test1", *SETS]) == 0
    assert main(["submit", "--run-dir", run, *SETS]) == 0
    assert "ok, ready to upload" in capsys.readouterr().out
    assert len(list((cache / "run" / "submission").glob("*.json"))) == 4


def test_stage_2_evaluates_the_top_k_file_it_finds(cache, capsys):
    """`evaluate` re-ranks the run's top-K file, not a ranking of its own: the file rewritten with the
    package's writer, its candidates swapped, changes the result; a file of another split is refused in one line."""
    from cirtutor.evaluation import load_topk, save_topk
    run = str(cache / "run")
    for command in (["train-stage1"], ["extract-topk"], ["train-stage2"]):
        assert main([*command, "--run-dir", run, *SETS]) == 0
    metrics = lambda: json.loads((cache / "run" / "seed0" / "stage2" / "metrics.json").read_text())  # noqa: E731
    before = metrics()
    path, = (cache / "run" / "seed0" / "topk").glob("cirr_top_*_val.safetensors")
    topk = load_topk(path)
    swapped = dataclasses.replace(topk, sorted_index_names=topk.sorted_index_names[:, ::-1], labels=None)
    save_topk(path, swapped)
    assert main(["evaluate", "--run-dir", run, *SETS]) == 0
    after = metrics()
    assert after["K=10"] != before["K=10"] and after["filter"] != before["filter"]
    assert after["K=10"]["coverage"] == pytest.approx(100 * swapped.labels[:, :10].any(1).mean())
    save_topk(path, dataclasses.replace(topk, split="test1", target_names=None, labels=None, group_labels=None))
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", run, *SETS]) == 2
    err = capsys.readouterr().err.strip()
    assert "split 'test1'" in err and len(err.splitlines()) == 1


def test_reproduce_writes_the_report_and_metrics(cache):
    run = cache / "run"
    assert main(["reproduce", "--run-dir", str(run), *SETS, "--set", "ablation_models=train"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"filter", "rerank", "ablations", "wall_time_s", "findings"}
    assert set(metrics["filter"]) == RECALLS and set(metrics["rerank"]) == {"K=5", "K=10"}
    assert set(metrics["ablations"]) == {"w/o Encoder-t", "w/o Encoder-z_t", "w. Ref_CLS + Spatial-6x6"}
    report = (run / "report.md").read_text()
    stage2 = json.loads((run / "seed0" / "stage2" / "metrics.json").read_text())
    assert f"{stage2['K=10']['R@10']:.1f}" in report and "Ablations" in report
    assert {p.name for p in (run / "figures").iterdir()} >= {"coverage_vs_k.png", "recall_vs_k.png", "rank_shift.png",
                                                              "findings.png"}
    assert metrics["rerank"]["K=10"]["R@1"] == stage2["K=10"]["R@1"]               # one source for both files
    card = metrics["findings"]                                                      # the scorecard, from the run folder
    f1 = next(r for r in card["findings"] if r["id"] == "F1")
    assert f1["values"] == [pytest.approx(stage2["K=10"]["R@1"] - stage2["filter"]["R@1"])]
    assert "## Which of the paper's findings this run reproduces" in report and "of 8 reproduced" in report
    assert "Load average when the run ended" in report


def test_reproduce_can_take_the_variants_from_the_shipped_models(cache, monkeypatch):
    """ablation_models="shipped": seed 0's variants are `trained_reranker`'s models with the metrics they
    were evaluated with, paired in the scorecard with the full model trained beside them; labelled."""
    from cirtutor import trained

    calls = []

    def fake(cfg, seed, ablation, verbose=True, data=None):
        calls.append((seed, ablation))
        r1 = {None: 30.0, "no_text": 21.0, "no_zt": 5.0, "ref_cls_spatial": 29.0}[ablation]
        return None, {"K=10": {"R@1": r1, "R@5": 50.0, "R@10": 60.0, "R@50": 90.0, "Rs@1": 70.0, "Rs@2": 80.0,
                               "Rs@3": 90.0, "avg": 60.0}}
    monkeypatch.setattr(trained, "trained_reranker", fake)
    monkeypatch.setattr(trained, "has_trained_reranker", lambda cfg, seed, ablation: True)
    run = cache / "run"
    assert main(["reproduce", "--run-dir", str(run), *SETS, "--set", "ablation_models=shipped"]) == 0
    assert {a for _, a in calls} == {None, "no_text", "no_zt", "ref_cls_spatial"} and {s for s, _ in calls} == {0}
    saved = json.loads((run / "seed0" / "stage2-no_text" / "metrics.json").read_text())
    assert saved["source"].startswith("shipped seed-0 model") and saved["full_model"]["K=10"]["R@1"] == 30.0
    card = json.loads((run / "metrics.json").read_text())["findings"]
    assert {r["id"]: r["values"] for r in card["findings"]}["F4"] == [9.0]
    report = (run / "report.md").read_text()
    assert "w/o Encoder-t †" in report and "full model (R_10), shipped †" in report
    monkeypatch.setattr(trained, "has_trained_reranker", lambda cfg, seed, ablation: ablation != "no_zt")
    calls.clear()
    assert main(["reproduce", "--run-dir", str(cache / "run2"), *SETS, "--set", "ablation_models=shipped"]) == 0
    assert {a for _, a in calls} == {None, "no_text", "ref_cls_spatial"}          # none shipped for no_zt: trained
    assert "source" not in json.loads((cache / "run2" / "seed0" / "stage2-no_zt" / "metrics.json").read_text())


def test_models_shipped_evaluates_the_trained_models_a_run_made_and_adopt_checks_their_settings(cache):
    """A run trains both stages ("train"); `trained.adopt` makes its models the cache's trained models (as shipping
    them does for a fresh clone); a second run with models="shipped" copies them in, evaluates them to the same
    numbers without training, and its report says so. A config with other settings cannot adopt them."""
    from cirtutor import trained
    from cirtutor.config import apply_overrides
    from cirtutor.reproduce import place_shipped

    cfg = apply_overrides(get_preset("tiny"), SMALL + ["ablations=()"])
    own = cache / "own"
    assert main(["reproduce", "--run-dir", str(own), *SETS, "--set", "ablations=()", "--set", "models=train"]) == 0
    assert (own / "seed0" / "stage1" / "metrics.csv").is_file()                     # trained in the run
    assert "shipped models" not in (own / "report.md").read_text()
    with pytest.raises(CirtutorError, match="other settings"):
        trained.adopt(apply_overrides(cfg, ["stage1.lr=1e-3"]), own, kind="filter")
    trained.adopt(cfg, own, kind="filter")
    trained.adopt(cfg, own, kind="reranker")
    run = cache / "run"
    assert main(["reproduce", "--run-dir", str(run), *SETS, "--set", "ablations=()", "--set", "models=shipped"]) == 0
    for stage, name in (("stage1", "filter.pt"), ("stage2", "reranker.pt")):
        assert (run / "seed0" / stage / name).read_bytes() == (own / "seed0" / stage / name).read_bytes()
    assert not (run / "seed0" / "stage1" / "metrics.csv").exists()                    # loaded, not trained
    evaluated = lambda r: json.loads((r / "metrics.json").read_text())["rerank"]        # noqa: E731
    assert evaluated(run) == evaluated(own)                                           # evaluated again: the same
    assert "shipped models" in (run / "report.md").read_text()
    with pytest.raises(CirtutorError, match="models='nope'"):
        place_shipped(dataclasses.replace(cfg, models="nope"), run, 0)


def test_subsample_keeps_what_the_queries_need(cache):
    from cirtutor.config import apply_overrides, get_preset
    from cirtutor.data.subsample import subsample
    from cirtutor.features import datasets

    cfg = apply_overrides(get_preset("tiny"), SMALL)
    train, val = datasets(cfg)
    t2, v2 = subsample(train, val, "train=0.5,val=3,gallery=20", seed=1)
    assert len(t2.queries) == round(len(train.queries) / 2) and len(v2.queries) == 3 and len(train.queries) > 10
    needed = {n for q in v2.queries for n in (q["reference"], q["target"], *q["subset"])}
    assert needed <= set(v2.gallery) and len(v2.gallery) == 20
    assert v2.gallery == [n for n in val.gallery if n in set(v2.gallery)]         # gallery order kept
    assert subsample(train, val, "train=0.5,val=3,gallery=20", seed=1)[1].queries == v2.queries  # seeded
    with pytest.raises(CirtutorError, match="KEY=N"):
        parse_spec("queries=10")


def test_reproduce_on_a_subsample_says_so(cache):
    run = cache / "run"
    assert main(["reproduce", "--run-dir", str(run), "--subsample", "train=0.5,val=4,gallery=25", *SETS,
                 "--set", "ablations=", "--set", "stage2.eval_ks=5"]) == 0
    assert "subsample" in (run / "report.md").read_text()
    assert json.loads((run / "results.json").read_text())["subsample"] == "train=0.5,val=4,gallery=25"


def test_two_process_ddp_training_under_torchrun(cache):
    """torchrun with two CPU processes (gloo): each takes every other batch, DDP averages the
    gradients, so an epoch has half the optimisation steps; rank 0 writes the run folder."""
    run = cache / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cirtutor.cli", "train-stage1", "--run-dir", str(run), *SETS]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (run / "seed0" / "stage1" / "metrics.csv").read_text().strip().splitlines()[1:]
    single = 100 // 10                                                              # 100 train queries, batch 10
    assert len(rows) == 2 * (single // 2)                                           # 2 epochs of 5 steps
    assert (run / "seed0" / "stage1" / "filter.pt").is_file()
    assert done.stdout.count("F: ") == 1                                            # only rank 0 reports


def test_wrong_device_is_a_clear_error(cache, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train-stage1", "--run-dir", str(cache / "run"), *SETS, "--set", "device=cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_variants_take_the_rerankers_own_dropout():
    from cirtutor.config import apply_overrides
    from cirtutor.pipeline import variant_config
    cfg = apply_overrides(get_preset("tiny"), ["stage2.dropout=0.0"])
    assert cfg.stage2.dropout == 0.0 and cfg.model.dropout == 0.1          # the filter keeps BLIP's dropout
    for ablation in (None, "no_text", "no_zt"):
        assert variant_config(cfg, ablation).model.dropout == 0.0
    assert variant_config(get_preset("paper_cirr"), None).model.dropout == 0.1  # None: the model's (paper)
    assert variant_config(cfg, "no_text").model.streams == "z_t" and cfg.model.streams == "both"


def test_weights_key_follows_the_weights_contents(tmp_path):
    from cirtutor.features import weights_key

    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"\x00" * 100)
    (a / "config.json").write_text("{}")
    key = weights_key(a)
    b = tmp_path / "b"
    b.mkdir()
    for f in a.iterdir():
        (b / f.name).write_bytes(f.read_bytes())
    assert weights_key(b) == key                                   # the same contents elsewhere: the same key
    (b / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    assert weights_key(b) != key                                   # new weights at the same path: a new key
    assert weights_key(a / "config.json") != key


def test_ablation_budget_shortens_only_the_variants_stage_2():
    from cirtutor.config import apply_overrides
    from cirtutor.pipeline import ablation_budget
    cfg = apply_overrides(get_preset("tiny"), ["stage2.epochs=10", "ablation_epochs=2"])
    short = ablation_budget(cfg)
    assert short.stage2.epochs == 2 and cfg.stage2.epochs == 10                       # the caller's config untouched
    assert short.stage1 == cfg.stage1 and short.model == cfg.model
    assert short.stage2 == dataclasses.replace(cfg.stage2, epochs=2)
    assert ablation_budget(apply_overrides(cfg, ["ablation_epochs=20"])) is not None
    assert ablation_budget(apply_overrides(cfg, ["ablation_epochs=20"])).stage2.epochs == 10   # never longer than R
    assert ablation_budget(dataclasses.replace(cfg, ablation_epochs=None)).stage2.epochs == 10
    with pytest.raises(CirtutorError, match="ablation_epochs"):
        ablation_budget(dataclasses.replace(cfg, ablation_epochs=0))
