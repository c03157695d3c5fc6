"""Tiny mode's dataset: a CSS-style world of coloured shapes, written in the real on-disk
formats of CIRR and Fashion-IQ so that the real loaders read it unchanged.

The world. A scene is 1-4 objects on a 3x3 grid; an object is a shape (circle, square,
triangle), a colour (6 well-separated hues), a size (small, large) and a grid cell. No two
objects of a scene share a (shape, colour, size) description, so every object can be
named without ambiguity. A query is a reference scene plus one edit of it, phrased as a
short modification text ("make the red circle blue"); the target is the edited scene.
Six edit types: add, remove, recolour, resize, move, shape (replace an object's shape).

Hard negatives. Every reference gets `edits_per_reference` (5) distinct edits. One is the
query's target, the other four are near misses: each differs from the reference by one
edit, just like the target. With the reference they form a 6-image set written as CIRR's
`img_set`, on which the paper reports Recall_subset@K (the target ranked among the 5
non-reference members only). All five look alike to a single-vector filter that embeds the
query once; a re-ranker that reads the text against each candidate can tell them apart.
That is the gap between the paper's two stages, made visible at tiny scale.

Uniqueness. Every scene (a canonical, cell-sorted tuple of objects) is drawn at most once
per scene family, so train/val/test are disjoint by scene and no gallery holds two images
of the same scene (which would make the answer ambiguous).

Files. Format "cirr" writes a `cirr_dataset` root, format "fashioniq" a
`fashionIQ_dataset` root (layouts in `write_cirr` and `write_fashioniq`). Outside the
real schemas, `OUT/synthetic/` holds a scene description per image (pairs for
pretraining a mini-BLIP), the edit type and structured scenes of every query (for
break-downs by edit type), and `meta.json` (which marks the folder as ours).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import re
import shutil
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

from PIL import Image, ImageDraw
from tqdm import tqdm

from cirtutor.errors import DataError
from cirtutor.io import atomic_write_bytes, atomic_write_json

GENERATOR = "cirtutor.data.synthetic"
VERSION = 1

# ---------------------------------------------------------------------------- the world

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # saturated hues, far apart, bright against a dark background
    "red": (225, 40, 40),
    "green": (40, 190, 60),
    "blue": (55, 95, 240),
    "yellow": (240, 220, 40),
    "purple": (165, 60, 215),
    "orange": (250, 140, 20),
}
SIZES = ("small", "large")
HALF_SIZE = {"small": 0.2, "large": 0.36}  # half the object's width, as a fraction of a cell
POSITIONS = ("top left", "top", "top right", "left", "centre", "right",
             "bottom left", "bottom", "bottom right")  # cell = 3 * row + column
EDIT_KINDS = ("add", "remove", "recolour", "resize", "move", "shape")
EDITED_FIELD = {"recolour": "colour", "resize": "size", "move": "cell", "shape": "shape"}  # what `value` replaces


class Obj(NamedTuple):
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid


Scene = tuple  # tuple[Obj, ...] sorted by cell: canonical and hashable (see `make_scene`)


@dataclass(frozen=True)
class Family:
    """A scene family: its background tint and the colours its objects may take."""
    name: str
    background: tuple[int, int, int]
    colours: tuple[str, ...]


CIRR_FAMILY = Family("cirr", (18, 18, 24), tuple(COLOURS))
# Fashion-IQ's categories are three families: each its own tint and four of the six colours.
FASHIONIQ_FAMILIES = (
    Family("dress", (48, 20, 38), ("red", "purple", "orange", "yellow")),
    Family("shirt", (16, 28, 54), ("blue", "green", "yellow", "red")),
    Family("toptee", (24, 46, 36), ("orange", "blue", "purple", "green")),
)


def make_scene(objs) -> Scene:
    """The canonical form of a set of objects: a tuple sorted by cell."""
    return tuple(sorted(objs, key=lambda o: o.cell))


def descriptions(family: Family) -> list[tuple[str, str, str]]:
    """Every (shape, colour, size) an object of `family` can have."""
    return [(s, c, z) for s in SHAPES for c in family.colours for z in SIZES]


def sample_scene(rng: random.Random, family: Family = CIRR_FAMILY, max_objects: int = 4) -> Scene:
    """1..max_objects objects with distinct descriptions in distinct cells."""
    n = rng.randint(1, max_objects)
    cells = rng.sample(range(9), n)
    return make_scene(Obj(*d, cell) for d, cell in zip(rng.sample(descriptions(family), n), cells))


# ---------------------------------------------------------------------------- edits

class Edit(NamedTuple):
    """One change to a scene. `obj` is the object edited (for "add": the new object);
    `value` is the new colour, size, cell or shape (None for "add" and "remove")."""
    kind: str
    obj: Obj
    value: str | int | None = None

    @property
    def new(self) -> Obj | None:
        """The object as it is after the edit (None for "remove")."""
        if self.kind == "remove":
            return None
        field = EDITED_FIELD.get(self.kind)
        return self.obj._replace(**{field: self.value}) if field else self.obj


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene with `edit` applied; every other object is left as it was."""
    if (edit.kind == "add") == (edit.obj in scene):
        raise ValueError(f"{edit} does not apply to {scene}")
    objs = [o for o in scene if o != edit.obj]
    return make_scene(objs + [edit.new] if edit.new else objs)


