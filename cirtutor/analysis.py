"""What `reproduce` measures on one run beside the metrics: the inference time per query (Fig. 7),
the rank analysis (Table 7, Fig. 8), the stage-1 coverage curve and the qualitative figure's
queries (docs/metrics.md, 'Rank analysis', 'Ground-truth coverage'). The notebooks call the same
functions on their own models.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from cirtutor.engine.stage1 import encode_queries, rank_with_filter
from cirtutor.engine.stage2 import score_lists
from cirtutor.evaluation import TopK, check_lists, coverage_at_k, rank_shift_by_initial, rank_table


def inference_times(filt, model, val, stores, device, ks, lists: list[TopK], n: int = 64, repeats: int = 3) -> dict:
    """Fig. 7: wall time per query of the filter (encode the query, rank the gallery) and of
    re-ranking its top-K for each K, on the first `n` queries of the validation split's first retrieval
    group, batch 1 as the authors' evaluation (no keys/values shared across queries: a single query's
    latency). Each is timed `repeats` times and the median kept, so one slow pass (another process, a
    cache miss) does not make a point. The filter is timed on its own row; the re-ranker re-orders stage 1's
    `lists` (the run's top-K files). Fixed overheads (model loading, image features) are reported apart."""
    group, topk = val.retrieval_groups()[0], check_lists(lists, val, max(ks))[0]
    idx = group.indices[:n]
    filter_s = median_time(lambda: rank_with_filter(filt, val, stores["val"], group.gallery, indices=idx, top_k=max(ks),
                                                    remove_reference=group.remove_reference, device=device),
                           repeats) / len(idx)
    _, z_ts = encode_queries(filt, val, stores["val"], indices=idx, device=device)
    z_all = [None] * len(val.queries)
    for i, z in zip(idx, z_ts):
        z_all[i] = z
    rerank = lambda k: score_lists(model, val, z_all, stores["val"], topk.sorted_index_names[:len(idx), :k],  # noqa: E731
                                   batch_size=1, device=device, indices=idx, share_kv=False)
    per_query = {str(k): filter_s + median_time(lambda: rerank(k), repeats) / len(idx) for k in ks}
    return {"filter_per_query_s": filter_s, "per_query_s": per_query, "queries_timed": len(idx), "repeats": repeats}


def median_time(run, repeats: int) -> float:
    """The median wall time of `repeats` calls of `run()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def query_item(val, details: dict, row: int, n: int = 6, k: int | None = None) -> dict:
    """Row `row` of an evaluation's `details` as one qualitative item: the reference and text,
    the filter's top `n` and the re-ranked top `n` (names and image paths), the target's name.
    `k`: re-rank only the filter's first k candidates, as R_k does (default: the whole list)."""
    q = val.queries[details["indices"][row]]
    k = len(details["ranked"][row]) if k is None else k
    order = np.argsort(-details["scores"][row][:k], kind="stable")
    names_f = list(details["ranked"][row][:min(n, k)])
    names_r = [details["ranked"][row][j] for j in order[:n]]
    return {"reference": str(val.image_path(q["reference"])), "caption": val.query_text(details["indices"][row]),
            "target": q["target"], "filtered": [(n_, str(val.image_path(n_))) for n_ in names_f],
            "reranked": [(n_, str(val.image_path(n_))) for n_ in names_r]}


def target_gain(details: dict) -> np.ndarray:
    """Per row: how many places re-ranking moved the target up (negative: down; 0 where it is not in the list)."""
    pos = lambda lab: np.where(lab.any(1), lab.argmax(1), 10**6)
    return pos(details["stage1"]) - pos(details["stage2"])


def qualitative_items(val, details: dict, n: int = 4) -> list[dict]:
    """A few validation queries whose target the re-ranker moved up: reference, caption,
    top-6 filtered and top-6 re-ranked (names and image paths) for the qualitative figure."""
    if "stage1" not in details:                               # Fashion-IQ: the first category's lists
        details = next(iter(details.values()))
    gain = target_gain(details)
    rows = [r for r in np.argsort(-gain, kind="stable")[:n] if gain[r] > 0] or list(range(min(n, len(gain))))
    return [query_item(val, details, r) for r in rows]


def rank_analysis(details: dict) -> dict:
    """Table 7 and Fig. 8 over the largest evaluated K (docs/metrics.md, 'Rank analysis')."""
    if "stage1" not in details:                               # Fashion-IQ: pool the categories
        parts = list(details.values())
        s1 = np.concatenate([p["stage1"] for p in parts])
        s2 = np.concatenate([p["stage2"] for p in parts])
    else:
        s1, s2 = details["stage1"], details["stage2"]
    shift = rank_shift_by_initial(s1, s2)
    return {"k": int(s1.shape[1]), "table": rank_table(s1, s2),
            "shift": {key: np.asarray(v).tolist() for key, v in shift.items()}}


def coverage_curve(filter_metrics_labels: np.ndarray, ks=(1, 5, 10, 20, 50, 100, 200)) -> dict:
    width = filter_metrics_labels.shape[1]
    return {str(k): coverage_at_k(filter_metrics_labels, k) for k in ks if k <= width}
