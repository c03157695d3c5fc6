"""Stage-1 engine: feature store, batch composition, schedule, training and evaluation (tiny dims)."""

import pytest
import torch

from cirtutor.config import apply_overrides, get_preset
from cirtutor.data.registry import open_dataset
from cirtutor.engine.features import FeatureStore, encode_gallery
from cirtutor.engine.optim import cosine_lr
from cirtutor.engine.stage1 import batch_order, evaluate_filter, train_stage1
from cirtutor.errors import CirtutorError
from cirtutor.models import CandidateFilter

SMALL = ["data.synthetic_size=6", "data.synthetic_resolution=32", "data.resolution=32", "model.image_size=32",
         "stage1.batch_size=10", "stage1.epochs=5", "stage1.lr=1e-3"]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRTUTOR_CACHE", str(tmp_path / "cache"))
    return lambda preset="tiny": apply_overrides(get_preset(preset), SMALL)


def setup(cfg):
    torch.manual_seed(0)
    model = CandidateFilter(cfg.model)
    train, val = open_dataset(cfg.data, "train", load_images=False), open_dataset(cfg.data, "val")
    stores = [encode_gallery(model.encode_images, open_dataset(cfg.data, s, "gallery"), 16) for s in ("train", "val")]
    return model, train, val, *stores


def test_cosine_lr():
    assert cosine_lr(2e-5, 0) == 2e-5 and cosine_lr(2e-5, 1) == pytest.approx(0)
    assert cosine_lr(2e-5, 0.5) == pytest.approx(1e-5) and cosine_lr(2e-5, 1.5) == pytest.approx(1e-5)  # past the horizon it rises


def test_batch_order_random_and_reference_groups():
    queries = [{"reference": f"r{i // 5}"} for i in range(23)]
    g = torch.Generator().manual_seed(0)
    batches = list(batch_order(queries, 10, "random", g))
    assert len(batches) == 2 and len(set(sum(batches, []))) == 20  # drop_last
    order = [b[0] for b in batch_order(queries, 1, "reference_groups", torch.Generator().manual_seed(0))]
    refs = [queries[i]["reference"] for i in order]
    assert sorted(order) == list(range(23))
    assert sum(a != b for a, b in zip(refs, refs[1:])) == 4  # each reference's queries are contiguous
    assert refs != sorted(refs)  # the groups come in shuffled order
    again = [b[0] for b in batch_order(queries, 1, "reference_groups", torch.Generator().manual_seed(0))]
    assert again == order
    with pytest.raises(ValueError, match="batch_composition"):
        next(batch_order(queries, 10, "hard", g))


def test_feature_store_round_trip_and_errors(tmp_path):
    store = FeatureStore(["a", "b"], torch.randn(2, 5, 4))
    store.save(tmp_path / "f.safetensors")
    loaded = FeatureStore.load(tmp_path / "f.safetensors")
    assert loaded.names == ["a", "b"] and torch.equal(loaded[["b", "a"]], store[["b", "a"]])
    with pytest.raises(CirtutorError, match="no image features for 'c'"):
        store[["c"]]
    for dtype in (torch.float16, torch.float32):                       # memory-mapped: same rows, read lazily
        FeatureStore(["a", "b", "c"], torch.randn(3, 5, 4).to(dtype)).save(tmp_path / "m.safetensors")
        mapped = FeatureStore.load(tmp_path / "m.safetensors", mmap=True)
        full = FeatureStore.load(tmp_path / "m.safetensors")
        assert torch.equal(mapped[["c", "a"]], full[["c", "a"]]) and mapped[["b"]].dtype == torch.float32
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CirtutorError, match="delete the file"):
        FeatureStore.load(tmp_path / "bad.safetensors")


def test_training_lowers_the_loss_and_is_seeded(tiny):
    cfg = tiny()
    model, train, val, store_train, store_val = setup(cfg)
    history = train_stage1(model, train, store_train, cfg.stage1, log=lambda _: None).train
    per_epoch = [sum(h["loss"] for h in history if h["epoch"] == e) for e in range(cfg.stage1.epochs)]
    assert per_epoch[-1] < per_epoch[0]
    assert all(p.grad is None for p in model.visual_encoder.parameters())
    model2, *_ = setup(cfg)
    assert train_stage1(model2, train, store_train, cfg.stage1, log=lambda _: None).train == history
    metrics = evaluate_filter(model, val, store_val)
    assert set(metrics) == {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "avg"}
    assert all(0 <= v <= 100 for v in metrics.values()) and metrics["R@50"] >= metrics["R@10"] >= metrics["R@1"]


def test_fashioniq_evaluation_ranks_each_category_in_its_own_gallery(tiny):
    cfg = tiny("tiny_fashioniq")
    model, _, val, _, store_val = setup(cfg)
    metrics = evaluate_filter(model, val, store_val)
    assert set(metrics["per_category"]) == {"dress", "shirt", "toptee"}
    assert metrics["avg"] == pytest.approx((metrics["R@10"] + metrics["R@50"]) / 2)
    assert all(len(g) < 50 for g in val.galleries.values())  # tiny galleries: everything is within the top 50
    assert metrics["R@50"] == pytest.approx(100.0)


def test_init_temp_resets_the_checkpoint_temperature(tiny):
    cfg = apply_overrides(tiny(), ["stage1.init_temp=0.05"])
    cfg.stage1.epochs = 0                     # the library call: the reset happens before any step
    model = CandidateFilter(cfg.model)
    with torch.no_grad():
        model.temp.fill_(0.004)
    train_stage1(model, open_dataset(cfg.data, "train", load_images=False), FeatureStore([], torch.zeros(0)), cfg.stage1)
    assert model.temp.item() == pytest.approx(0.05)
    assert get_preset("paper_cirr").stage1.init_temp is None  # the paper keeps BLIP's