def possible_edits(scene: Scene, family: Family = CIRR_FAMILY, max_objects: int = 4) -> dict[str, list[Edit]]:
    """Every valid single edit of `scene`, by kind: results keep 1..max_objects objects
    with distinct descriptions in distinct cells, and differ from `scene`."""
    taken = {o[:3] for o in scene}
    free = [c for c in range(9) if c not in {o.cell for o in scene}]
    edits = {kind: [] for kind in EDIT_KINDS}
    if len(scene) < max_objects:
        edits["add"] = [Edit("add", Obj(*d, c)) for d in descriptions(family) if d not in taken for c in free]
    if len(scene) > 1:
        edits["remove"] = [Edit("remove", o) for o in scene]
    for o in scene:
        edits["recolour"] += [Edit("recolour", o, c) for c in family.colours if (o.shape, c, o.size) not in taken]
        edits["resize"] += [Edit("resize", o, z) for z in SIZES if (o.shape, o.colour, z) not in taken]
        edits["move"] += [Edit("move", o, c) for c in free]
        edits["shape"] += [Edit("shape", o, s) for s in SHAPES if (s, o.colour, o.size) not in taken]
    return edits


SIBLINGS = ("any", "same_object")   # how a reference's edits relate: see `sample_edits`


def sample_edits(rng: random.Random, scene: Scene, k: int, family: Family = CIRR_FAMILY,
                 max_objects: int = 4, used: set | frozenset = frozenset(),
                 siblings: str = "any") -> list[tuple[Edit, Scene]] | None:
    """`k` edits of `scene` with distinct results that are not in `used`, as (edit, result)
    pairs; None if there are fewer than k. Each draw picks a kind uniformly among the kinds
    with options left, then one edit of that kind.

    `siblings`: "any" draws each edit from all of the scene's edits, so two results differ in two
    objects; "same_object" first picks one object (among those with k edits) and draws every edit of
    it (recolour, resize, move, reshape or remove it), so the k results are near-duplicates that
    differ from each other in that object only: one gallery vector per image must tell them apart."""
    pool = {kind: edits for kind, edits in possible_edits(scene, family, max_objects).items() if edits}
    if siblings == "same_object":
        per_object = {o: {kind: [e for e in edits if e.obj == o] for kind, edits in pool.items() if kind != "add"}
                      for o in scene}
        choices = [o for o in scene if sum(map(len, per_object[o].values())) >= k]
        if not choices:
            return None
        pool = {kind: edits for kind, edits in per_object[rng.choice(choices)].items() if edits}
    elif siblings != "any":
        raise ValueError(f"siblings={siblings!r}; expected one of {', '.join(SIBLINGS)}")
    chosen, results = [], set()
    while len(chosen) < k and pool:
        kind = rng.choice(list(pool))
        edit = pool[kind].pop(rng.randrange(len(pool[kind])))
        if not pool[kind]:
            del pool[kind]
        result = apply_edit(scene, edit)
        if result not in used and result not in results:
            chosen.append((edit, result))
            results.add(result)
    return chosen if len(chosen) == k else None


