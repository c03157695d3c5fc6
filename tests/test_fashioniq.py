"""Fashion-IQ loader: real schema, both modes, caption modes, and clear errors."""
import json

import pytest
import torch

from cirtutor.data import CATEGORIES, TRAIN_ORDER, FashionIQ, ImageTransform, collate
from cirtutor.errors import DataError
from tests.conftest import fabricate_image


def test_val_queries_yield_names_and_joined_text(fiq_root):
    ds = FashionIQ(fiq_root, "val", "dress")
    item = ds[0]
    assert item["reference"] == "B01FIXT000" and item["target"] == "B01FIXT001"  # "candidate" is the reference
    assert item["text"] == "Is shiny and silver with shorter sleeves and fit and flare"
    assert "ref_image" not in item and len(ds) == 3 and len(ds.gallery) == 6


def test_train_queries_load_images_and_sample_captions(fiq_root):
    ds = FashionIQ(fiq_root, "train", ["dress", "toptee"], transform=ImageTransform(32), seed=3)
    assert len(ds) == 8 and ds.caption_mode == "random"
    item = ds[1]
    assert item["ref_image"].shape == (3, 32, 32) and item["target_image"].shape == (3, 32, 32)
    assert item["text"] in {"Is red and longer", "Longer and is red", "Is red", "Longer"}
    texts = lambda: [ds[i]["text"] for i in range(len(ds))]
    first = texts()
    assert texts() == first  # reproducible within an epoch
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        seen.add(ds[1]["text"])
    assert len(seen) == 4  # redrawn across epochs


def test_test_split_has_no_target(fiq_root):
    item = FashionIQ(fiq_root, "test", "shirt")[0]
    assert "target" not in item and item["reference"] == "B12FIXT000"


def test_gallery_mode_yields_names_and_images_in_list_order(fiq_root):
    ds = FashionIQ(fiq_root, "val", "toptee", mode="gallery", transform=ImageTransform(24))
    names = json.loads((fiq_root / "image_splits" / "split.toptee.val.json").read_text())
    assert [ds[i]["name"] for i in range(len(ds))] == names
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 24, 24) and batch["name"] == names[:2]


def test_multi_category_gallery_concatenates(fiq_root):
    ds = FashionIQ(fiq_root, "val", CATEGORIES, mode="gallery")
    assert len(ds) == 18


def test_multi_category_training_keeps_the_authors_order(fiq_root):
    ds = FashionIQ(fiq_root, "train", TRAIN_ORDER)
    assert [q["category"] for q in ds.queries] == ["dress"] * 4 + ["toptee"] * 4 + ["shirt"] * 4


def test_dataloader_batches_queries(fiq_root):
    ds = FashionIQ(fiq_root, "train", "shirt", transform=ImageTransform(16))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["ref_image"].shape == (3, 3, 16, 16) and len(batch["text"]) == 3
    assert batch["captions"][0] == ["is darker", "has a logo"]


def test_accepts_parent_folder(fiq_root):
    assert len(FashionIQ(fiq_root.parent, "val", "dress")) == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "dev"}, "unknown split 'dev'.*train, val, test"),
    ({"categories": "shoes"}, "unknown category 'shoes'"),
    ({"mode": "classic"}, "unknown mode 'classic'"),
    ({"caption_mode": "both"}, "unknown caption mode"),
])
def test_bad_arguments_are_clear(fiq_root, kwargs, match):
    with pytest.raises(DataError, match=match):
        FashionIQ(fiq_root, **{"split": "val", **kwargs})


def test_missing_or_malformed_annotations(fiq_root, tmp_path):
    with pytest.raises(DataError, match="(?s)does not look like Fashion-IQ.*captions/cap"):
        FashionIQ(tmp_path / "elsewhere", "val")
    (fiq_root / "captions" / "cap.dress.val.json").unlink()
    with pytest.raises(DataError, match="(?s)missing Fashion-IQ dress/val captions.*download_fashioniq"):
        FashionIQ(fiq_root, "val", "dress")
    (fiq_root / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "x", "captions": ["a", "b"]}]')
    with pytest.raises(DataError, match=r"entry 0 lacks field\(s\) \['target'\]"):
        FashionIQ(fiq_root, "val", "shirt")
    (fiq_root / "captions" / "cap.toptee.val.json").write_text('[{"candi')
    with pytest.raises(DataError, match="not valid JSON"):
        FashionIQ(fiq_root, "val", "toptee")


def test_missing_and_truncated_images_raise_instead_of_shrinking_the_batch(fiq_root):
    ds = FashionIQ(fiq_root, "train", "dress")
    (fiq_root / "images" / "B00FIXT000.jpg").unlink()
    with pytest.raises(DataError, match="image not found.*B00FIXT000.jpg"):
        ds[0]
    path = fabricate_image(fiq_root / "images" / "B00FIXT000.jpg", size=(80, 80))
    path.write_bytes(path.read_bytes()[:150])
    with pytest.raises(DataError, match="B00FIXT000.jpg"):
        ds[0]


# --- the real annotation files (../shared/data): counts from its README --------------------

@pytest.mark.parametrize("split,counts", [
    ("val", {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}),
    ("train", {"dress": (5985, 11452), "shirt": (5988, 19036), "toptee": (6027, 16121)}),
])
def test_real_annotations_counts(shared_data, split, counts):
    for cat, (n_queries, n_gallery) in counts.items():
        ds = FashionIQ(shared_data / "fashion-iq", split, cat)
        assert (len(ds), len(ds.gallery)) == (n_queries, n_gallery)
        gallery = set(ds.gallery)
        assert all(q["reference"] in gallery and q["target"] in gallery for q in ds.queries)
        assert all(q["reference"] != q["target"] for q in ds.queries)


def test_real_annotations_with_placeholder_images(shared_data, tmp_path):
    ds = FashionIQ(shared_data / "fashion-iq", "val", "dress", images=tmp_path, load_images=True,
                   transform=ImageTransform(48))
    q = ds.queries[0]
    for name in (q["reference"], q["target"]):
        fabricate_image(tmp_path / f"{name}.jpg", size=(300, 410))
    item = ds[0]
    assert item["ref_image"].shape == (3, 48, 48)
    assert item["text"] == "Is shiny and silver with shorter sleeves and fit and flare"
    assert sum(FashionIQ(shared_data / "fashion-iq", "test", c).__len__() for c in CATEGORIES) == 6118
