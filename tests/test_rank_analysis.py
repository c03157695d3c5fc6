"""Table 7 and Figure 8 (docs/metrics.md, 'Rank analysis') from label arrays whose answers are known."""
import numpy as np
import pytest

from cirtutor.evaluation import EvaluationError, positions_of, rank_shift_by_initial, rank_table, target_positions

K = 200


def labels_at(positions, k=K):
    """(N, k) labels with the target at each 0-based position; None = not in the list."""
    out = np.zeros((len(positions), k), bool)
    for n, p in enumerate(positions):
        if p is not None:
            out[n, p] = True
    return out


def spread(total, n):
    """n integer positions summing to `total` (so their mean is total / n)."""
    return [total // n + (i < total % n) for i in range(n)]


def test_target_positions():
    assert target_positions(labels_at([3, None, 0], k=5)).tolist() == [3, -1, 0]


def test_positions_of_names_in_ranked_lists():
    ranked = np.array([["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]])
    assert positions_of(ranked, ["a", "b", "z"]).tolist() == [0, 2, -1]
    with pytest.raises(EvaluationError, match="a ranked list"):
        positions_of(ranked, ["a"])


def test_cirr_row_of_table_7_with_the_rounding_quirk():
    """Means 5.316 and 4.094: the Difference column shows 1.22 (unrounded), while the
    percentage comes from the rounded 5.32 and 4.09: (5.32 − 4.09) / 5.32 = 23.12 %."""
    misses = [None] * 23                                        # targets outside the top 200: left out
    stage1 = labels_at(spread(5316, 1000) + misses)
    stage2 = labels_at(spread(4094, 1000) + misses)
    row = rank_table(stage1, stage2)
    assert (row["queries"], row["total"]) == (1000, 1023)
    assert row["initial"] == pytest.approx(5.316) and row["reranked"] == pytest.approx(4.094)
    assert round(row["difference"], 2) == 1.22
    assert round(row["initial"], 2) - round(row["reranked"], 2) == pytest.approx(1.23)
    assert round(row["percent_decrease"], 2) == 23.12


@pytest.mark.parametrize("initial, reranked, difference, percent", [
    (28.74, 22.25, 6.49, 22.58),   # Fashion-IQ dress
    (26.96, 20.42, 6.54, 24.26),   # shirt
    (25.81, 18.74, 7.07, 27.39),   # toptee
    (5.32, 4.09, 1.23, 23.12),     # CIRR, from the rounded means (the paper prints 1.22 from unrounded ones)
])
def test_table_7_arithmetic(initial, reranked, difference, percent):
    row = rank_table(labels_at(spread(round(initial * 100), 100)), labels_at(spread(round(reranked * 100), 100)))
    assert round(row["difference"], 2) == difference and round(row["percent_decrease"], 2) == percent


def test_figure_8_shift_per_initial_index():
    stage1 = labels_at([0, 0, 2, 2, 2, 4, None], k=6)
    stage2 = labels_at([0, 1, 0, 1, 0, 4, None], k=6)
    out = rank_shift_by_initial(stage1, stage2)
    assert out["initial"].tolist() == [0, 1, 2, 3, 4, 5]
    assert out["count"].tolist() == [2, 0, 3, 0, 1, 0]
    assert out["mean_shift"] == pytest.approx([0 - 0.5, 0, 2 - 1 / 3, 0, 0, 0])


def test_stage2_must_re_rank_the_same_lists():
    with pytest.raises(EvaluationError, match="not a re-ranking"):
        rank_table(labels_at([1, 2]), labels_at([1, None]))
    with pytest.raises(EvaluationError, match="shape"):
        rank_table(labels_at([1, 2]), labels_at([1]))
    with pytest.raises(EvaluationError, match="no query"):
        rank_table(labels_at([None]), labels_at([None]))
