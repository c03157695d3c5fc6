"""CIRR in its real on-disk layout (docs/data_formats.md, 'On-disk layout', 'CIRR annotations', 'CIRR captions and subsets').

    cirr_dataset/
        cirr/captions/      cap.rc2.{train|val|test1}.json   [{"pairid", "reference", "target_hard", "caption", "img_set", ...}]
        cirr/image_splits/  split.rc2.{train|val|test1}.json {name: "./dev/dev-244-0-img0.png", ...}
        train/<n>/train-*.png   dev/dev-*.png   test1/test1-*.png

Image paths come from the split JSON values, relative to the images root (by default the
`cirr_dataset` folder, or its `img_raw/` when the images sit there as in CIRR's README; the
annotations may live elsewhere). The subset for Recall_subset is
the 6 `img_set.members` with the reference removed (5 names, member order kept);
`target_soft` is ignored, as by the authors. test1 has no targets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from cirtutor.data.base import CIRDataset, RetrievalGroup, check_choice, read_json, require_fields, require_strings
from cirtutor.errors import DataError

SPLITS = ("train", "val", "test1")
FETCH_HINT = "Download the annotations with `python data_scripts/download_cirr.py --root DIR`, or point --annotations at the folder that holds captions/ and image_splits/."


def captions_path(root: Path, split: str) -> Path:
    return root / "captions" / f"cap.rc2.{split}.json"


def split_path(root: Path, split: str) -> Path:
    return root / "image_splits" / f"split.rc2.{split}.json"


def find_annotation_root(root: Path) -> Path:
    """Accept `cirr_dataset/`, `cirr_dataset/cirr/`, or a parent holding `cirr_dataset/`."""
    for candidate in (root, root / "cirr", root / "cirr_dataset" / "cirr"):
        if (candidate / "captions").is_dir() or (candidate / "image_splits").is_dir():
            return candidate
    raise DataError(
        f"{root} does not look like CIRR: expected {root}/cirr/captions/cap.rc2.<split>.json and "
        f"{root}/cirr/image_splits/split.rc2.<split>.json (or those two folders directly in {root}).\n  {FETCH_HINT}"
    )


IMAGE_FOLDERS = ("train", "dev", "test1")     # the split files' paths start with one of these


def find_images_root(root: Path) -> Path:
    """The folder the split files' image paths are relative to: `root` as the authors lay it out, or
    `root/img_raw` as CIRR's own README does (train/, dev/ and test1/ under img_raw/)."""
    if not any((root / d).is_dir() for d in IMAGE_FOLDERS) and (root / "img_raw").is_dir():
        return root / "img_raw"
    return root


class CIRR(CIRDataset):
    """CIRR queries or gallery for one split.

    Query items: ``{"index", "pairid", "reference", "target" (not in test1), "text", "subset"}``
    plus ``"ref_image"``/``"target_image"`` tensors when `load_images` (default: train only).
    `root` is the `cirr_dataset` folder; `annotations` and `images` override where the JSON
    files and the images live.
    """

    dataset_name = "CIRR"
    remove_reference = True         # a query never retrieves its own reference (docs/data_formats.md, 'Galleries')
    server_split = "test1"          # scored by the CIRR evaluation server

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        mode: str = "queries",
        *,
        annotations: str | Path | None = None,
        images: str | Path | None = None,
        transform: Callable | None = None,
        load_images: bool | None = None,
    ):
        super().__init__(check_choice(split, SPLITS, "split", "CIRR"), mode, transform, load_images)
        root = Path(root)
        self.annotations_root = find_annotation_root(Path(annotations) if annotations is not None else root)
        self.images_root = find_images_root(Path(images) if images is not None else root)
        self.image_paths = self._read_split()
        self.gallery = list(self.image_paths)  # file order = gallery order
        if mode == "queries":
            self.queries = self._read_captions()

    def _read_split(self) -> dict[str, str]:
        path = split_path(self.annotations_root, self.split)
        paths = read_json(path, f"CIRR {self.split} image split", FETCH_HINT)
        if not isinstance(paths, dict):
            raise DataError(f"{path} should map image names to relative paths, found a {type(paths).__name__}")
        return paths

    def _read_captions(self) -> list[dict]:
        path = captions_path(self.annotations_root, self.split)
        entries = read_json(path, f"CIRR {self.split} captions", FETCH_HINT)
        self.caption_files.append(path)
        test = self.split == "test1"
        fields = ("pairid", "reference", "caption", "img_set") + (() if test else ("target_hard",))
        queries = []
        for i, e in enumerate(entries):
            require_fields(e, fields, path, i)
            require_fields(e["img_set"], ("members",), path, i)
            require_strings(e, [f for f in fields if f not in ("pairid", "img_set")], path, i)
            q = {
                "pairid": e["pairid"],
                "reference": e["reference"],
                "caption": e["caption"],
                "subset": [m for m in e["img_set"]["members"] if m != e["reference"]],
            }
            if not test:
                q["target"] = e["target_hard"]
            queries.append(q)
        return queries

    def query_text(self, index: int) -> str:
        return self.queries[index]["caption"]  # verbatim: no stripping, no capitalisation (docs/data_formats.md, 'CIRR captions and subsets')

    def retrieval_groups(self) -> list[RetrievalGroup]:
        """CIRR's protocol: every query ranks the split's one gallery, its reference removed, and
        ranks its 5 subset members apart (Rs@K)."""
        return [RetrievalGroup(None, self.gallery, list(range(len(self.queries))), remove_reference=True,
                               subsets=True)]

    def image_path(self, name: str) -> Path:
        try:
            rel = self.image_paths[name]
        except KeyError:
            raise DataError(f"image {name!r} is not in CIRR's {self.split} image split "
                            f"({self.annotations_root / 'image_splits'}); are the captions and splits from the same release?") from None
        return self.images_root / rel
