"""Tiny mode's synthetic world: determinism, disjoint splits, the real CIRR / Fashion-IQ schemas,
and edits that do what their captions say."""
import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from cirtutor.data.synthetic import (
    CIRR_FAMILY, EDIT_KINDS, EDITED_FIELD, FASHIONIQ_FAMILIES, POSITIONS, Edit, Obj, SyntheticConfig, apply_edit,
    caption_edit, describe_scene, edit_from_json, make_scene, make_synthetic_dataset, possible_edits,
    parse_scene, render_scene, sample_edits, sample_scene, scene_from_json,
)
from cirtutor.errors import DataError

SMALL = dict(size=24, resolution=32)
CIRR_SPLITS = ("train", "val", "test1")
FIQ_SPLITS = ("train", "val", "test")


def load(path: Path):
    return json.loads(path.read_text())


def tokens(text: str) -> int:
    """A stand-in for BERT's basic tokenizer: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cirr(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cirr_dataset")
    make_synthetic_dataset(root, "cirr", **SMALL)
    return root


@pytest.fixture(scope="module")
def fiq(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashionIQ_dataset")
    make_synthetic_dataset(root, "fashioniq", **SMALL)
    return root


# ---------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("fmt", ["cirr", "fashioniq"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path, fmt, cirr, fiq):
    first = cirr if fmt == "cirr" else fiq
    again = make_synthetic_dataset(tmp_path / "again", fmt, **SMALL)
    assert all_files(tmp_path / "again") == all_files(first)
    assert again["fingerprint"] == load(first / "synthetic" / "meta.json")["fingerprint"]
    other = make_synthetic_dataset(tmp_path / "other", fmt, seed=1, **SMALL)
    assert other["fingerprint"] != again["fingerprint"]
    caps = "cirr/captions/cap.rc2.train.json" if fmt == "cirr" else "captions/cap.dress.train.json"
    assert (tmp_path / "other" / caps).read_bytes() != (first / caps).read_bytes()


# ---------------------------------------------------------------------------- splits

def test_cirr_splits_disjoint_by_scene_and_images_unique(cirr):
    scenes = {s: [p["caption"] for p in load(cirr / f"synthetic/captions.{s}.json")] for s in CIRR_SPLITS}
    for s, captions in scenes.items():  # a scene's description names every attribute: a canonical key
        assert len(set(captions)) == len(captions), f"{s} repeats a scene"
    assert not set(scenes["train"]) & set(scenes["val"])
    assert not set(scenes["train"]) & set(scenes["test1"])
    assert not set(scenes["val"]) & set(scenes["test1"])


def test_fashioniq_splits_disjoint_by_scene(fiq):
    for family in FASHIONIQ_FAMILIES:
        keys = {}
        for s in FIQ_SPLITS:
            names = set(load(fiq / f"image_splits/split.{family.name}.{s}.json"))
            keys[s] = {p["caption"] for p in load(fiq / f"synthetic/captions.{s}.json") if p["image"] in names}
            assert len(keys[s]) == len(names)
        assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


# ---------------------------------------------------------------------------- CIRR schema

def test_cirr_schema(cirr):
    pairids = []
    for split, prefix in zip(CIRR_SPLITS, ("train", "dev", "test1")):
        entries = load(cirr / f"cirr/captions/cap.rc2.{split}.json")
        paths = load(cirr / f"cirr/image_splits/split.rc2.{split}.json")
        assert entries and isinstance(paths, dict)
        for name, rel in paths.items():
            assert re.fullmatch(rf"{prefix}-\d+-\d+-img[01]", name)
            folder = r"train/\d+" if split == "train" else prefix
            assert re.fullmatch(rf"\./{folder}/{name}\.png", rel)
            assert (cirr / rel).is_file()
        for e in entries:
            fields = ["pairid", "reference", "caption", "img_set"]
            if split != "test1":
                fields[2:2] = ["target_hard", "target_soft"]
            assert list(e) == fields
            s = e["img_set"]
            assert list(s) == ["id", "members", "reference_rank"] + ([] if split == "test1" else ["target_rank"])
            assert isinstance(e["pairid"], int) and isinstance(s["id"], int)
            assert len(s["members"]) == 6 == len(set(s["members"]))
            assert set(s["members"]) <= set(paths)
            assert s["members"][s["reference_rank"]] == e["reference"]
            if split != "test1":
                assert e["target_hard"] != e["reference"] and e["target_soft"] == {e["target_hard"]: 1.0}
                assert s["members"][s["target_rank"]] == e["target_hard"]
            pairids.append(e["pairid"])
    assert len(pairids) == len(set(pairids))
    with Image.open(cirr / load(cirr / "cirr/image_splits/split.rc2.val.json")["dev-0-0-img0"]) as img:
        assert img.format == "PNG" and img.size == (32, 32) and img.mode == "RGB"


def test_cirr_counts(cirr):
    meta = load(cirr / "synthetic/meta.json")
    assert meta["complete"] and meta["format"] == "cirr"
    assert meta["counts"]["train"] == {"references": 24, "images": 144, "queries": 120}
    assert meta["counts"]["val"] == meta["counts"]["test1"] == {"references": 12, "images": 72, "queries": 12}


# ---------------------------------------------------------------------------- Fashion-IQ schema

def test_fashioniq_schema(fiq):
    seen = set()
    for family in FASHIONIQ_FAMILIES:
        for split in FIQ_SPLITS:
            names = load(fiq / f"image_splits/split.{family.name}.{split}.json")
            entries = load(fiq / f"captions/cap.{family.name}.{split}.json")
            assert names and entries and len(names) == len(set(names))
            assert not seen & set(names)
            seen |= set(names)
            for e in entries:
                fields = ["candidate", "captions"] if split == "test" else ["target", "candidate", "captions"]
                assert list(e) == fields
                assert e["candidate"] in names and len(e["captions"]) == 2 and e["captions"][0] != e["captions"][1]
                if split != "test":
                    assert e["target"] in names and e["target"] != e["candidate"]
    assert all(re.fullmatch(r"B[A-Z0-9]{9}", n) for n in seen)
    assert {p.stem for p in (fiq / "images").iterdir()} == seen
    with Image.open(fiq / "images" / f"{sorted(seen)[0]}.jpg") as img:
        assert img.format == "JPEG" and img.size == (32, 32) and img.mode == "RGB"


# ---------------------------------------------------------------------------- edits and captions

RED_CIRCLE, BLUE_SQUARE = Obj("circle", "red", "large", 0), Obj("square", "blue", "small", 4)
SCENE = make_scene([RED_CIRCLE, BLUE_SQUARE])
EXPECTED = {  # edit -> (objects removed, objects added, a caption of it)
    Edit("add", Obj("triangle", "green", "small", 8)): ((), (Obj("triangle", "green", "small", 8),),
                                                         "add a small green triangle at the bottom right"),
    Edit("remove", RED_CIRCLE): ((RED_CIRCLE,), (), "remove the circle"),
    Edit("recolour", RED_CIRCLE, "yellow"): ((RED_CIRCLE,), (RED_CIRCLE._replace(colour="yellow"),),
                                             "make the circle yellow"),
    Edit("resize", BLUE_SQUARE, "large"): ((BLUE_SQUARE,), (BLUE_SQUARE._replace(size="large"),),
                                           "make the square bigger"),
    Edit("move", BLUE_SQUARE, 3): ((BLUE_SQUARE,), (BLUE_SQUARE._replace(cell=3),), "move the square to the left"),
    Edit("shape", RED_CIRCLE, "square"): ((RED_CIRCLE,), (RED_CIRCLE._replace(shape="square"),),
                                          "turn the circle into a square"),
}


@pytest.mark.parametrize("edit", list(EXPECTED), ids=lambda e: e.kind)
def test_apply_edit_changes_what_the_caption_says(edit):
    removed, added, caption = EXPECTED[edit]
    after = apply_edit(SCENE, edit)
    assert set(SCENE) - set(after) == set(removed) and set(after) - set(SCENE) == set(added)
    assert caption_edit(SCENE, edit, 0) == caption


def test_captions_name_the_object_unambiguously():
    scene = make_scene([Obj("circle", "red", "large", 0), Obj("circle", "red", "small", 1),
                        Obj("circle", "blue", "small", 2)])
    assert caption_edit(scene, Edit("remove", scene[0]), 0) == "remove the large circle"
    assert caption_edit(scene, Edit("remove", scene[1]), 0) == "remove the small red circle"
    assert caption_edit(scene, Edit("remove", scene[2]), 0) == "remove the blue circle"


def random_groups(n=150, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        scene = sample_scene(rng)
        yield scene, sample_edits(rng, scene, 5)


def named_change(edit: Edit) -> tuple[str, ...]:
    """Words of which every caption of `edit` holds one: the new position, colour, shape or
    size (or its direction), or for "add"/"remove" the object's shape."""
    if edit.kind == "move":
        return (POSITIONS[edit.value],)
    if edit.kind == "resize":
        return ("large", "bigger") if edit.value == "large" else ("small", "shrink")
    return (edit.value or edit.obj.shape,)


