"""Rankings and the paper's recall metrics, as pure functions over arrays (docs/metrics.md).

The path from embeddings to numbers:

    rank_gallery(q, g, names)           -> ranked names      (N, K) str, best first
    labels_from_ranking(ranked, targets)-> labels            (N, K) bool, True where the target sits
    recall_at_k(labels, k)              -> 100 * fraction of queries with the target in the first k
    rerank_labels(labels, scores, k)    -> the first k labels reordered by the stage-2 scores

A query whose target is not in its (truncated) list has an all-False row: a miss, never an
error, and every query stays in the denominator (docs/metrics.md, 'Recall@K', 'Re-ranked evaluation').

Ties. The reference sorts distances with a non-stable argsort (ties are practically
impossible between float similarities, docs/metrics.md, 'Ranking the gallery'). We use stable sorts everywhere, so ties
are deterministic: equal distances keep gallery order, equal stage-2 scores keep stage-1
order, equal subset scores keep member order.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from cirtutor.errors import CirtutorError

SUBSET_KS = (1, 2, 3)
CIRR_KS = (1, 5, 10, 50)
FIQ_KS = (10, 50)


class EvaluationError(CirtutorError):
    """Evaluation inputs that do not fit together (shapes, names, k); the message says which."""


# ----------------------------------------------------------------------------- ranking

def rank_gallery(
    query_emb,
    gallery_emb,
    gallery_names: Sequence[str],
    reference_names: Sequence[str] | None = None,
    remove_reference: bool = False,
    top_k: int | None = None,
    chunk_size: int = 256,
) -> np.ndarray:
    """Rank the gallery for every query, best first (docs/metrics.md, 'Ranking the gallery'): (N, K) array of names.

    distance = 1 − q·gᵀ (both L2-normalised), sorted ascending with a stable sort. CIRR
    deletes each query's own reference from its list (`remove_reference=True`, K ≤ M−1);
    Fashion-IQ keeps it (docs/data_formats.md, 'Galleries'). `top_k` truncates the lists (None: the whole gallery).
    Queries are processed `chunk_size` at a time: memory is O(chunk_size·M), not O(N·M).
    The reference uses a plain argsort; with float similarities ties practically never
    happen, so both orders agree, and here equal distances keep gallery order."""
    q = torch.as_tensor(query_emb).float()                  # (N, e)
    g = torch.as_tensor(gallery_emb).float()                # (M, e)
    names = np.asarray(gallery_names, dtype=str)            # (M,)
    _check_ranking_inputs(q, g, names)
    ref = _reference_indices(names, reference_names, len(q)).to(g.device) if remove_reference else None
    width = len(names) - (ref is not None)
    k = width if top_k is None else _check_k(top_k, width, "top_k")
    out = np.empty((len(q), k), dtype=names.dtype)
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        dist = 1 - q[start:stop] @ g.T                      # (c, M)
        order = torch.sort(dist, dim=1, stable=True).indices  # (c, M)
        if ref is not None:
            keep = order != ref[start:stop, None]
            order = order[keep].view(stop - start, width)   # (c, M−1), exactly one removed per row
        out[start:stop] = names[order[:, :k].cpu().numpy()]
    return out


def _check_ranking_inputs(q: torch.Tensor, g: torch.Tensor, names: np.ndarray) -> None:
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise EvaluationError(f"expected query (N, e) and gallery (M, e) embeddings, got {tuple(q.shape)} and {tuple(g.shape)}")
    if len(names) != len(g):
        raise EvaluationError(f"{len(names)} gallery names for {len(g)} gallery embeddings")
    if len(set(names.tolist())) != len(names):
        raise EvaluationError("gallery names must be unique (a name is how a ranked item is identified)")


def _reference_indices(names: np.ndarray, reference_names, n: int) -> torch.Tensor:
    """Gallery index of each query's reference: (N,)."""
    if reference_names is None:
        raise EvaluationError("remove_reference=True needs reference_names (one per query)")
    if len(reference_names) != n:
        raise EvaluationError(f"{len(reference_names)} reference names for {n} queries")
    where = {name: i for i, name in enumerate(names.tolist())}
    missing = [r for r in reference_names if r not in where]
    if missing:
        raise EvaluationError(f"{len(missing)} reference image(s) are not in the gallery, e.g. {missing[0]!r}; "
                              "CIRR references are looked up in the split's gallery (docs/data_formats.md, 'Galleries')")
    return torch.tensor([where[r] for r in reference_names])


