"""cirtutor.trained on a small synthetic world: the trained filter is built once into the cache
and loaded afterwards (same weights, same metrics, says "found"); its folder is keyed by the
config and the seed; batch_breakdown splits Eq. 1's softmax by batch composition."""
import pytest
import torch

from cirtutor.config import apply_overrides, get_preset
from cirtutor.errors import CirtutorError
from cirtutor.trained import batch_breakdown, filter_data, trained_filter, trained_filter_dir, trained_filter_history

SMALL = ["data.synthetic_size=20", "stage1.epochs=2", "stage1.batch_size=10"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CIRTUTOR_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def cfg(cache):
    return apply_overrides(get_preset("tiny"), SMALL)


@pytest.fixture(scope="module")
def data(cfg):
    return filter_data(cfg, verbose=False)


@pytest.fixture(scope="module")
def built(cfg, data):
    """The first call: trains into the (empty) cache; returns (filter, metrics, printed text)."""
    import contextlib
    import io

    assert not trained_filter_dir(cfg).exists()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        filt, metrics = trained_filter(cfg, data=data)
    return filt, metrics, text.getvalue()


def test_first_call_trains_into_the_cache(cfg, built):
    filt, metrics, printed = built
    assert printed.startswith("no trained filter in the cache: training one (stage 1")
    assert not filt.training
    assert {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3"} <= set(metrics)
    stage1 = trained_filter_dir(cfg) / "seed0" / "stage1"
    assert {"filter.pt", "metrics.json", "metrics.csv"} <= {p.name for p in stage1.iterdir()}
    assert not {"last.pt", "best.pt"} & {p.name for p in stage1.iterdir()}  # spare checkpoints are dropped
    assert (trained_filter_dir(cfg) / "config.json").is_file()
    assert [p.name for p in trained_filter_dir(cfg).parent.iterdir()] == [trained_filter_dir(cfg).name]  # no temp left


def test_second_call_loads_the_same_filter(cfg, built, capsys):
    filt, metrics, _ = built
    again, metrics_again = trained_filter(cfg)
    assert capsys.readouterr().out == "found trained tiny filter (tiny), loading…\n"
    assert metrics_again == metrics and not again.training
    state, state_again = filt.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys() and all(torch.equal(state[k], state_again[k]) for k in state)
    trained_filter(cfg, verbose=False)
    assert capsys.readouterr().out == ""


def test_training_changed_the_text_side_only(data, built):
    from cirtutor.models.loading import load_filter

    filt, _, _ = built
    start, _ = load_filter(data.weights, filt.cfg)
    assert not torch.equal(start.text_proj.weight, filt.text_proj.weight)         # trained
    assert torch.equal(start.vision_proj.weight, filt.vision_proj.weight)         # frozen (docs/authors_code.md, 'vision_proj stays frozen')
    assert filt.temp.item() != pytest.approx(start.temp.item())                   # reset to 0.07, then learned


def test_loading_leaves_the_callers_random_numbers_alone(cfg, built):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trained_filter(cfg, verbose=False)
    assert torch.equal(torch.rand(3), expected)


def test_history_has_one_row_per_step(cfg, data, built):
    history = trained_filter_history(cfg)
    steps = 2 * (len(data.train.queries) // 10)                                    # epochs x batches (drop_last)
    assert [r["step"] for r in history] == list(range(1, steps + 1))
    assert set(history[0]) == {"step", "epoch", "loss", "lr"} and history[0]["lr"] == cfg.stage1.lr
    with pytest.raises(CirtutorError, match="call trained_filter"):
        trained_filter_history(cfg, seed=7)


def test_the_folder_is_keyed_by_config_and_seed(cache):
    base = apply_overrides(get_preset("tiny"), SMALL)
    folder = trained_filter_dir(base)
    assert folder.name.startswith("tiny-") and folder.parent.name == "trained"
    assert trained_filter_dir(base, seed=1) != folder
    for override in ("stage1.lr=1e-3", "data.seed=1", "model.dropout=0.0", "subsample=train=0.5"):
        assert trained_filter_dir(apply_overrides(base, [override])) != folder, override
    for override in ("stage2.k=10", "out_dir=elsewhere", "device=cpu"):         # not what stage 1 depends on
        assert trained_filter_dir(apply_overrides(base, [override])) == folder, override
    assert trained_filter_dir(apply_overrides(base, [])) == folder                 # deterministic


def test_a_folder_without_a_filter_is_an_error(cache):
    cfg = apply_overrides(get_preset("tiny"), [*SMALL, "stage1.lr=3e-3"])
    trained_filter_dir(cfg).mkdir(parents=True)
    with pytest.raises(CirtutorError, match="holds no finished filter"):
        trained_filter(cfg, verbose=False)


def test_batch_breakdown_by_composition(data, built):
    from cirtutor.engine.stage1 import FilterObjective, batch_order, stage1_inputs

    filt, _, _ = built
    store = data.stores["train"]
    groups = batch_breakdown(filt, data.train, store, "reference_groups", 10, 3)
    assert set(groups) == {"loss", "p target", "p same reference", "p other references", "siblings"}
    assert all(v.shape == (3,) for v in groups.values()) and not filt.training
    total = groups["p target"] + groups["p same reference"] + groups["p other references"]
    torch.testing.assert_close(total, torch.ones(3))                               # every row's softmax, split in 3
    assert groups["siblings"].tolist() == [4.0, 4.0, 4.0]                          # 2 whole groups of 5 edits
    first = next(batch_order(data.train.queries, 10, "reference_groups", torch.Generator().manual_seed(0)))
    with torch.no_grad():
        expected = FilterObjective(filt)(*stage1_inputs(data.train, store, "cpu")(first, 0))
    assert groups["loss"][0].item() == pytest.approx(expected.item(), rel=1e-5)   # Eq. 1 as training computes it
    again = batch_breakdown(filt, data.train, store, "reference_groups", 10, 3)
    assert all(torch.equal(again[k], groups[k]) for k in groups)                   # seeded
    random = batch_breakdown(filt, data.train, store, "random", 10, 3)
    assert (random["siblings"] < 4).all() and not torch.equal(random["loss"], groups["loss"])
    with pytest.raises(CirtutorError, match="batches of 10"):
        batch_breakdown(filt, data.train, store, "random", 10, 1000)


RERANKER = ["stage2.epochs=1", "stage2.batch_size=6", "stage2.hard_pool=10", "stage2.k=10", "stage2.eval_ks=(5,10)"]


def test_trained_reranker_is_built_once_then_loaded(cfg, data, built, capsys):
    from cirtutor.trained import trained_reranker, trained_reranker_dir

    rcfg = apply_overrides(cfg, RERANKER)
    model, metrics = trained_reranker(rcfg, data=data)
    printed = capsys.readouterr().out
    assert "no trained re-ranker in the cache: training one (stage 2" in printed
    assert "found trained tiny filter" in printed                             # stage 2 starts from the cached filter
    assert not model.training and {"filter", "K=5", "K=10"} <= set(metrics)
    assert metrics["filter"] == built[1]                                      # the same F as the cached filter's
    again, metrics_again = trained_reranker(rcfg)
    assert capsys.readouterr().out == "found trained tiny re-ranker (tiny), loading…\n" and metrics_again == metrics
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert trained_reranker_dir(rcfg, ablation="no_text") != trained_reranker_dir(rcfg)
    out = trained_reranker_dir(rcfg) / "seed0" / "stage2"
    assert not {"last.pt", "best.pt"} & {p.name for p in out.iterdir()}
    with pytest.raises(CirtutorError, match="unknown ablation"):
        trained_reranker(rcfg, ablation="nope")


def test_shipped_compact_copies_rebuild_the_trained_models(cfg, data, built, tmp_path, monkeypatch, capsys):
    """ship() packs the cached filter and re-ranker; with the cache emptied, trained_* rebuild them
    from the shipped copy (no training) with the same outputs and the same recorded metrics."""
    import shutil

    from cirtutor import trained as tr

    rcfg = apply_overrides(cfg, RERANKER)
    model, metrics = tr.trained_reranker(rcfg, data=data)
    filt, f_metrics = built[0], built[1]
    monkeypatch.setattr(tr, "SHIPPED", tmp_path / "shipped")
    tr.ship(cfg, kind="filter")
    tr.ship(rcfg, kind="reranker")
    size = sum(f.stat().st_size for f in (tmp_path / "shipped").rglob("*") if f.is_file())
    assert size < 8 * 2**20                                       # vs ~33 MB for the two whole fp32 state dicts
    shutil.rmtree(tr.trained_filter_dir(cfg))
    shutil.rmtree(tr.trained_reranker_dir(rcfg))
    capsys.readouterr()
    filt2, f_metrics2 = tr.trained_filter(cfg)
    model2, metrics2 = tr.trained_reranker(rcfg)
    out = capsys.readouterr().out
    assert "found shipped trained tiny filter (tiny)" in out and "found shipped trained tiny re-ranker (tiny)" in out
    assert "training" not in out and f_metrics2 == f_metrics and metrics2 == metrics
    for a, b in ((filt, filt2), (model, model2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa) < 1e-5
    assert tr.trained_filter_history(cfg)[-1]["step"] > 0


def test_pack_refuses_what_the_decay_rule_cannot_rebuild():
    from cirtutor.compact import EMBEDDINGS, pack, unpack

    torch.manual_seed(0)
    start = {EMBEDDINGS: torch.randn(50, 4), "w": torch.randn(3), "frozen": torch.randn(2)}
    trained = {EMBEDDINGS: start[EMBEDDINGS] * 0.9, "w": start["w"] + 1, "frozen": start["frozen"].clone()}
    trained[EMBEDDINGS][[3, 7]] += 0.5                             # two rows moved by training
    packed = pack(trained, start, {EMBEDDINGS, "w"})
    assert packed["compact.embedding_rows"].tolist() == [3, 7]
    assert packed["compact.embedding_decay"].item() == pytest.approx(0.9)
    rebuilt = unpack(packed, start)
    assert all(torch.allclose(rebuilt[k], trained[k], atol=1e-6) for k in trained)
    trained["frozen"] += 1
    with pytest.raises(CirtutorError, match="frozen but differs"):
        pack(trained, start, {EMBEDDINGS, "w"})


def test_the_shipped_trained_models_are_the_tiny_presets_own():
    """A fresh clone must load, not train, the notebooks' models: when the tiny recipe (or the
    mini-BLIP) changes, the compact copies must be shipped again (`trained.ship`)."""
    from cirtutor import trained as tr

    from cirtutor.study import STUDIES, variant_config

    tiny = get_preset("tiny")
    expected = [tr.trained_filter_dir(tiny)] + [tr.trained_reranker_dir(tiny, ablation=a)
                                                 for a in (None, *tiny.ablations)]   # notebooks 04-07
    fiq = get_preset("tiny_fashioniq")
    expected += [tr.trained_filter_dir(fiq), tr.trained_reranker_dir(fiq)]                # notebook 05, section 3
    expected += [tr.trained_filter_dir(variant_config("cala", v)) for v in STUDIES["cala"]]  # notebook 08
    expected += [tr.trained_zeroshot_dir(variant_config("zeroshot", v)) for v in STUDIES["zeroshot"]]  # notebook 09
    missing = [d.name for d in expected if not (tr.SHIPPED / d.name).is_dir()]
    assert not missing, f"ship these again with cirtutor.trained.ship: {missing}"
    stale = {p.name for p in tr.SHIPPED.iterdir()} - {d.name for d in expected}
    assert not stale, f"shipped copies no preset uses any more (delete them): {sorted(stale)}"


def test_a_cala_filter_keeps_its_training_only_modules_and_ships_them(cache, data, tmp_path, monkeypatch, capsys):
    """stage1.aux=cala: the filter folder also holds CaLa's HCA and TAC (for notebook 08), which
    trained_cala loads (strictly) and ship/unship carry; a plain config is refused."""
    import shutil

    from cirtutor import trained as tr
    from cirtutor.pipeline import AUX_MODULES

    ccfg = apply_overrides(get_preset("tiny"), SMALL + ["stage1.aux=cala", "stage1.epochs=1"])
    filt, cala, metrics = tr.trained_cala(ccfg, data=data)
    assert (tr.trained_filter_dir(ccfg) / "seed0" / "stage1" / AUX_MODULES).is_file()
    assert not cala.training and not any("hca" in k or "tac" in k for k in filt.state_dict())
    init = tr.CaLa(96, 96)
    assert any(not torch.equal(a, b) for a, b in zip(cala.state_dict().values(), init.state_dict().values()))
    monkeypatch.setattr(tr, "SHIPPED", tmp_path / "shipped")
    tr.ship(ccfg, kind="filter")
    shutil.rmtree(tr.trained_filter_dir(ccfg))
    _, cala2, metrics2 = tr.trained_cala(ccfg)
    assert "found shipped" in capsys.readouterr().out and metrics2 == metrics
    assert all(torch.equal(a, b) for a, b in zip(cala.state_dict().values(), cala2.state_dict().values()))
    with pytest.raises(CirtutorError, match="stage1.aux='cala'"):
        tr.trained_cala(apply_overrides(get_preset("tiny"), SMALL))


def test_a_zero_shot_model_is_trained_once_then_loaded_and_ships(cfg, data, tmp_path, monkeypatch, capsys):
    """trained_zeroshot: trained into the cache (Stage I, then Stage II with a budget), loaded on
    the next call, keyed by the zeroshot section (not stage 1's); ship/unship copy it exactly."""
    import shutil

    from cirtutor import trained as tr
    from cirtutor.engine.zeroshot import trainable_state
    from cirtutor.pipeline import zeroshot_dir

    zcfg = apply_overrides(cfg, ["zeroshot.epochs=1", "zeroshot.batch_size=16", "zeroshot.budget=0.2",
                                 "zeroshot.stage2_epochs=1", "zeroshot.stage2_batch_size=8"])
    capsys.readouterr()
    model, metrics = tr.trained_zeroshot(zcfg, data=data)
    assert "no trained zero-shot model [phi (Pic2Word) + Stage II (20% of triplets)] in the cache: training one" \
        in capsys.readouterr().out
    folder = tr.trained_zeroshot_dir(zcfg)
    assert {"zeroshot.safetensors", "metrics.json", "stage1.csv", "stage2.csv", "stage2_queries.json"} <= \
        {p.name for p in zeroshot_dir(folder, 0).iterdir()}
    assert not model.training and len(model.adapters) == 4 and {"R@1", "Rs@1"} <= set(metrics)
    again, metrics_again = tr.trained_zeroshot(zcfg)
    assert capsys.readouterr().out == ("found trained tiny zero-shot model [phi (Pic2Word) + Stage II (20% of triplets)] "
                                       "(tiny), loading…\n") and metrics_again == metrics
    state = trainable_state(model)
    assert all(torch.equal(state[k], v) for k, v in trainable_state(again).items())
    assert tr.trained_zeroshot_history(zcfg, stage=2)[-1]["step"] == len(tr.trained_zeroshot_history(zcfg, stage=2))
    with pytest.raises(CirtutorError, match="needs zeroshot.budget"):
        tr.trained_zeroshot_history(apply_overrides(zcfg, ["zeroshot.budget=0"]), stage=2)
    assert tr.trained_zeroshot_dir(apply_overrides(zcfg, ["stage1.epochs=9"])) == folder     # stage 1 plays no part
    assert tr.trained_zeroshot_dir(apply_overrides(zcfg, ["zeroshot.inject_layers=1"])) != folder
    assert tr.trained_zeroshot_dir(zcfg, seed=1) != folder
    monkeypatch.setattr(tr, "SHIPPED", tmp_path / "shipped")
    tr.ship(zcfg, kind="zeroshot")
    shutil.rmtree(folder)
    shipped, metrics_shipped = tr.trained_zeroshot(zcfg)
    out = capsys.readouterr().out
    assert "found shipped trained tiny zero-shot model [phi (Pic2Word)" in out and "training" not in out
    assert metrics_shipped == metrics
    assert all(torch.equal(state[k], v) for k, v in trainable_state(shipped).items())


def test_zero_shot_stage_one_can_train_on_a_plain_image_folder(cfg, data, tmp_path, capsys):
    """zeroshot.images=DIR: Stage I on every image under DIR (features cached once), no triplets;
    a missing or empty folder and the soft alignment (no captions) are refused clearly."""
    from PIL import Image

    from cirtutor import trained as tr
    from cirtutor.cache import cache_dir
    from cirtutor.errors import DataError

    folder = tmp_path / "images"
    for i in range(20):
        path = folder / ("a" if i % 2 else "b") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48 + i, 40), (12 * i, 90, 200 - 5 * i)).save(path)
    (folder / "notes.txt").write_text("not an image")
    zcfg = apply_overrides(cfg, [f"zeroshot.images={folder}", "zeroshot.epochs=1", "zeroshot.batch_size=8"])
    model, metrics = tr.trained_zeroshot(zcfg, data=data, verbose=False)
    history = tr.trained_zeroshot_history(zcfg)
    assert len(history) == 2 and {"R@1", "Rs@1"} <= set(metrics)          # 20 images // 8 = 2 steps
    assert tr.trained_zeroshot_dir(zcfg) != tr.trained_zeroshot_dir(cfg)
    assert len(list((cache_dir() / "features").glob("folder-images-*.safetensors"))) == 1
    (tmp_path / "empty").mkdir()
    for bad, match in ((tmp_path / "nowhere", "image folder not found"), (tmp_path / "empty", "no images in")):
        with pytest.raises(DataError, match=match):
            tr.trained_zeroshot(apply_overrides(zcfg, [f"zeroshot.images={bad}"]), data=data, verbose=False)
    with pytest.raises(CirtutorError, match="soft_weight=0 for an image folder"):
        tr.trained_zeroshot(apply_overrides(zcfg, ["zeroshot.soft_weight=1"]), data=data, verbose=False)