def test_random_edits_change_one_object_as_the_caption_says():
    kinds = set()
    for scene, pairs in random_groups():
        for edit, after in pairs:
            kinds.add(edit.kind)
            gone, new = set(scene) - set(after), set(after) - set(scene)
            assert len(gone) + len(new) == {"add": 1, "remove": 1}.get(edit.kind, 2)
            if edit.kind not in ("add", "remove"):
                (old,), (o,) = gone, new
                changed = [f for f in Obj._fields if getattr(old, f) != getattr(o, f)]
                assert changed == [EDITED_FIELD[edit.kind]]
            for t in range(3):
                caption = caption_edit(scene, edit, t)
                assert any(word in caption for word in named_change(edit)), caption
                assert tokens(caption) <= 25
            assert len({(o.shape, o.colour, o.size) for o in after}) == len(after) == len({o.cell for o in after})
    assert kinds == set(EDIT_KINDS)


def test_five_edits_are_distinct():
    for scene, pairs in random_groups():
        results = [after for _, after in pairs]
        assert len(results) == 5 and len(set(results)) == 5 and scene not in results


def test_sample_edits_avoids_used_scenes_and_reports_exhaustion():
    scene = make_scene([Obj("circle", "red", "large", 4)])
    everything = [e for edits in possible_edits(scene).values() for e in edits]
    used = {apply_edit(scene, e) for e in everything[:-3]}
    pairs = sample_edits(random.Random(0), scene, 3, used=used)
    assert {after for _, after in pairs} == {apply_edit(scene, e) for e in everything[-3:]}
    assert sample_edits(random.Random(0), scene, 4, used=used) is None


