"""Rankings and recall metrics on hand-made examples with known answers (docs/metrics.md; docs/data_formats.md, 'Galleries')."""
import numpy as np
import pytest
import torch

from cirtutor.evaluation import (
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
)


def unit(*degrees):
    """2-d unit vectors at the given angles: cosine similarity falls with the angle difference."""
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


GALLERY = ["a", "b", "c", "d"]
GALLERY_EMB = unit(60, 0, 90, 30)          # from a query at 0°: b (0°), d (30°), a (60°), c (90°)


# ----------------------------------------------------------------------------- ranking

def test_rank_gallery_orders_by_similarity():
    ranked = rank_gallery(unit(0, 90), GALLERY_EMB, GALLERY)
    assert ranked.tolist() == [["b", "d", "a", "c"], ["c", "a", "d", "b"]]
    assert rank_gallery(unit(0), GALLERY_EMB, GALLERY, top_k=2).tolist() == [["b", "d"]]


def test_ties_keep_gallery_order():
    gallery = unit(10, 0, 10, 0)             # x and z tie, w and y tie
    assert rank_gallery(unit(0), gallery, ["w", "x", "y", "z"]).tolist() == [["x", "z", "w", "y"]]


def test_cirr_removes_the_reference_fashioniq_keeps_it():
    query = unit(0)                           # its reference b is also its best match
    assert rank_gallery(query, GALLERY_EMB, GALLERY).tolist() == [["b", "d", "a", "c"]]  # Fashion-IQ (§1.8)
    cirr = rank_gallery(query, GALLERY_EMB, GALLERY, reference_names=["b"], remove_reference=True)
    assert cirr.tolist() == [["d", "a", "c"]]                                            # length M − 1
    assert rank_gallery(query, GALLERY_EMB, GALLERY, ["b"], True, top_k=2).tolist() == [["d", "a"]]
    assert rank_gallery(query, GALLERY_EMB, GALLERY, ["c"], True, top_k=2).tolist() == [["b", "d"]]


def test_chunking_does_not_change_the_ranking():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(7, 8, generator=gen), dim=1)
    g = torch.nn.functional.normalize(torch.randn(20, 8, generator=gen), dim=1)
    names = [f"img{i}" for i in range(20)]
    refs = [names[i] for i in (0, 3, 5, 5, 19, 2, 7)]
    whole = rank_gallery(q, g, names, refs, True, chunk_size=256)
    assert whole.shape == (7, 19) and np.array_equal(whole, rank_gallery(q, g, names, refs, True, chunk_size=2))
    expected = np.asarray(names)[np.argsort(-(q @ g.T).numpy(), axis=1, kind="stable")]  # reference: argsort
    assert np.array_equal(rank_gallery(q, g, names, top_k=5), expected[:, :5])


@pytest.mark.parametrize("kwargs, message", [
    (dict(gallery_names=["a", "b", "c"]), "3 gallery names for 4"),
    (dict(gallery_names=["a", "a", "c", "d"]), "unique"),
    (dict(remove_reference=True), "needs reference_names"),
    (dict(remove_reference=True, reference_names=["zz"]), "not in the gallery"),
    (dict(remove_reference=True, reference_names=["a", "b"]), "2 reference names for 1"),
    (dict(top_k=5), "top_k=5"),
    (dict(query_emb=np.ones((1, 3))), "expected query"),
])
def test_rank_gallery_rejects_bad_input(kwargs, message):
    args = dict(query_emb=unit(0), gallery_emb=GALLERY_EMB, gallery_names=GALLERY) | kwargs
    with pytest.raises(EvaluationError, match=message):
        rank_gallery(**args)


# ----------------------------------------------------------------------------- labels and recall

RANKED = np.array([["t0", "x", "y"],
                   ["x", "y", "t1"],
                   ["x", "y", "z"],        # target t2 outside the list: a miss
                   ["x", "t3", "y"]])
TARGETS = ["t0", "t1", "t2", "t3"]


def test_missing_target_is_an_all_false_row_and_counts_in_the_denominator():
    labels = labels_from_ranking(RANKED, TARGETS)
    assert labels.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert [recall_at_k(labels, k) for k in (1, 2, 3, 50)] == [25.0, 50.0, 75.0, 75.0]
    assert coverage_at_k(labels, 3) == 75.0
    with pytest.raises(EvaluationError, match="at most 3"):
        coverage_at_k(labels, 4)
    with pytest.raises(EvaluationError):
        recall_at_k(labels, 0)
    with pytest.raises(EvaluationError, match="N targets"):
        labels_from_ranking(RANKED, TARGETS[:3])


