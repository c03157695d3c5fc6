"""CIRR loader: real schema, subsets, configurable roots, and clear errors."""
import json

import pytest

from cirtutor.data import CIRR, ImageTransform, collate
from cirtutor.errors import DataError
from tests.conftest import fabricate_image


def test_val_queries_have_target_and_five_member_subset(cirr_root):
    ds = CIRR(cirr_root, "val")
    item = ds[0]
    assert item["reference"] == "dev-0-0-img0" and item["target"] == "dev-0-2-img0"
    assert item["text"] == "Make it bigger "  # verbatim, trailing space kept
    assert item["subset"] == ["dev-0-1-img1", "dev-0-2-img0", "dev-0-3-img1", "dev-0-4-img0", "dev-0-5-img1"]
    assert item["pairid"] == 1100 and "ref_image" not in item


def test_test1_has_no_target(cirr_root):
    item = CIRR(cirr_root, "test1")[0]
    assert "target" not in item and len(item["subset"]) == 5


def test_train_loads_images_from_numbered_subfolders(cirr_root):
    ds = CIRR(cirr_root, "train", transform=ImageTransform(32))
    assert ds.image_path("train-2-3-img1") == cirr_root / "train" / "2" / "train-2-3-img1.png"
    batch = collate([ds[0], ds[1]])
    assert batch["ref_image"].shape == (2, 3, 32, 32) and batch["target_image"].shape == (2, 3, 32, 32)
    assert len(batch["subset"]) == 2 and len(batch["subset"][0]) == 5


def test_gallery_is_the_split_dict_in_file_order(cirr_root):
    ds = CIRR(cirr_root, "val", mode="gallery", transform=ImageTransform(16))
    names = list(json.loads((cirr_root / "cirr" / "image_splits" / "split.rc2.val.json").read_text()))
    assert ds.gallery == names and ds[3]["name"] == names[3] and ds[3]["image"].shape == (3, 16, 16)


def test_annotations_and_images_in_separate_folders(cirr_root, tmp_path):
    images = tmp_path / "nlvr2_images"
    images.mkdir()
    (cirr_root / "dev").rename(images / "dev")
    ds = CIRR(tmp_path / "nowhere", "val", mode="gallery", annotations=cirr_root / "cirr", images=images)
    assert ds[0]["image"].shape[0] == 3
    with pytest.raises(DataError, match="image not found"):
        CIRR(cirr_root, "val", mode="gallery")[0]


def test_bad_input_is_clear(cirr_root, tmp_path):
    with pytest.raises(DataError, match="unknown split 'test'.*test1"):
        CIRR(cirr_root, "test")
    with pytest.raises(DataError, match="does not look like CIRR"):
        CIRR(tmp_path / "empty", "val")
    ds = CIRR(cirr_root, "val")
    with pytest.raises(DataError, match="not in CIRR's val image split"):
        ds.image_path("dev-99-0-img0")
    (cirr_root / "cirr" / "captions" / "cap.rc2.val.json").write_text('[{"pairid": 1, "reference": "a", "caption": "c"}]')
    with pytest.raises(DataError, match=r"lacks field\(s\) \['img_set', 'target_hard'\]"):
        CIRR(cirr_root, "val")
    (cirr_root / "cirr" / "image_splits" / "split.rc2.test1.json").write_text('["a", "b"]')
    with pytest.raises(DataError, match="should map image names to relative paths"):
        CIRR(cirr_root, "test1")


def test_corrupt_image_raises(cirr_root):
    ds = CIRR(cirr_root, "train", load_images=True)
    path = cirr_root / ds.image_paths[ds.queries[0]["reference"]]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage")
    with pytest.raises(DataError, match="cannot decode image"):
        ds[0]


# --- the real annotation files (../shared/data) ---------------------------------------------

def test_real_val_annotations(shared_data):
    ds = CIRR(shared_data / "cirr", "val")
    assert (len(ds), len(ds.gallery)) == (4181, 2297)
    gallery = set(ds.gallery)
    for q in ds.queries:
        assert len(q["subset"]) == 5 and q["target"] in q["subset"] and q["reference"] not in q["subset"]
        assert {q["reference"], q["target"], *q["subset"]} <= gallery
    assert ds[0]["text"] == "show three bottles of soft drink"


def test_real_train_split_paths_with_placeholder_images(shared_data, tmp_path):
    ds = CIRR(shared_data / "cirr", "train", mode="gallery", images=tmp_path, transform=ImageTransform(40))
    assert len(ds) == 16939
    name = ds.gallery[0]
    assert ds.image_path(name) == tmp_path / "train" / "34" / f"{name}.png"
    fabricate_image(ds.image_path(name), size=(530, 300))
    assert ds[0]["image"].shape == (3, 40, 40)
