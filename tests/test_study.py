"""cirtutor.study: variants as overrides, gathering seeds from reproduce's results.json (or the
zero-shot runner), the mean ± std table, the seed-0 check, and the shipped results' consistency
with STUDIES."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cirtutor import study as st
from cirtutor.errors import CirtutorError

KEYS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3")


def metrics(base: float) -> dict:
    return {k: base + i for i, k in enumerate(KEYS)} | {"avg": base}


def fake_reproduce(cfg, *, seeds, out):
    """What reproduce writes, with numbers that depend on the variant's settings and the seed."""
    shift = 10.0 * (cfg.stage1.aux == "cala") + 5.0 * cfg.stage1.cala.normalize_aux
    runs = [{"seed": s, "filter": metrics(shift + s), "rerank": metrics(shift + 2 * s + 1)} for s in range(seeds)]
    results = {"k": 50, "dataset": "cirr", "filter": runs[0]["filter"], "rerank": {"K=50": runs[0]["rerank"]}}
    if seeds > 1:
        results["seed_runs"] = runs
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(results))
    fake_reproduce.calls.append((cfg.stage1.aux, cfg.stage1.cala.normalize_aux, tuple(cfg.ablations), seeds))
    return 0


def test_run_study_runs_each_variant_and_gathers_its_seeds(tmp_path, monkeypatch):
    fake_reproduce.calls = []
    monkeypatch.setattr(st, "reproduce", fake_reproduce)
    out = st.run_study("cala", seeds=3, root=tmp_path)
    assert fake_reproduce.calls == [("none", False, (), 3), ("cala", False, (), 3), ("cala", True, (), 3)]
    assert json.loads((tmp_path / "study.json").read_text()) == out
    stats = out["variants"]["cala_normalized"]["stats"]
    assert stats["filter"]["R@1"] == pytest.approx({"mean": 16.0, "std": 1.0})      # 15, 16, 17
    assert stats["rerank"]["R@1"] == pytest.approx({"mean": 18.0, "std": 2.0})      # 16, 18, 20
    assert stats["rerank"]["avg"] == pytest.approx({"mean": 18.0, "std": 2.0}) and set(stats) == {"filter", "rerank"}
    text = st.table(out, "filter")
    assert text.splitlines()[2].startswith("| plain | 1.0 ± 1.0 |") and len(text.splitlines()) == 5
    fake_reproduce.calls = []
    again = st.run_study("cala", seeds=3, root=tmp_path, variants=["cala"])    # a subset keeps the others
    assert fake_reproduce.calls == [("cala", False, (), 3)] and again["variants"] == out["variants"]
    assert list(again["variants"]) == ["plain", "cala", "cala_normalized"]
    st.check_seed0(out, "cala", "filter", metrics(10.0))
    with pytest.raises(CirtutorError, match="differs"):
        st.check_seed0(out, "cala", "filter", metrics(10.5))


def test_a_single_seed_run_is_gathered_too():
    results = {"k": 50, "filter": metrics(1), "rerank": {"K=10": metrics(2), "K=50": metrics(3)}}
    assert st.collect(results) == [{"seed": 0, "filter": metrics(1), "rerank": metrics(3)}]


def test_unknown_studies_and_variants_say_what_exists():
    with pytest.raises(CirtutorError, match="expected one of cala"):
        st.variant_config("calla", "plain")
    with pytest.raises(CirtutorError, match="cala_normalized"):
        st.variant_config("cala", "normalized")