def test_subset_order_stage1_follows_the_global_ranking():
    ranked = [["m3", "g", "m1", "m5", "h", "m2", "m4"]]
    subsets = [["m1", "m2", "m3", "m4", "m5"]]
    order = subset_ranking(ranked, subsets)
    assert order.tolist() == [["m3", "m1", "m5", "m2", "m4"]]
    labels = labels_from_ranking(order, ["m5"])
    assert [recall_subset_at_k(labels, k) for k in (1, 2, 3)] == [0.0, 0.0, 100.0]
    with pytest.raises(EvaluationError, match="top_k=None"):
        subset_ranking([["m3", "m1", "m5", "m2"]], subsets)   # m4 cut off by a truncated ranking


def test_subset_order_stage2_sorts_scores_ties_keep_member_order():
    order = subset_ranking_by_scores([["m1", "m2", "m3", "m4", "m5"]], [[0.1, 0.7, 0.3, 0.7, -2.0]])
    assert order.tolist() == [["m2", "m4", "m3", "m1", "m5"]]


def test_cirr_summary_keys_and_average():
    labels = labels_from_ranking(RANKED, TARGETS)             # R@1 25, R@5/10/50 75
    subset = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    out = cirr_summary(labels, subset)
    assert list(out) == ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "avg"]
    assert (out["R@1"], out["R@5"], out["R@50"], out["Rs@1"], out["Rs@2"], out["Rs@3"]) == (25, 75, 75, 50, 75, 100)
    assert out["avg"] == (75 + 50) / 2


def test_fashioniq_summary_averages_categories():
    def labels(hits_at):                                     # one query per entry: target position, None = miss
        out = np.zeros((len(hits_at), 60), bool)
        for n, r in enumerate(hits_at):
            if r is not None:
                out[n, r] = True
        return out
    out = fashioniq_summary({"dress": labels([0, 20, None, None]),      # R@10 25, R@50 50
                             "shirt": labels([5, 9]),                    # 100, 100
                             "toptee": labels([49, 50, 55, 3])})        # 25, 50
    assert out["per_category"]["dress"] == {"R@10": 25.0, "R@50": 50.0}
    assert out["per_category"]["toptee"] == {"R@10": 25.0, "R@50": 50.0}
    assert out["R@10"] == pytest.approx(50.0) and out["R@50"] == pytest.approx(200 / 3)
    assert out["avg"] == pytest.approx((50.0 + 200 / 3) / 2)


# ----------------------------------------------------------------------------- re-ranking

STAGE1 = np.array([[0, 0, 1, 0],           # target at 2
                   [0, 0, 0, 1],           # target at 3: outside a top-3 list
                   [1, 0, 0, 0],
                   [0, 1, 0, 0]], bool)
SCORES = np.array([[0.1, 0.2, 0.9, 5.0],
                   [0.5, 0.4, 0.3, 9.0],
                   [0.2, 0.2, 0.2, 0.0],   # all tied: stage-1 order kept
                   [0.3, 0.3, 0.1, 0.0]])  # tie between 0 and 1: stage-1 order kept


def test_rerank_reorders_the_top_k_by_descending_score():
    out = rerank_labels(STAGE1, SCORES, 3)
    assert out.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert rerank_labels(STAGE1, SCORES, 4)[1].tolist() == [1, 0, 0, 0]  # in the top-4 list it wins
    with pytest.raises(EvaluationError, match="at most 4"):
        rerank_labels(STAGE1, SCORES, 5)


def test_recall_beyond_k_equals_stage1_coverage():
    gen = np.random.default_rng(0)
    stage1 = np.zeros((200, 30), bool)
    stage1[np.arange(200), gen.integers(0, 60, 200).clip(max=29)] = gen.random(200) < 0.8  # some misses
    scores = gen.random((200, 30))
    for k in (5, 10, 30):
        reranked = rerank_labels(stage1, scores, k)
        for k_prime in (k, k + 1, 50):
            assert recall_at_k(reranked, k_prime) == coverage_at_k(stage1, k)


def test_several_k_from_one_score_matrix_are_prefixes():
    many = rerank_labels_for_ks(STAGE1, SCORES, [2, 3, 4])
    for k, labels in many.items():
        assert np.array_equal(labels, rerank_labels(STAGE1[:, :k], SCORES[:, :k], k))
