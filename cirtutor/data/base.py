"""What both benchmark loaders share: reading annotation JSON with clear errors, the two
dataset modes of the method (docs/data_formats.md, 'Training and evaluation items'), and a collate function for their dict items.

Modes
-----
* ``"queries"``: one item per annotation entry (reference, modification text, target...),
  with the reference/target images loaded only when asked (training without a feature
  cache needs them; evaluation looks features up by name in the gallery).
* ``"gallery"``: one item per image of the split's image list, ``{"name", "image"}``; this
  is what the filter encodes once and the re-ranker looks candidates up in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from cirtutor.data.preprocess import ImageTransform, load_image
from cirtutor.errors import DataError

MODES = ("queries", "gallery")


def read_json(path: Path, expected: str, fix: str) -> Any:
    """Load an annotation file, or explain which file was expected and how to get it."""
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            present = sorted(p.name for p in path.parent.glob("*.json"))[:6]
            hint = f"\n  {path.parent} holds: {', '.join(present) or 'no .json files'}"
        raise DataError(f"missing {expected}: {path}{hint}\n  {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); it is probably truncated: download it again.") from None


def require_fields(entry: Any, fields: Sequence[str], path: Path, index: int) -> None:
    """Check one annotation entry has the fields the split's schema promises."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: entry {index} is a {type(entry).__name__}, expected an object with {list(fields)}")
    missing = [f for f in fields if f not in entry]
    if missing:
        raise DataError(
            f"{path}: entry {index} lacks field(s) {missing} (has {sorted(entry)}).\n"
            "  Is this the right file for this split and dataset?"
        )


def require_strings(entry: dict, fields: Sequence[str], path: Path, index: int) -> None:
    """Check the named fields of one annotation entry hold text, not null or numbers: image names
    (non-empty), or captions (a string or a list of strings; the real files hold a few empty ones)."""
    for field in fields:
        value = entry[field]
        texts = value if field == "captions" and isinstance(value, list) else [value]
        if not all(isinstance(t, str) for t in texts) or field not in ("caption", "captions") and not value.strip():
            raise DataError(f"{path}: entry {index} has {json.dumps(field)}: {json.dumps(value)}, expected "
                            f"{'text' if 'caption' in field else 'an image name'}; fix or drop that entry")


def unreachable_targets(ds) -> list[tuple[int, str]]:
    """(query index, why) for every query whose target its evaluation can never rank first: a target
    outside the gallery the query ranks, or (CIRR, whose ranking drops the reference) its own reference."""
    galleries = getattr(ds, "galleries", None)
    known = {None: set(ds.gallery)} if galleries is None else {c: set(g) for c, g in galleries.items()}
    out = []
    for i, q in enumerate(ds.queries):
        if "target" not in q:
            continue
        if q["target"] not in known.get(q.get("category"), known.get(None, set())):
            out.append((i, f"target {q['target']!r} is not in the {ds.split} gallery"))
        elif galleries is None and q["target"] == q["reference"]:
            out.append((i, f"target {q['target']!r} is its own reference"))
    return out


def check_targets(ds) -> None:
    """DataError when a query's target could never be found (`unreachable_targets`): such a query
    would count as a miss whatever the model does."""
    bad = unreachable_targets(ds)
    if bad:
        i, why = bad[0]
        raise DataError(f"{ds.dataset_name} {ds.split}: {len(bad)} query(ies) can never find their target, e.g. "
                        f"query {i}: {why}; check the annotations with `cirtutor data-stats`")


def check_choice(value: str, choices: Sequence[str], what: str, dataset: str) -> str:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r} for {dataset}; expected one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class RetrievalGroup:
    """One ranking problem of a split (docs/data_formats.md, 'Galleries'): the queries `indices` each
    rank `gallery`. Stage 1 writes one top-K file per group; stage 2 and every evaluation read it."""
    category: str | None            # Fashion-IQ's category; None for CIRR's single gallery
    gallery: list[str]              # the names ranked, gallery order
    indices: list[int]              # its queries, caption-file order
    remove_reference: bool          # CIRR drops each query's own reference from its list
    subsets: bool                   # CIRR also ranks each query's 5 subset members (Rs@K)

    @property
    def list_length(self) -> int:
        """How many candidates a query of this group can rank: the gallery, less its reference on CIRR."""
        return len(self.gallery) - self.remove_reference


class CIRDataset(torch.utils.data.Dataset):
    """Common machinery. Subclasses fill `self.queries` (list of dicts), `self.gallery`
    (list of names, gallery order) and implement `image_path(name)`; a benchmark also says how its
    queries are ranked (the retrieval protocol): `remove_reference`, `server_split` and `retrieval_groups()`."""

    dataset_name = "CIR"
    remove_reference = False        # whether a query's reference is removed from the gallery it ranks
    server_split: str | None = None  # the split an evaluation server scores (CIRR: test1); None: no server

    def __init__(self, split: str, mode: str, transform: Callable | None, load_images: bool | None):
        self.split = split
        self.mode = check_choice(mode, MODES, "mode", self.dataset_name)
        self.transform = transform or ImageTransform()
        # docs/data_formats.md, 'Training and evaluation items': training queries come with images, evaluation queries with names only.
        self.load_images = (split == "train") if load_images is None else load_images
        self.queries: list[dict] = []
        self.gallery: list[str] = []
        self.caption_files: list[Path] = []  # the annotation files the queries were read from

    def image_path(self, name: str) -> Path:
        raise NotImplementedError

    def load(self, name: str) -> torch.Tensor:
        """The preprocessed image `name`: (3, R, R)."""
        return self.transform(load_image(self.image_path(name)))

    def query_text(self, index: int) -> str:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Tell the dataset which epoch is read: a no-op where each query has one text (Fashion-IQ draws one per epoch)."""

    def training_texts(self, index: int) -> list[str]:
        """Every text query `index` can read in training (the re-ranker's cached z_t needs one per text)."""
        return [self.query_text(index)]

    def retrieval_groups(self) -> list[RetrievalGroup]:
        """How this split's queries are ranked: one group per gallery (the retrieval protocol)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.queries) if self.mode == "queries" else len(self.gallery)

    def __getitem__(self, index: int) -> dict:
        if self.mode == "gallery":
            name = self.gallery[index]
            return {"name": name, "image": self.load(name)}
        item = dict(self.queries[index], index=index, text=self.query_text(index))
        if self.load_images:
            item["ref_image"] = self.load(item["reference"])
            if "target" in item:
                item["target_image"] = self.load(item["target"])
        return item

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, mode={self.mode!r}, queries={len(self.queries)}, gallery={len(self.gallery)})"


def collate(batch: list[dict]) -> dict:
    """Stack tensors, keep everything else (names, texts, subsets) as plain lists."""
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