# ---------------------------------------------------------------------------- language

EDIT_TEMPLATES = {
    "add": ("add a {new} {at}", "put a {new} {at}", "there should also be a {new} {at}"),
    "remove": ("remove the {old}", "take away the {old}", "get rid of the {old}"),
    "recolour": ("make the {old} {colour}", "change the {old} to {colour}", "paint the {old} {colour}"),
    "resize": ("make the {old} {bigger}", "the {old} should be {size}", "{grow} the {old}"),
    "move": ("move the {old} to the {pos}", "put the {old} {at}", "shift the {old} to the {pos}"),
    "shape": ("turn the {old} into a {shape}", "change the {old} into a {shape}", "replace the {old} with a {new}"),
}


def at(cell: int) -> str:
    """Where a cell is, as a phrase: 'at the top left', 'on the left', 'in the centre'."""
    pos = POSITIONS[cell]
    return {"centre": "in the centre", "left": "on the left", "right": "on the right"}.get(pos, f"at the {pos}")


def describe_object(o: Obj) -> str:
    return f"{o.size} {o.colour} {o.shape}"


def describe_scene(scene: Scene) -> str:
    """'a large red circle at the top left and a small blue square in the centre' (cell order).
    The description names every attribute, so it is also a canonical key of the scene."""
    parts = [f"a {describe_object(o)} {at(o.cell)}" for o in scene]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


OBJECT_PHRASE = re.compile(r"a (small|large) (\w+) (circle|square|triangle) (in the centre|on the left|on the right|at the [a-z ]+?)(?=,| and a |$)")


def parse_scene(description: str) -> Scene:
    """The scene a `describe_scene` text describes (its inverse)."""
    objs = [Obj(shape, colour, size, [at(c) for c in range(9)].index(where))
            for size, colour, shape, where in OBJECT_PHRASE.findall(description)]
    scene = make_scene(objs)
    if not objs or describe_scene(scene) != description:
        raise ValueError(f"not a scene description: {description!r}")
    return scene


def refer(obj: Obj, scene: Scene) -> str:
    """The shortest name that singles `obj` out in `scene`: 'circle', 'red circle',
    'small circle' or 'small red circle' (always unique: descriptions are)."""
    others = [o for o in scene if o != obj]
    for attrs in (("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")):
        if not any(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in others):
            return " ".join(getattr(obj, a) for a in attrs)


def caption_edit(scene: Scene, edit: Edit, template: int = 0) -> str:
    """The modification text of `edit` on `scene`, in phrasing `template` of EDIT_TEMPLATES[kind]."""
    new = edit.new or edit.obj
    grow = new.size == "large"
    return EDIT_TEMPLATES[edit.kind][template].format(
        old=refer(edit.obj, scene), new=describe_object(new), at=at(new.cell), pos=POSITIONS[new.cell],
        colour=new.colour, size=new.size, shape=new.shape,
        bigger="bigger" if grow else "smaller", grow="enlarge" if grow else "shrink")


# ---------------------------------------------------------------------------- pixels

def render_scene(scene: Scene, resolution: int = 64, background: tuple[int, int, int] = CIRR_FAMILY.background,
                 rng: random.Random | None = None, jitter: float = 1.5, supersample: int = 2) -> Image.Image:
    """Draw `scene` on a resolution x resolution RGB image. Each object sits at its cell's
    centre, offset by up to `jitter` px (at 64 px, scaled with the resolution) when an `rng`
    is given; shapes are drawn at `supersample` x and box-downsampled (anti-aliasing)."""
    side = resolution * supersample
    img = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(img)
    cell, spread = side / 3, jitter * side / 64
    for o in scene:
        row, col = divmod(o.cell, 3)
        dx, dy = (rng.uniform(-spread, spread), rng.uniform(-spread, spread)) if rng else (0.0, 0.0)
        draw_shape(draw, o.shape, (col + 0.5) * cell + dx, (row + 0.5) * cell + dy,
                   HALF_SIZE[o.size] * cell, COLOURS[o.colour])
    return img.reduce(supersample) if supersample > 1 else img


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    """A shape centred at (x, y), about 2r wide; areas roughly matched across shapes."""
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        s = 0.9 * r
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:
        s = 1.15 * r
        draw.polygon([(x, y - s), (x - s, y + 0.8 * s), (x + s, y + 0.8 * s)], fill=fill)


