"""Fashion-IQ in its real on-disk layout (docs/data_formats.md, 'On-disk layout', 'Fashion-IQ annotations', 'Fashion-IQ modification texts').

    fashionIQ_dataset/
        captions/      cap.{dress|shirt|toptee}.{train|val|test}.json   [{"candidate", "target", "captions"}]
        image_splits/  split.{dress|shirt|toptee}.{train|val|test}.json ["B008BHCT58", ...]
        images/        <ASIN>.jpg

Note the schema's naming: "candidate" is the *reference* image. Test entries have no
"target". Validation is per category; the reference image stays in the gallery (docs/data_formats.md, 'Galleries').
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from cirtutor.data.base import CIRDataset, RetrievalGroup, check_choice, read_json, require_fields, require_strings
from cirtutor.data.text import all_compositions, join_captions, sample_caption
from cirtutor.errors import DataError

CATEGORIES = ("dress", "shirt", "toptee")
TRAIN_ORDER = ("dress", "toptee", "shirt")  # the authors concatenate the training triplets in this order (docs/data_formats.md, 'Training and evaluation items')
SPLITS = ("train", "val", "test")
CAPTION_MODES = ("join", "random")
FETCH_HINT = "Download the annotations with `python data_scripts/download_fashioniq.py --root DIR`, or point --annotations at the folder that holds captions/ and image_splits/."


def captions_path(root: Path, category: str, split: str) -> Path:
    return root / "captions" / f"cap.{category}.{split}.json"


def split_path(root: Path, category: str, split: str) -> Path:
    return root / "image_splits" / f"split.{category}.{split}.json"


def find_annotation_root(root: Path) -> Path:
    """Accept the dataset folder itself or a parent that holds `fashionIQ_dataset/`."""
    for candidate in (root, root / "fashionIQ_dataset", root / "fashion-iq"):
        if (candidate / "captions").is_dir() or (candidate / "image_splits").is_dir():
            return candidate
    raise DataError(
        f"{root} does not look like Fashion-IQ: expected {root}/captions/cap.<category>.<split>.json "
        f"and {root}/image_splits/split.<category>.<split>.json.\n  {FETCH_HINT}"
    )


class FashionIQ(CIRDataset):
    """Fashion-IQ queries or gallery for one split and one or more categories.

    Query items: ``{"index", "category", "reference", "target" (not in test), "captions", "text"}``
    plus ``"ref_image"``/``"target_image"`` tensors when `load_images` (default: train only).
    ``text`` is the " and " join for evaluation (`caption_mode="join"`, default outside train)
    or a seeded four-way composition redrawn each epoch (`caption_mode="random"`, default
    for train; call `set_epoch`).
    """

    dataset_name = "Fashion-IQ"

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        categories: Sequence[str] | str = CATEGORIES,
        mode: str = "queries",
        *,
        images: str | Path | None = None,
        transform: Callable | None = None,
        load_images: bool | None = None,
        caption_mode: str | None = None,
        seed: int = 0,
    ):
        super().__init__(check_choice(split, SPLITS, "split", "Fashion-IQ"), mode, transform, load_images)
        self.categories = (categories,) if isinstance(categories, str) else tuple(categories)
        for c in self.categories:
            check_choice(c, CATEGORIES, "category", "Fashion-IQ")
        self.root = find_annotation_root(Path(root))
        self.images_root = Path(images) if images is not None else self.root / "images"
        self.caption_mode = check_choice(caption_mode or ("random" if split == "train" else "join"),
                                         CAPTION_MODES, "caption mode", "Fashion-IQ")
        self.seed, self.epoch = seed, 0
        self.galleries = {c: self._read_split(c) for c in self.categories}  # each category ranks its own gallery
        for category in self.categories:
            self.gallery += self.galleries[category]
            if mode == "queries":
                self.queries += self._read_captions(category)
        self.gallery = list(dict.fromkeys(self.gallery))  # categories are disjoint; keep order, drop repeats

    def _read_captions(self, category: str) -> list[dict]:
        path = captions_path(self.root, category, self.split)
        entries = read_json(path, f"Fashion-IQ {category}/{self.split} captions", FETCH_HINT)
        self.caption_files.append(path)
        fields = ("candidate", "captions") if self.split == "test" else ("candidate", "target", "captions")
        queries = []
        for i, e in enumerate(entries):
            require_fields(e, fields, path, i)
            if not (isinstance(e["captions"], list) and len(e["captions"]) == 2):
                raise DataError(f"{path}: entry {i} must have exactly 2 captions, has {e['captions']!r}")
            require_strings(e, fields, path, i)
            q = {"category": category, "reference": e["candidate"], "captions": list(e["captions"])}
            if "target" in e and self.split != "test":
                q["target"] = e["target"]
            queries.append(q)
        return queries

    def _read_split(self, category: str) -> list[str]:
        path = split_path(self.root, category, self.split)
        names = read_json(path, f"Fashion-IQ {category}/{self.split} image list", FETCH_HINT)
        if not isinstance(names, list):
            raise DataError(f"{path} should be a list of image names, found a {type(names).__name__}")
        return names

    def set_epoch(self, epoch: int) -> None:
        """Training captions are redrawn per epoch (deterministically for a seed)."""
        self.epoch = epoch

    def training_texts(self, index: int) -> list[str]:
        """The evaluation join, or in "random" mode the four compositions an epoch may draw."""
        c1, c2 = self.queries[index]["captions"]
        return [join_captions(c1, c2)] if self.caption_mode == "join" else all_compositions(c1, c2)

    def query_text(self, index: int) -> str:
        c1, c2 = self.queries[index]["captions"]
        if self.caption_mode == "join":
            return join_captions(c1, c2)
        return sample_caption(c1, c2, self.seed, self.epoch, index)

    def retrieval_groups(self) -> list[RetrievalGroup]:
        """Fashion-IQ's protocol: each category's queries rank that category's gallery, the reference kept."""
        return [RetrievalGroup(c, self.galleries[c], [i for i, q in enumerate(self.queries) if q["category"] == c],
                               remove_reference=False, subsets=False) for c in self.categories]

    def image_path(self, name: str) -> Path:
        return self.images_root / f"{name}.jpg"