def test_the_zeroshot_runner_trains_each_variant_per_seed_and_records_the_references(tmp_path, monkeypatch):
    calls = []

    def fake_trained_zeroshot(cfg, seed, data=None):
        calls.append((cfg.zeroshot.budget, cfg.zeroshot.mapper, seed))
        return None, metrics(100 * cfg.zeroshot.budget + seed)

    monkeypatch.setattr(st, "filter_data", lambda cfg: SimpleNamespace(weights=None, device="cpu", val=None,
                                                                       stores={"val": None}))
    monkeypatch.setattr(st, "build_zeroshot", lambda weights, cfg: torch.nn.Identity())
    monkeypatch.setattr(st, "training_free_baselines", lambda *a, **k: {"image only": metrics(50)})
    monkeypatch.setattr(st, "trained_zeroshot", fake_trained_zeroshot)
    out = st.run_study("zeroshot", seeds=2, root=tmp_path, variants=["baseline", "stage2_5"])
    assert calls == [(0.0, "mlp", 0), (0.0, "mlp", 1), (0.05, "mlp", 0), (0.05, "mlp", 1)]
    assert out["references"] == {"image only": metrics(50)} and "k" not in out
    assert out["variants"]["stage2_5"]["stats"]["zeroshot"]["R@1"] == pytest.approx({"mean": 5.5, "std": 0.5 ** 0.5})
    assert st.table(out, "zeroshot").splitlines()[3].startswith("| stage2_5 | 5.5 ± 0.7 |")
    supervised = {"k": 20, "variants": {"plain": {"stats": {"filter": {"R@1": 1}, "rerank": {"R@1": 2}}}}}
    rows = st.zeroshot_rows(out, supervised, labels={"baseline": "phi"})
    assert list(rows) == ["image only (no training)", "phi", "stage2_5", "supervised filter F", "supervised re-ranker R_20"]
    assert rows["image only (no training)"]["R@1"] == {"mean": 50.0, "std": 0.0} and rows["supervised filter F"] == {"R@1": 1}
    calls.clear()
    again = st.run_study("zeroshot", seeds=2, root=tmp_path, variants=["injection"])   # merged, references kept
    assert list(again["variants"]) == ["baseline", "injection", "stage2_5"] and again["references"] == out["references"]
    with pytest.raises(CirtutorError, match="no variant 'phi'"):
        st.run_study("zeroshot", seeds=1, root=tmp_path, variants=["phi"])


@pytest.mark.parametrize("name", ["cala", "zeroshot"])
def test_the_shipped_study_matches_its_definition_and_its_own_runs(name):
    """The shipped file must come from the variants STUDIES defines, and its mean ± std from its runs."""
    shipped = st.shipped_study(name)
    assert {v: tuple(e["overrides"]) for v, e in shipped["variants"].items()} == st.STUDIES[name]
    for entry in shipped["variants"].values():
        assert sorted(r["seed"] for r in entry["runs"]) == list(range(shipped["seeds"]))
        assert entry["stats"] == st.stats(entry["runs"])


def test_the_findings_runner_keeps_the_variants_and_judges_every_seed(tmp_path, monkeypatch):
    """`study findings`: the preset's variants stay on, trained as long as R, for every seed; the
    study records each seed's findings record and the scorecard."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_findings import write_run

    calls = []

    def fake(cfg, *, seeds, out):
        calls.append((cfg.ablations, cfg.ablation_models, cfg.ablation_epochs, seeds))
        write_run(Path(out), seeds=range(seeds), ablations=cfg.ablations)
    monkeypatch.setattr(st, "reproduce", fake)
    out = st.run_study("findings", seeds=3, root=tmp_path)
    assert calls == [(("no_text", "no_zt", "ref_cls_spatial"), "train", None, 3)]
    runs = out["variants"]["tiny"]["runs"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and set(runs[0]["ablations"]) == {"no_text", "no_zt", "ref_cls_spatial"}
    card = out["findings"]
    assert out["dataset"] == "cirr" and card["seeds"] == [0, 1, 2] and card["total"] == 8
    assert {r["id"]: r["values"] for r in card["findings"]}["F1"] == [5.0, 5.0, 5.0]
    assert set(out["variants"]["tiny"]["stats"]) == {"filter", "rerank", "rerank_max"}


def test_tiny_cala_and_zeroshot_studies_keep_the_backbone_they_were_measured_on():
    """In tiny mode the CaLa and zero-shot studies run on the 64-dim mini-BLIP their shipped models were trained
    on; the findings study on the preset's own (32 dims, BLIP's ratio); paper presets are never pinned."""
    from cirtutor.config import get_preset
    from cirtutor.study import STUDIES, variant_config

    assert get_preset("tiny").model.embed_dim == 32
    assert variant_config("cala", "plain").model.embed_dim == 64
    assert variant_config("zeroshot", "full").model.embed_dim == 64
    assert variant_config("findings", "tiny").model.embed_dim == 32
    assert variant_config("cala", "plain", "paper_cirr").model.embed_dim == get_preset("paper_cirr").model.embed_dim
    assert all(variant_config(study, v).models == "train" for study in STUDIES for v in STUDIES[study])  # never shipped