# ---------------------------------------------------------------------------- dataset plan

@dataclass
class SyntheticConfig:
    size: int = 1000                     # reference scenes in train; val and test get size // 2 each
    resolution: int = 64                 # image side in pixels
    seed: int = 0                        # scenes, edits, captions, names and jitter all follow from it
    edits_per_reference: int = 5         # distinct edits per reference: 1 target + 4 hard negatives (img_set of 6)
    eval_queries_per_reference: int = 1  # queries per reference in val/test (train makes one per edit)
    max_objects: int = 4                 # objects per scene: 1..max_objects (the grid has 9 cells)
    jitter: float = 1.5                  # max offset of an object from its cell centre, px at 64 px (scaled)
    supersample: int = 2                 # draw at this multiple of the resolution, then downsample
    scenes_per_folder: int = 100         # CIRR train images go to ./train/<reference number // this>/
    jpeg_quality: int = 95               # Fashion-IQ images are JPEG
    siblings: str = "any"                # a reference's edits: "any" | "same_object" (all change one object)

    def __post_init__(self):
        if not 1 <= self.eval_queries_per_reference <= self.edits_per_reference:
            raise ValueError("need 1 <= eval_queries_per_reference <= edits_per_reference")
        if not 1 <= self.max_objects <= 9 or self.size < 1 or self.resolution < 8 or self.siblings not in SIBLINGS:
            raise ValueError(f"invalid synthetic config {self}")

    def references(self, split: str) -> int:
        return self.size if split == "train" else self.size // 2

    def images(self) -> int:
        """Images in the whole dataset: every reference and its edited scenes."""
        return sum(self.references(s) for s in ("train", "val", "test")) * (1 + self.edits_per_reference)


class Group(NamedTuple):
    """A reference scene and its distinct edits: edits[i] turns `reference` into targets[i]."""
    reference: Scene
    edits: tuple[Edit, ...]
    targets: tuple[Scene, ...]

    @property
    def scenes(self) -> tuple[Scene, ...]:
        return (self.reference, *self.targets)


def plan_groups(rng: random.Random, n: int, family: Family, cfg: SyntheticConfig, used: set) -> list[Group]:
    """`n` groups whose scenes are all new to `used` (which is updated), so no scene of the
    family appears twice in the dataset. Draws that collide are redrawn."""
    groups = []
    for _ in range(100 * n + 1000):
        if len(groups) == n:
            return groups
        ref = sample_scene(rng, family, cfg.max_objects)
        pairs = None if ref in used else sample_edits(rng, ref, cfg.edits_per_reference, family, cfg.max_objects, used,
                                                      cfg.siblings)
        if pairs:
            edits, targets = zip(*pairs)
            used.update((ref, *targets))
            groups.append(Group(ref, edits, targets))
    raise RuntimeError(f"could not draw {n} fresh {family.name} scenes: the world is too small for this size")


def query_edits(rng: random.Random, group: Group, split: str, cfg: SyntheticConfig) -> list[int]:
    """Which edits become queries: all of them in train, a random few in val/test (random,
    so that the target's name says nothing about which member it is)."""
    every = range(len(group.edits))
    return list(every) if split == "train" else sorted(rng.sample(every, cfg.eval_queries_per_reference))


def obj_to_json(o: Obj) -> dict:
    return {"shape": o.shape, "colour": o.colour, "size": o.size, "position": POSITIONS[o.cell]}


