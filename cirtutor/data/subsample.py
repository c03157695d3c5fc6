"""Subsampled modes of the real datasets, for users who have the data but not an A100.

`--subsample train=0.1,val=500,gallery=2000` keeps a seeded random fraction (a number < 1)
or count (>= 1) of the training triplets, of the validation queries, and of the validation
gallery images. The gallery always keeps every image the kept queries need (references,
targets, CIRR subset members) and is filled up with random others to the asked size, so
every metric stays defined. Numbers measured on a subsample are not the paper's numbers;
the report says so.
"""
from __future__ import annotations

import copy
import random

from cirtutor.config import parse_spec


def _size(amount: float, n: int) -> int:
    return max(1, round(amount * n)) if amount < 1 else min(n, int(amount))


def _pick(n: int, amount: float | None, rng: random.Random) -> list[int]:
    if amount is None:
        return list(range(n))
    return sorted(rng.sample(range(n), _size(amount, n)))


def needed_images(queries: list[dict]) -> set[str]:
    return {name for q in queries for name in (q["reference"], q.get("target"), *q.get("subset", ())) if name}


def subsample(train, val, spec: str, seed: int = 0):
    """Seeded subsets (copies) of a training and a validation queries-mode dataset."""
    amounts, rng = parse_spec(spec), random.Random(seed)
    train, val = copy.copy(train), copy.copy(val)
    train.queries = [train.queries[i] for i in _pick(len(train.queries), amounts.get("train"), rng)]
    train.gallery = [n for n in train.gallery if n in needed_images(train.queries)]
    val.queries = [val.queries[i] for i in _pick(len(val.queries), amounts.get("val"), rng)]
    if hasattr(val, "galleries"):                                   # Fashion-IQ: one gallery per category
        val.galleries = {c: _shrink(g, val.queries, amounts.get("gallery"), rng) for c, g in val.galleries.items()}
        val.gallery = [n for g in val.galleries.values() for n in g]
    else:
        val.gallery = _shrink(val.gallery, val.queries, amounts.get("gallery"), rng)
    return train, val


def _shrink(gallery: list[str], queries: list[dict], amount: float | None, rng: random.Random) -> list[str]:
    if amount is None:
        return gallery
    keep = needed_images(queries) & set(gallery)
    others = [n for n in gallery if n not in keep]
    extra = max(0, _size(amount, len(gallery)) - len(keep))
    keep |= set(rng.sample(others, min(extra, len(others))))
    return [n for n in gallery if n in keep]                       # gallery order kept
