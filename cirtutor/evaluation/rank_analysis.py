"""Where the target moves when stage 2 re-ranks the list: Table 7 and Figure 8 (docs/metrics.md, 'Rank analysis').

Both take the stage-1 labels of the top-K lists and the stage-2 labels of the same lists
after re-ranking (N, K bool each; the paper uses K = 200). Ranks are 0-based positions of
the target in the list, and only queries whose target is in the list are counted; since
re-ranking permutes the list, those queries have their target in both.
"""
from __future__ import annotations

import numpy as np

from cirtutor.evaluation.metrics import EvaluationError


def target_positions(labels) -> np.ndarray:
    """0-based position of the target in each list, −1 when it is not there: (N,) int."""
    labels = np.asarray(labels, dtype=bool)
    if labels.ndim != 2:
        raise EvaluationError(f"expected labels (N, K), got shape {labels.shape}")
    return np.where(labels.any(axis=1), labels.argmax(axis=1), -1)


def positions_of(ranked, names) -> np.ndarray:
    """0-based position of `names[i]` in the ranked list `ranked[i]`, −1 when it is not there: (N,) int.
    Notebook 05 finds with it where Fashion-IQ's filter puts each query's own reference (kept in the gallery)."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(ranked) != len(names):
        raise EvaluationError(f"expected a ranked list (N, K) per name, got shape {ranked.shape} for {len(names)} names")
    return target_positions(ranked == np.asarray(names, dtype=ranked.dtype)[:, None])


def paired_positions(stage1_labels, stage2_labels) -> tuple[np.ndarray, np.ndarray]:
    """Initial and re-ranked positions of the queries whose target is in the list: (n,), (n,)."""
    if np.shape(stage1_labels) != np.shape(stage2_labels):
        raise EvaluationError(f"stage-1 labels {np.shape(stage1_labels)} and stage-2 labels "
                              f"{np.shape(stage2_labels)} differ in shape")
    initial, reranked = target_positions(stage1_labels), target_positions(stage2_labels)
    found = initial >= 0
    if (reranked[found] < 0).any() or (reranked[~found] >= 0).any():
        raise EvaluationError("stage-2 labels are not a re-ranking of the stage-1 lists: "
                              "a target is in one list but not in the other")
    return initial[found], reranked[found]


def rank_table(stage1_labels, stage2_labels) -> dict:
    """One row of Table 7 (docs/metrics.md, 'Rank analysis'): mean initial and re-ranked 0-based rank, their
    Difference (from the unrounded means) and the % decrease, which the paper computes from
    the means rounded to 2 decimals: (round(I) − round(R)) / round(I) · 100."""
    initial, reranked = paired_positions(stage1_labels, stage2_labels)
    if len(initial) == 0:
        raise EvaluationError("no query has its target in the list: Table 7 is undefined")
    i, r = float(initial.mean()), float(reranked.mean())
    ri, rr = round(i, 2), round(r, 2)
    return {"queries": len(initial), "total": len(np.asarray(stage1_labels)), "initial": i, "reranked": r,
            "difference": i - r, "percent_decrease": (ri - rr) / ri * 100}


def rank_decrease(stage1_labels, stage2_labels) -> float | None:
    """Table 7's % decrease of the mean rank for these lists, None when no target is in them or all
    are already ranked first (nothing to decrease; the scorecard's F7 at the main K: `cirtutor.findings`)."""
    initial, _ = paired_positions(stage1_labels, stage2_labels)
    if not len(initial) or round(float(initial.mean()), 2) == 0:     # no target, or every one already first
        return None
    return rank_table(stage1_labels, stage2_labels)["percent_decrease"]


def rank_shift_by_initial(stage1_labels, stage2_labels) -> dict:
    """Figure 8's data (docs/metrics.md, 'Rank analysis'), for every initial index i in [0, K): the average shift
    Δ_i = i − mean(re-ranked index of the queries first ranked at i), 0 where none was, and
    the number of such queries. Returns {"initial": (K,), "mean_shift": (K,), "count": (K,)};
    the paper draws the bars at x = i + 1."""
    k = np.shape(stage1_labels)[1]
    initial, reranked = paired_positions(stage1_labels, stage2_labels)
    count = np.bincount(initial, minlength=k)                          # (K,)
    total = np.bincount(initial, weights=reranked, minlength=k)        # (K,) sum of re-ranked indices
    mean_reranked = np.divide(total, count, out=np.arange(k, dtype=np.float64), where=count > 0)
    return {"initial": np.arange(k), "mean_shift": np.arange(k) - mean_reranked, "count": count}