def obj_from_json(d: dict) -> Obj:
    return Obj(d["shape"], d["colour"], d["size"], POSITIONS.index(d["position"]))


def scene_from_json(rows: list[dict]) -> Scene:
    return make_scene(obj_from_json(d) for d in rows)


def edit_from_json(d: dict) -> Edit:
    value = POSITIONS.index(d["value"]) if d["type"] == "move" else d["value"]
    return Edit(d["type"], obj_from_json(d["object"]), value)


def query_record(group: Group, names: list[str], i: int, captions: list[str]) -> dict:
    """The extras' record of query i of a group: edit type, structured scenes, hard negatives."""
    edit = group.edits[i]
    return {
        "reference": names[0], "target": names[i + 1], "captions": captions, "edit_type": edit.kind,
        "edit": {"type": edit.kind, "object": obj_to_json(edit.obj),
                 "value": POSITIONS[edit.value] if edit.kind == "move" else edit.value},
        "reference_scene": [obj_to_json(o) for o in group.reference],
        "target_scene": [obj_to_json(o) for o in group.targets[i]],
        "negatives": [n for j, n in enumerate(names[1:]) if j != i],
    }


# ---------------------------------------------------------------------------- writing

class Writer:
    """Writes files under `root` atomically, rendering images on the way, and keeps the
    SHA-256 of each file for the dataset's fingerprint."""

    def __init__(self, root: Path, cfg: SyntheticConfig, bar: tqdm):
        self.root, self.cfg, self.bar, self.digests = root, cfg, bar, {}

    def bytes(self, rel: str, data: bytes) -> None:
        atomic_write_bytes(self.root / rel, data, fsync=False)  # meta.json's "complete", written last, vouches for the set
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def json(self, rel: str, obj) -> None:
        self.bytes(rel, json.dumps(obj).encode())

    def image(self, rel: str, scene: Scene, family: Family) -> None:
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}/{rel}")  # jitter depends on the file only, not on write order
        img = render_scene(scene, cfg.resolution, family.background, rng, cfg.jitter, cfg.supersample)
        buf = io.BytesIO()
        if rel.endswith(".png"):
            img.save(buf, format="PNG")
        else:
            img.save(buf, format="JPEG", quality=cfg.jpeg_quality)
        self.bytes(rel, buf.getvalue())
        self.bar.update()

    def fingerprint(self) -> str:
        listing = "".join(f"{rel} {digest}\n" for rel, digest in sorted(self.digests.items()))
        return hashlib.sha256(listing.encode()).hexdigest()


CIRR_SPLITS = {"train": "train", "val": "dev", "test1": "test1"}  # split -> image name prefix and folder


def write_cirr(w: Writer, rng: random.Random) -> dict:
    """CIRR's layout under the `cirr_dataset` root:

        cirr/captions/cap.rc2.{train,val,test1}.json
            [{pairid, reference, target_hard, target_soft, caption, img_set: {id, members, reference_rank, target_rank}}]
        cirr/image_splits/split.rc2.{train,val,test1}.json
            {name: "./train/<n // 100>/<name>.png" | "./dev/<name>.png" | "./test1/<name>.png"}
        train/<k>/train-<n>-<j>-img<b>.png   dev/dev-<n>-<j>-img<b>.png   test1/test1-<n>-<j>-img<b>.png

    Group n's images are named {prefix}-{n}-{i // 2}-img{i % 2}, i = 0 the reference. test1
    entries lack target_hard, target_soft and img_set.target_rank, like the real file.
    """
    used, pairid, counts = set(), 0, {}
    for split, prefix in CIRR_SPLITS.items():
        groups = plan_groups(rng, w.cfg.references(split), CIRR_FAMILY, w.cfg, used)
        paths, entries, queries, pairs = {}, [], [], []
        for n, group in enumerate(groups):
            names = [f"{prefix}-{n}-{i // 2}-img{i % 2}" for i in range(len(group.scenes))]
            folder = f"train/{n // w.cfg.scenes_per_folder}" if split == "train" else prefix
            for name, scene in zip(names, group.scenes):
                w.image(f"{folder}/{name}.png", scene, CIRR_FAMILY)
                paths[name] = f"./{folder}/{name}.png"
                pairs.append({"image": name, "caption": describe_scene(scene)})
            members = rng.sample(names, len(names))
            for i in query_edits(rng, group, split, w.cfg):
                caption = caption_edit(group.reference, group.edits[i], rng.randrange(3))
                entry = {"pairid": pairid, "reference": names[0], "target_hard": names[i + 1],
                         "target_soft": {names[i + 1]: 1.0}, "caption": caption,
                         "img_set": {"id": n, "members": members, "reference_rank": members.index(names[0]),
                                     "target_rank": members.index(names[i + 1])}}
                if split == "test1":
                    del entry["target_hard"], entry["target_soft"], entry["img_set"]["target_rank"]
                entries.append(entry)
                queries.append({"pairid": pairid, **query_record(group, names, i, [caption])})
                pairid += 1
        w.json(f"cirr/captions/cap.rc2.{split}.json", entries)
        w.json(f"cirr/image_splits/split.rc2.{split}.json", paths)
        w.json(f"synthetic/captions.{split}.json", pairs)
        w.json(f"synthetic/queries.{split}.json", queries)
        counts[split] = {"references": len(groups), "images": len(paths), "queries": len(entries)}
    return counts