def _check_k(k: int, limit: int | None, what: str = "k") -> int:
    if k < 1 or (limit is not None and k > limit):
        raise EvaluationError(f"{what}={k} must be at least 1" + (f" and at most {limit}" if limit is not None else ""))
    return k


def labels_from_ranking(ranked_names, targets: Sequence[str]) -> np.ndarray:
    """labels[n, r] = (ranked_names[n, r] == targets[n]): (N, K) bool (docs/metrics.md, 'Ranking the gallery').
    A target outside the (truncated) list gives an all-False row: a miss."""
    ranked = np.asarray(ranked_names, dtype=str)
    targets = np.asarray(targets, dtype=str)
    if ranked.ndim != 2 or targets.shape != (len(ranked),):
        raise EvaluationError(f"expected ranked names (N, K) and N targets, got {ranked.shape} and {targets.shape}")
    return ranked == targets[:, None]


# ----------------------------------------------------------------------------- recall

def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2 or len(labels) == 0:
        raise EvaluationError(f"expected labels of shape (N, K) with N ≥ 1, got {labels.shape}")
    return labels


def recall_at_k(labels, k: int) -> float:
    """Recall@k = 100 · mean over ALL queries of any(labels[:, :k]) (docs/metrics.md, 'Recall@K').
    For k beyond the list length this is the recall of the whole list (capped by coverage: docs/metrics.md, 'Ground-truth coverage')."""
    return 100.0 * float(_labels(labels)[:, :_check_k(k, None)].any(axis=1).mean())


def coverage_at_k(stage1_labels, k: int) -> float:
    """Ground-truth coverage at K = stage-1 Recall@K: % of queries whose target is in the top-K list (docs/metrics.md, 'Ground-truth coverage')."""
    labels = _labels(stage1_labels)
    return recall_at_k(labels, _check_k(k, labels.shape[1]))


def subset_ranking(ranked_names, subsets) -> np.ndarray:
    """Stage-1 subset order (docs/metrics.md, 'Recall_subset@K'): the 5 members of each query, in the order they appear
    in its global ranking: (N, 5) names. Every member must be in the ranking (rank the full
    gallery, as the reference does)."""
    ranked = np.asarray(ranked_names, dtype=str)          # (N, K)
    subsets = np.asarray(subsets, dtype=str)              # (N, S)
    if ranked.ndim != 2 or subsets.ndim != 2 or len(ranked) != len(subsets):
        raise EvaluationError(f"expected ranked names (N, K) and subsets (N, S), got {ranked.shape} and {subsets.shape}")
    hits = ranked[:, :, None] == subsets[:, None, :]      # (N, K, S)
    if not (hits.sum(axis=1) == 1).all():
        n = int(np.nonzero((hits.sum(axis=1) != 1).any(axis=1))[0][0])
        raise EvaluationError(f"query {n}: not every subset member appears exactly once in its ranking "
                              f"({subsets[n].tolist()}); rank the whole gallery (top_k=None) for subset metrics")
    position = hits.argmax(axis=1)                        # (N, S) where each member sits in the ranking
    return np.take_along_axis(subsets, np.argsort(position, axis=1, kind="stable"), axis=1)


def subset_ranking_by_scores(subsets, scores) -> np.ndarray:
    """Stage-2 subset order (docs/metrics.md, 'Recall_subset@K'): the members sorted by descending score, ties keep
    member order: (N, 5) names."""
    subsets = np.asarray(subsets, dtype=str)              # (N, S)
    scores = np.asarray(scores, dtype=np.float64)         # (N, S)
    if subsets.ndim != 2 or scores.shape != subsets.shape:
        raise EvaluationError(f"expected subsets and scores of the same shape (N, S), got {subsets.shape} and {scores.shape}")
    return np.take_along_axis(subsets, np.argsort(-scores, axis=1, kind="stable"), axis=1)


