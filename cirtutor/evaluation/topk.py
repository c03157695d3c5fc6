"""Top-K files: stage 1's candidate lists, the input of stage 2 (docs/data_formats.md, 'Top-K files').

A `TopK` holds, per query (caption-file order), its K best gallery names (CIRR lists
already lack the reference), the target names and the N×K labels, plus the split and the
Fashion-IQ category; on CIRR also each query's 5 subset members in the filter's order (what
Rs@K and the test server's subset file need). Two file formats:

* ours, without pickles: ``NAME.safetensors`` with the tensors ``indices`` (N, K) int64
  into ``index_names``, ``subset_indices`` (N, 5) int64, ``labels`` (N, K) and ``group_labels``
  (N, 5) as uint8, and the sidecar ``NAME.json`` with the names, split and category. The sidecar is written last and
  records the sha256 of the tensor file, so a pair torn apart by an interrupted run (or
  mixed from two runs) is detected on load.
* the authors': ``torch.save`` of a dict (``fiq_top_{K}_val_{cat}.pt``, ``cirr_top_{K}_{split}.pt``)
  with ``sorted_index_names`` a numpy ``<U..`` array, lists of names, bool tensors.

Reading the authors' files safely. Their numpy string arrays are pickled objects, which
``torch.load(weights_only=True)`` refuses by default. We found (torch 2.13, numpy 2.4) that
allow-listing four numpy globals through ``torch.serialization.safe_globals`` is enough:
``_reconstruct`` (under its numpy 1.x name ``numpy.core.multiarray``, which files written
before numpy 2 — like the released ones, presumably — record, and its numpy 2 name
``numpy._core.multiarray``), ``ndarray``, ``dtype`` and the str dtype class. They rebuild an
array from its raw bytes and run nothing else, so these files need no trust (tested on files
written both ways). A file holding anything beyond that is refused unless ``trust=True``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from cirtutor.evaluation.metrics import EvaluationError, labels_from_ranking
from cirtutor.io import atomic_open, atomic_write_bytes, atomic_write_json, torch_load

FORMAT = "cirtutor.topk"
VERSION = 2                 # 2 added subset_indices; version 1 files (without it) still load


@dataclass
class TopK:
    """Stage-1 candidate lists for one split (and one Fashion-IQ category)."""
    sorted_index_names: np.ndarray            # (N, K) str, best first
    index_names: list[str]                    # the gallery, in gallery order
    split: str
    target_names: list[str] | None = None     # (N,) ground truth; None for test splits
    labels: np.ndarray | None = None          # (N, K) bool, sorted_index_names == target; from targets when None
    category: str | None = None               # Fashion-IQ category ("dress_types" in the authors' files); None for CIRR
    group_labels: np.ndarray | None = None    # (N, 5) bool, CIRR stage-1 subset labels
    subset_names: np.ndarray | None = None    # (N, 5) str, CIRR: each query's subset members in the filter's order

    def __post_init__(self):
        self.sorted_index_names = np.asarray(self.sorted_index_names).astype(str)
        self.index_names = [str(n) for n in self.index_names]
        if self.sorted_index_names.ndim != 2:
            raise EvaluationError(f"sorted_index_names must be (N, K), got shape {self.sorted_index_names.shape}")
        if self.subset_names is not None:
            self.subset_names = np.asarray(self.subset_names).astype(str)
            if self.subset_names.ndim != 2 or len(self.subset_names) != self.n:
                raise EvaluationError(f"subset_names must be (N={self.n}, 5), got shape {self.subset_names.shape}")
        if self.target_names is not None:
            self.target_names = [str(t) for t in self.target_names]
            self._check_labels(labels_from_ranking(self.sorted_index_names, self.target_names))
            if self.subset_names is not None and self.group_labels is None:
                self.group_labels = labels_from_ranking(self.subset_names, self.target_names)
        elif self.labels is not None:
            raise EvaluationError("labels without target_names: the targets define the labels")
        if self.group_labels is not None:
            self.group_labels = np.asarray(self.group_labels, dtype=bool)
            if self.group_labels.ndim != 2 or len(self.group_labels) != self.n:
                raise EvaluationError(f"group_labels must be (N={self.n}, 5), got shape {self.group_labels.shape}")

    def _check_labels(self, expected: np.ndarray) -> None:
        if self.labels is None:
            self.labels = expected
            return
        self.labels = np.asarray(self.labels, dtype=bool)
        if self.labels.shape != expected.shape:
            raise EvaluationError(f"labels have shape {self.labels.shape}, the lists {expected.shape}")
        bad = np.nonzero((self.labels != expected).any(axis=1))[0]
        if len(bad):
            raise EvaluationError(f"labels disagree with sorted_index_names == target_names in {len(bad)} rows "
                                  f"(first: query {bad[0]}); the file is inconsistent")

    @property
    def n(self) -> int:
        return self.sorted_index_names.shape[0]

    @property
    def k(self) -> int:
        return self.sorted_index_names.shape[1]

    def select(self, k: int | None = None, split: str | None = None, category: str | None = None,
               index_names: Sequence[str] | None = None, target_names: Sequence[str] | None = None) -> "TopK":
        """Check the file is the one asked for and keep its first k columns, like the authors'
        stage-2 loader (docs/data_formats.md, 'Top-K files'): k ≤ stored K; split, category, gallery order and targets
        equal to the ones given."""
        if k is not None and not 1 <= k <= self.k:
            raise EvaluationError(f"asked for the top {k} candidates, but the file stores only the top {self.k}; "
                                  "recompute the top-K file with a larger K")
        for what, want, have in (("split", split, self.split), ("category", category, self.category)):
            if want is not None and want != have:
                raise EvaluationError(f"top-K file is for {what} {have!r}, expected {want!r}")
        if index_names is not None and list(index_names) != self.index_names:
            raise EvaluationError("the file's index_names differ from the split's gallery (order matters); "
                                  "was it computed from another annotation release?")
        if target_names is not None and list(target_names) != self.target_names:
            raise EvaluationError("the file's target_names differ from the queries' targets; "
                                  "was it computed from another caption file?")
        if k is None or k == self.k:
            return self
        return replace(self, sorted_index_names=self.sorted_index_names[:, :k].copy(),
                       labels=None if self.labels is None else self.labels[:, :k].copy())


def authors_filename(k: int, split: str, category: str | None = None, suffix: str = ".pt") -> str:
    """The authors' file name (docs/data_formats.md, 'Top-K files'): fiq_top_{K}_{split}_{cat}.pt or cirr_top_{K}_{split}.pt
    (ours: the same name ending in .safetensors)."""
    return (f"fiq_top_{k}_{split}_{category}" if category else f"cirr_top_{k}_{split}") + suffix


# ----------------------------------------------------------------------------- the hand-off between the stages

def check_lists(lists: Sequence[TopK], dataset, k: int) -> list[TopK]:
    """Stage 2's checks on stage 1's lists, as the authors' stage-2 loader makes them: one list per retrieval
    group of `dataset` (`dataset.retrieval_groups()`), each for the dataset's split and the group's category,
    at least `k` long (or the whole gallery), over the group's gallery in its order, one row per query, with
    the queries' targets where the split has them. Returns the lists, in group order, as they are."""
    groups = dataset.retrieval_groups()
    by_category = {t.category: t for t in lists}
    if len(by_category) != len(lists) or set(by_category) != {g.category for g in groups}:
        have = sorted(str(c) for c in by_category)
        raise EvaluationError(f"expected one top-K list per retrieval group of {dataset.dataset_name} {dataset.split} "
                              f"({', '.join(str(g.category) for g in groups)}), got {', '.join(have) or 'none'}")
    out = []
    for g in groups:
        where = g.category or dataset.split
        topk = by_category[g.category].select(None, dataset.split, g.category, g.gallery)   # split, category, gallery
        targets = [dataset.queries[i]["target"] for i in g.indices] if all(
            "target" in dataset.queries[i] for i in g.indices) else None
        if topk.n != len(g.indices):
            raise EvaluationError(f"the top-K list of {where} has {topk.n} rows, the split {len(g.indices)} "
                                  "queries: was it computed from another caption file?")
        if targets is not None and topk.target_names is None:
            raise EvaluationError(f"the top-K list of {where} has no targets, the {dataset.split} queries do: "
                                  "was it written for a test split?")
        if g.subsets and targets is not None and topk.group_labels is None:
            raise EvaluationError(f"the top-K list of {where} has no subset labels (Rs@K): write it again with "
                                  "`cirtutor extract-topk`")
        out.append(topk.select(target_names=targets))
        if out[-1].k < min(k, g.list_length):
            raise EvaluationError(f"the top-K list of {where} holds the top {out[-1].k}, stage 2 needs the top "
                                  f"{min(k, g.list_length)}: run `cirtutor extract-topk` with --k {k} or more")
    return out