def asin_names(rng: random.Random) -> Iterator[str]:
    """Distinct ASIN-like names: 'B' followed by 9 uppercase letters or digits."""
    seen = set()
    while True:
        name = "B" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=9))
        if name not in seen:
            seen.add(name)
            yield name


def share(n: int, k: int) -> list[int]:
    """`n` split into `k` near-equal parts, larger parts first."""
    return [n // k + (i < n % k) for i in range(k)]


def write_fashioniq(w: Writer, rng: random.Random) -> dict:
    """Fashion-IQ's layout under the `fashionIQ_dataset` root:

        captions/cap.{dress,shirt,toptee}.{train,val,test}.json     [{target, candidate, captions: [c1, c2]}]
        image_splits/split.{dress,shirt,toptee}.{train,val,test}.json [name, ...]
        images/<name>.jpg

    Each split's references are shared among the three categories, each a scene family
    (FASHIONIQ_FAMILIES). "candidate" is the reference, as in the real schema; the two
    captions are two phrasings of the same edit, so either alone or both joined with
    " and " read well. test entries lack "target".
    """
    used, names, counts = {f.name: set() for f in FASHIONIQ_FAMILIES}, asin_names(rng), {}
    for split in ("train", "val", "test"):
        pairs, queries, count = [], [], {"references": 0, "images": 0, "queries": 0}
        for family, n in zip(FASHIONIQ_FAMILIES, share(w.cfg.references(split), len(FASHIONIQ_FAMILIES))):
            gallery, entries = [], []
            for group in plan_groups(rng, n, family, w.cfg, used[family.name]):
                group_names = [next(names) for _ in group.scenes]
                for name, scene in zip(group_names, group.scenes):
                    w.image(f"images/{name}.jpg", scene, family)
                    pairs.append({"image": name, "caption": describe_scene(scene)})
                gallery += group_names
                for i in query_edits(rng, group, split, w.cfg):
                    captions = [caption_edit(group.reference, group.edits[i], t) for t in rng.sample(range(3), 2)]
                    entry = {"target": group_names[i + 1], "candidate": group_names[0], "captions": captions}
                    if split == "test":
                        del entry["target"]
                    entries.append(entry)
                    queries.append({"category": family.name, **query_record(group, group_names, i, captions)})
            w.json(f"captions/cap.{family.name}.{split}.json", entries)
            w.json(f"image_splits/split.{family.name}.{split}.json", gallery)
            count["references"] += n
            count["images"] += len(gallery)
            count["queries"] += len(entries)
        w.json(f"synthetic/captions.{split}.json", pairs)
        w.json(f"synthetic/queries.{split}.json", queries)
        counts[split] = count
    return counts


FORMATS = {"cirr": write_cirr, "fashioniq": write_fashioniq}
LAYOUT = {"cirr": ("cirr", "train", "dev", "test1"), "fashioniq": ("captions", "image_splits", "images")}


def synthetic_meta(out: str | Path) -> dict | None:
    """The meta.json of the synthetic dataset at `out`, or None if `out` does not hold one."""
    try:
        meta = json.loads((Path(out) / "synthetic" / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def prepare(out: Path, fmt: str, cfg: SyntheticConfig, overwrite: bool) -> dict | None:
    """Make `out` ready to write into; return its meta instead if it already holds this very
    dataset (same version, format and config) and `overwrite` is off."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a folder: choose a new or empty folder for the dataset")
    if not out.exists() or not any(out.iterdir()):
        return None
    meta = synthetic_meta(out)
    if meta is None:
        raise DataError(f"{out} is not empty and does not hold a synthetic dataset; refusing to write into it. "
                        "Choose an empty or new folder.")
    same = (meta.get("complete") and meta.get("version") == VERSION and meta.get("format") == fmt
            and meta.get("config") == dataclasses.asdict(cfg))
    if same and not overwrite:
        return meta
    if not overwrite:
        raise DataError(f"{out} holds a different (or unfinished) synthetic dataset; "
                        "pass --overwrite to regenerate it.")
    for name in LAYOUT.get(meta.get("format"), ()) + ("synthetic",):
        shutil.rmtree(out / name, ignore_errors=True)
    return None


def make_synthetic_dataset(out: str | Path, format: str = "cirr", config: SyntheticConfig | None = None, *,
                           overwrite: bool = False, progress: bool | None = False, **overrides) -> dict:
    """Generate the synthetic dataset in `format` ("cirr" or "fashioniq") under `out`.

    `config` (default SyntheticConfig()) with any field replaced by `overrides`, e.g.
    `make_synthetic_dataset(root, size=40, resolution=32)`. A folder that already holds the
    same dataset is left as it is; a different synthetic dataset is replaced only with
    `overwrite=True`; a non-empty folder of anything else is refused. `progress`: a tqdm
    bar (None: only when stderr is a terminal). Returns meta.json's content plus
    "seconds" (the elapsed time) and "reused".
    """
    if format not in FORMATS:
        raise ValueError(f"unknown synthetic format {format!r}; expected one of {', '.join(FORMATS)}")
    sizes = {**{k: getattr(config or SyntheticConfig(), k) for k in ("size", "resolution")}, **overrides}
    if not isinstance(sizes["size"], int) or sizes["size"] < 2:
        raise DataError(f"size={sizes['size']!r} (--size): expected at least 2 train references "
                        "(val and test get size // 2 each)")
    if not isinstance(sizes["resolution"], int) or sizes["resolution"] < 8:
        raise DataError(f"resolution={sizes['resolution']!r} (--resolution): expected at least 8 pixels")
    cfg = dataclasses.replace(config or SyntheticConfig(), **overrides)
    out, start = Path(out), time.perf_counter()
    existing = prepare(out, format, cfg, overwrite)
    if existing:
        return {**existing, "seconds": time.perf_counter() - start, "reused": True}
    meta = {"generator": GENERATOR, "version": VERSION, "format": format, "seed": cfg.seed, "size": cfg.size,
            "resolution": cfg.resolution, "config": dataclasses.asdict(cfg), "complete": False}
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=cfg.images(), desc=f"synthetic {format}", unit="img", disable=not show) as bar:
        atomic_write_json(out / "synthetic" / "meta.json", meta, indent=2)  # ours, even if interrupted
        w = Writer(out, cfg, bar)
        counts = FORMATS[format](w, random.Random(cfg.seed))
    images = sum(c["images"] for c in counts.values())
    meta.update(counts=counts, images=images, fingerprint=w.fingerprint(), complete=True)
    atomic_write_json(out / "synthetic" / "meta.json", meta, indent=2)
    return {**meta, "seconds": time.perf_counter() - start, "reused": False}
