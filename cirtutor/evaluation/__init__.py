"""Evaluation as pure functions over rankings (docs/metrics.md): no models in here.

* `metrics`: rankings from embeddings, labels, Recall@K / Recall_subset@K, the Fashion-IQ
  and CIRR summaries, stage-2 re-ranking of label rows;
* `topk`: stage 1's top-K files, in our pickle-free format and the authors' format;
* `rank_analysis`: Table 7 and Figure 8 (initial vs re-ranked position of the target);
* `submission`: the CIRR test-server files and their validator;
* `search`: exact top-K over galleries far larger than the datasets' (torch, or FAISS if installed).
"""
from cirtutor.evaluation.metrics import (
    EvaluationError,
    cirr_summary,
    coverage_at_k,
    fashioniq_summary,
    labels_from_ranking,
    rank_gallery,
    recall_at_k,
    recall_subset_at_k,
    rerank_labels,
    rerank_labels_for_ks,
    subset_ranking,
    subset_ranking_by_scores,
    summary,
)
from cirtutor.evaluation.rank_analysis import (paired_positions, positions_of, rank_decrease, rank_shift_by_initial,
                                              rank_table, target_positions)
from cirtutor.evaluation.submission import submission_paths, validate_cirr_submission, write_cirr_submission
from cirtutor.evaluation.topk import TopK, authors_filename, check_lists, load_topk, read_authors_topk, save_topk, write_authors_topk

__all__ = [
    "EvaluationError", "rank_gallery", "labels_from_ranking", "recall_at_k", "coverage_at_k",
    "subset_ranking", "subset_ranking_by_scores", "recall_subset_at_k", "fashioniq_summary", "cirr_summary", "summary",
    "rerank_labels", "rerank_labels_for_ks",
    "TopK", "check_lists", "save_topk", "load_topk", "read_authors_topk", "write_authors_topk", "authors_filename",
    "target_positions", "positions_of", "paired_positions", "rank_table", "rank_decrease", "rank_shift_by_initial",
    "submission_paths", "write_cirr_submission", "validate_cirr_submission",
]