def test_queries_record_the_edit_and_scenes(cirr, fiq):
    for root, splits in ((cirr, CIRR_SPLITS), (fiq, FIQ_SPLITS)):
        for split in splits:
            for q in load(root / f"synthetic/queries.{split}.json"):
                ref, target = scene_from_json(q["reference_scene"]), scene_from_json(q["target_scene"])
                assert apply_edit(ref, edit_from_json(q["edit"])) == target and q["edit_type"] == q["edit"]["type"]
                assert len(q["negatives"]) == 4 and q["target"] not in q["negatives"]


def test_scene_captions_are_compact(cirr):
    pairs = load(cirr / "synthetic/captions.train.json")
    assert max(tokens(p["caption"]) for p in pairs) <= 40
    assert describe_scene(SCENE) == "a large red circle at the top left and a small blue square in the centre"


def test_parse_scene_inverts_describe_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        assert parse_scene(describe_scene(scene)) == scene
    with pytest.raises(ValueError, match="not a scene description"):
        parse_scene("a large red circle somewhere")


def test_render_scene_size_and_determinism():
    img = render_scene(SCENE, 32, CIRR_FAMILY.background, random.Random(3))
    assert img.size == (32, 32) and img.mode == "RGB"
    assert img.tobytes() == render_scene(SCENE, 32, CIRR_FAMILY.background, random.Random(3)).tobytes()
    assert img.getpixel((5, 5)) != CIRR_FAMILY.background  # the large circle covers the top-left cell's centre
    assert img.getpixel((31, 31)) == CIRR_FAMILY.background


# ---------------------------------------------------------------------------- the output folder

def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        make_synthetic_dataset(tmp_path, "cirr", **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_reuse_and_overwrite(tmp_path):
    first = make_synthetic_dataset(tmp_path, "cirr", size=6, resolution=16)
    assert not first["reused"]
    assert make_synthetic_dataset(tmp_path, "cirr", size=6, resolution=16)["reused"]
    with pytest.raises(DataError, match="--overwrite"):
        make_synthetic_dataset(tmp_path, "cirr", size=6, resolution=16, seed=1)
    second = make_synthetic_dataset(tmp_path, "fashioniq", size=6, resolution=16, overwrite=True)
    assert not second["reused"] and not (tmp_path / "cirr").exists() and not (tmp_path / "train").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions", "image_splits", "images", "synthetic"]


def test_config_overrides_and_validation():
    assert SyntheticConfig().size == 1000 and SyntheticConfig().edits_per_reference == 5
    with pytest.raises(ValueError):
        SyntheticConfig(eval_queries_per_reference=6)
    with pytest.raises(ValueError, match="format"):
        make_synthetic_dataset("unused", "coco")


def test_same_object_siblings_are_near_duplicates_of_each_other():
    """siblings="same_object": the five edits of a reference all change one object, so any two of
    the results share every other object; "any" (the default) keeps the old draws byte for byte."""
    rng = random.Random(3)
    for _ in range(50):
        scene = sample_scene(rng)
        pairs = sample_edits(rng, scene, 5, siblings="same_object")
        if pairs is None:
            continue
        assert len({edit.obj for edit, _ in pairs}) == 1 and all(edit.kind != "add" for edit, _ in pairs)
        edited = pairs[0][0].obj
        for _, after in pairs:
            assert set(scene) - {edited} <= set(after) and len(set(after) - set(scene)) <= 1
    assert sample_edits(random.Random(1), make_scene([Obj("circle", "red", "large", 4)]), 5) == \
        sample_edits(random.Random(1), make_scene([Obj("circle", "red", "large", 4)]), 5, siblings="any")
    with pytest.raises(ValueError, match="siblings"):
        sample_edits(random.Random(0), scene, 5, siblings="nope")
    with pytest.raises(ValueError, match="invalid synthetic config"):
        SyntheticConfig(siblings="nope")


def test_a_same_object_world_is_written_in_the_same_format(tmp_path):
    root = tmp_path / "cirr_dataset"
    make_synthetic_dataset(root, "cirr", siblings="same_object", **SMALL)
    for q in load(root / "synthetic" / "queries.val.json"):
        ref = scene_from_json(q["reference_scene"])
        assert len(set(ref) - set(scene_from_json(q["target_scene"]))) <= 1
    assert load(root / "synthetic" / "meta.json")["config"]["siblings"] == "same_object"