# ----------------------------------------------------------------------------- our format

def _paths(path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise EvaluationError(f"top-K files in our format end with .safetensors (a .json sidecar sits beside it), got {path}")
    return path, path.with_suffix(".json")


def _indices(names: np.ndarray, index_names: list[str]) -> np.ndarray:
    """Position of every ranked name in the gallery: (N, K) int64."""
    gallery = np.asarray(index_names, dtype=str)
    order = np.argsort(gallery, kind="stable")
    pos = order[np.searchsorted(gallery, names, sorter=order).clip(max=len(gallery) - 1)]  # (N, K)
    wrong = gallery[pos] != names
    if wrong.any():
        raise EvaluationError(f"ranked name {names[wrong][0]!r} is not in index_names")
    return pos.astype(np.int64)


def save_topk(path, topk: TopK) -> Path:
    """Write `path` (.safetensors: indices, labels, group_labels) and its .json sidecar, atomically."""
    tensors_path, sidecar_path = _paths(path)
    tensors = {"indices": _indices(topk.sorted_index_names, topk.index_names)}
    if topk.subset_names is not None:
        tensors["subset_indices"] = _indices(topk.subset_names, topk.index_names)
    for key in ("labels", "group_labels"):
        if getattr(topk, key) is not None:
            tensors[key] = getattr(topk, key).astype(np.uint8)
    blob = save_safetensors(tensors)
    atomic_write_bytes(tensors_path, blob)
    atomic_write_json(sidecar_path, {
        "format": FORMAT, "version": VERSION, "split": topk.split, "category": topk.category,
        "shape": [topk.n, topk.k], "tensors": tensors_path.name, "sha256": hashlib.sha256(blob).hexdigest(),
        "index_names": topk.index_names, "target_names": topk.target_names,
    })
    return tensors_path


def load_topk(path, k: int | None = None, split: str | None = None, category: str | None = None,
              index_names: Sequence[str] | None = None, target_names: Sequence[str] | None = None) -> TopK:
    """Read a top-K file in our format; the keyword arguments are checked by `TopK.select`."""
    tensors_path, sidecar_path = _paths(path)
    for p in (tensors_path, sidecar_path):
        if not p.is_file():
            raise EvaluationError(f"missing {p}: a top-K file is a .safetensors plus its .json sidecar")
    try:
        meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{sidecar_path} is not valid JSON ({e}); write the top-K file again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EvaluationError(f"{sidecar_path} is not a cirtutor top-K sidecar (no \"format\": {FORMAT!r})")
    if meta.get("version", 1) > VERSION:
        raise EvaluationError(f"{sidecar_path} was written by a newer cirtutor (top-K format version "
                              f"{meta['version']}, this one reads up to {VERSION}): update cirtutor")
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise EvaluationError(f"{tensors_path} does not match its sidecar {sidecar_path.name} (sha256 differs): "
                              "the pair comes from different runs; write the top-K file again")
    tensors = load_safetensors(blob)
    flags = {key: tensors[key].astype(bool) for key in ("labels", "group_labels") if key in tensors}
    names = np.asarray(meta["index_names"], dtype=str)
    topk = TopK(
        sorted_index_names=names[tensors["indices"]], index_names=meta["index_names"], split=meta["split"],
        target_names=meta["target_names"], labels=flags.get("labels"), category=meta["category"],
        group_labels=flags.get("group_labels"),
        subset_names=names[tensors["subset_indices"]] if "subset_indices" in tensors else None,
    )
    return topk.select(k, split, category, index_names, target_names)


# ----------------------------------------------------------------------------- the authors' format

def _numpy_globals() -> list:
    """What unpickling a numpy str array needs (module docstring), under both numpy module names."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"), (_reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(str))]


def _torch_load(path: Path, trust: bool):
    if not path.is_file():
        raise EvaluationError(f"missing top-K file {path}")
    return torch_load(path, trust, allowed=tuple(_numpy_globals()), error=EvaluationError)


def _bool_array(t) -> np.ndarray | None:
    """A bool tensor as its own numpy array: a copy, which drops the N×gallery storage the
    authors' label views carry (docs/data_formats.md, 'Top-K files')."""
    return None if t is None else torch.as_tensor(t).numpy().astype(bool)


def read_authors_topk(path, trust: bool = False, k: int | None = None, split: str | None = None,
                      category: str | None = None, index_names: Sequence[str] | None = None,
                      target_names: Sequence[str] | None = None) -> TopK:
    """Read the authors' top-K file (docs/data_formats.md, 'Top-K files'); the keyword arguments are checked by `TopK.select`."""
    path = Path(path)
    return authors_topk(_torch_load(path, trust), path).select(k, split, category, index_names, target_names)


def authors_topk(raw, path) -> TopK:
    """The TopK of the dict an authors' top-K file holds (already loaded from `path`)."""
    required = ("sorted_index_names", "index_names", "split")
    if not isinstance(raw, dict) or any(key not in raw for key in required):
        have = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise EvaluationError(f"{path} is not a top-K file: expected a dict with {list(required)}, found {have}")
    topk = TopK(
        sorted_index_names=raw["sorted_index_names"], index_names=list(raw["index_names"]), split=raw["split"],
        target_names=raw.get("target_names"), labels=_bool_array(raw.get("labels")),
        category=raw.get("dress_types"), group_labels=_bool_array(raw.get("group_labels")),
    )
    return topk


def write_authors_topk(path, topk: TopK) -> Path:
    """Write `topk` as the authors' stage-1 scripts do (docs/data_formats.md, 'Top-K files'), atomically. Test splits
    (no targets) get only sorted_index_names, index_names and split."""
    obj = {"sorted_index_names": np.asarray(topk.sorted_index_names, dtype=str)}  # (N, K) <U..
    if topk.target_names is not None:
        obj["target_names"] = list(topk.target_names)
    obj["index_names"] = list(topk.index_names)
    if topk.labels is not None:
        obj["labels"] = torch.from_numpy(np.ascontiguousarray(topk.labels, dtype=bool))
    obj["split"] = topk.split
    if topk.category is not None:
        obj["dress_types"] = topk.category
    if topk.group_labels is not None:
        obj["group_labels"] = torch.from_numpy(np.ascontiguousarray(topk.group_labels, dtype=bool))
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)