def recall_subset_at_k(subset_labels, k: int) -> float:
    """Recall_subset@k (CIRR, docs/metrics.md, 'Recall_subset@K'): Recall@k within the 5-member subset ranking.
    `subset_labels` = labels_from_ranking(subset_ranking(...) or subset_ranking_by_scores(...), targets)."""
    labels = _labels(subset_labels)
    return recall_at_k(labels, _check_k(k, labels.shape[1]))


def fashioniq_summary(per_category: Mapping[str, np.ndarray]) -> dict:
    """Fashion-IQ numbers (docs/metrics.md, 'Averages'; paper Table 1): per-category R@10/R@50, their means over the
    categories given, and avg = (avg R@10 + avg R@50) / 2.

    Returns {"per_category": {cat: {"R@10", "R@50"}}, "R@10", "R@50", "avg"}."""
    if not per_category:
        raise EvaluationError("fashioniq_summary needs labels for at least one category")
    per = {cat: {f"R@{k}": recall_at_k(labels, k) for k in FIQ_KS} for cat, labels in per_category.items()}
    means = {f"R@{k}": float(np.mean([m[f"R@{k}"] for m in per.values()])) for k in FIQ_KS}
    return {"per_category": per, **means, "avg": (means["R@10"] + means["R@50"]) / 2}


def cirr_summary(labels, subset_labels) -> dict:
    """CIRR numbers (docs/metrics.md, 'Averages'; paper Tables 2/6): R@1/5/10/50, Rs@1/2/3 and avg = (R@5 + Rs@1) / 2."""
    out = {f"R@{k}": recall_at_k(labels, k) for k in CIRR_KS}
    out.update({f"Rs@{k}": recall_subset_at_k(subset_labels, k) for k in SUBSET_KS})
    out["avg"] = (out["R@5"] + out["Rs@1"]) / 2
    return out


def summary(labels: Mapping[str | None, np.ndarray], subset_labels=None) -> dict:
    """A split's numbers from the labels of each of its retrieval groups (`RetrievalGroup.category` -> (N_g, K)):
    CIRR's, one group and its subset labels (`cirr_summary`), or Fashion-IQ's, a group per category
    (`fashioniq_summary`)."""
    if subset_labels is not None:
        if list(labels) != [None]:
            raise EvaluationError(f"subset labels belong to a single gallery (CIRR), got groups {list(labels)}")
        return cirr_summary(labels[None], subset_labels)
    return fashioniq_summary(labels)


# ----------------------------------------------------------------------------- re-ranking

def rerank_labels(stage1_labels, scores, k: int) -> np.ndarray:
    """Stage-2 labels (docs/metrics.md, 'Re-ranked evaluation'): each query's first k stage-1 labels reordered by descending
    stage-2 score (ties keep stage-1 order): (N, k) bool.

    Only the top-k list exists after re-ranking, so R@K′ for K′ ≥ k equals coverage at k; a
    query whose target is outside its top-k has an all-False row (a miss). The reference sets
    such queries' scores to −99999.99 without scoring them — same labels, less work."""
    labels = _labels(stage1_labels)                       # (N, K)
    scores = np.asarray(scores, dtype=np.float64)         # (N, ≥k)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise EvaluationError(f"expected scores (N, ≥k) for {len(labels)} queries, got {scores.shape}")
    _check_k(k, min(labels.shape[1], scores.shape[1]))
    order = np.argsort(-scores[:, :k], axis=1, kind="stable")  # (N, k)
    return np.take_along_axis(labels[:, :k], order, axis=1)


def rerank_labels_for_ks(stage1_labels, scores, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """`rerank_labels` for several K from ONE score matrix over the largest K (Tables 5/6):
    each candidate is scored independently, so the scores of a top-k list are the first k
    columns. Returns {k: (N, k) bool}."""
    return {k: rerank_labels(stage1_labels, scores, k) for k in ks}
