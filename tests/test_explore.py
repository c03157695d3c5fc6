"""cirtutor.explore: edit types of the synthetic queries, recall per group, gain counts, the explorer,
on hand-made details and a small synthetic world."""
import numpy as np
import pytest

from cirtutor import explore
from cirtutor.errors import CirtutorError
from cirtutor.explore import at_k, edit_types, explorer, gain_counts, recall_by_group
from cirtutor.analysis import query_item, target_gain

SMALL = ["data.synthetic_size=10", "data.synthetic_resolution=32", "data.resolution=32", "model.image_size=32"]


def details_of(stage1_pos, stage2_pos, k=4):
    """Hand-made details: the target's position per row before/after (-1: not in the list)."""
    s1, s2 = np.zeros((len(stage1_pos), k), bool), np.zeros((len(stage1_pos), k), bool)
    for r, (a, b) in enumerate(zip(stage1_pos, stage2_pos)):
        if a >= 0:
            s1[r, a] = s2[r, b] = True
    return {"stage1": s1, "stage2": s2, "indices": list(range(len(s1)))}


def test_recall_by_group_and_gain_counts_on_hand_made_lists():
    d = details_of([0, 2, 1, -1, 0], [1, 0, 1, -1, 0])
    assert list(target_gain(d)) == [-1, 2, 0, 0, 0]
    by = recall_by_group(d, ["a", "a", "b", "b", "b"], k=1)
    assert by["a"] == {"queries": 2, "F": 50.0, "R": 50.0, "R - F": 0.0}
    assert by["b"]["queries"] == 3 and by["b"]["F"] == pytest.approx(100 / 3) and by["b"]["R"] == pytest.approx(100 / 3)
    assert recall_by_group(d, ["x"] * 5, k=2)["x"]["R"] == 80.0
    assert gain_counts(d) == {"moved up": 1, "unchanged": 2, "moved down": 1, "not in the list": 1}
    with pytest.raises(CirtutorError, match="at least 9"):
        recall_by_group(d, ["x"] * 5, k=9)


def test_at_k_cuts_a_longer_evaluation_to_r_k():
    s1 = np.array([[False, False, True], [True, False, False]])
    scores = np.array([[0.1, 0.5, 0.9], [0.2, 0.8, 0.3]])
    d = {"stage1": s1, "stage2": None, "ranked": np.array([list("abc"), list("def")]), "scores": scores, "indices": [0, 1]}
    two = at_k(d, 2)
    assert two["stage1"].shape == (2, 2) and not two["stage2"][0].any()    # row 0's target was third: out of R_2
    assert list(two["stage2"][1]) == [False, True]                          # row 1: d (0.2) falls below e (0.8)
    assert list(at_k(d, 3)["stage2"][0]) == [True, False, False]            # R_3: the target's 0.9 comes first
    with pytest.raises(CirtutorError, match="exceeds"):
        at_k(d, 4)


def test_recall_by_group_follows_the_rows_indices():
    d = details_of([0, 1], [0, 1])
    d["indices"] = [3, 1]                                  # row 0 is query 3, row 1 is query 1
    groups = ["q0", "b", "q2", "a"]
    assert recall_by_group(d, groups, k=1) == {"a": {"queries": 1, "F": 100.0, "R": 100.0, "R - F": 0.0},
                                               "b": {"queries": 1, "F": 0.0, "R": 0.0, "R - F": 0.0}}


@pytest.fixture(scope="module")
def world(small_world):
    return small_world(SMALL)


def test_edit_types_come_from_the_synthetic_extras(world):
    cfg, _, train, val, _, _ = world
    kinds = edit_types(cfg, val)
    assert len(kinds) == len(val.queries) and set(kinds) <= {"add", "remove", "recolour", "resize", "move", "shape"}
    assert len(edit_types(cfg, train, "train")) == len(train.queries)
    with pytest.raises(CirtutorError, match="not in the synthetic val split"):
        edit_types(cfg, train)                             # train queries looked up in val's extras
    from cirtutor.config import apply_overrides
    with pytest.raises(CirtutorError, match="only in tiny mode"):
        edit_types(apply_overrides(cfg, ["data.root=/some/real/cirr_dataset"]), val)


def test_query_item_and_explorer_draw_a_query(world, monkeypatch):
    cfg, _, _, val, _, _ = world
    n, k = len(val.queries), 6
    rng = np.random.default_rng(0)
    ranked = np.array([rng.permutation(val.gallery)[:k] for _ in range(n)])
    scores = rng.normal(size=(n, k))
    s1 = ranked == np.array([q["target"] for q in val.queries])[:, None]
    s2 = np.take_along_axis(s1, np.argsort(-scores, axis=1, kind="stable"), axis=1)
    d = {"stage1": s1, "stage2": s2, "ranked": ranked, "scores": scores, "indices": list(range(n))}
    item = query_item(val, d, 0, n=3)
    assert item["caption"] == val.query_text(0) and len(item["filtered"]) == len(item["reranked"]) == 3
    assert [name for name, _ in item["reranked"]] == list(ranked[0][np.argsort(-scores[0], kind="stable")][:3])
    short = query_item(val, d, 0, n=3, k=2)                 # R_2: only the first two candidates re-ordered
    assert [name for name, _ in short["filtered"]] == list(ranked[0][:2])
    assert sorted(name for name, _ in short["reranked"]) == sorted(ranked[0][:2])
    box = explorer(val, d, n=3)
    which, pick, k_slider = box.children[0].children
    assert which.options[0] == f"all ({n})" and pick.max == n - 1 and k_slider.max == k
    k_slider.value = 2                                     # redraws R_2
    pick.value = 1                                         # redraws without error
    pick.value = 2
    drawn = []
    monkeypatch.setattr(explore, "plot_qualitative", lambda items: drawn.append(items[0]["caption"]))
    group = next(o for o in which.options[1:] if not o.endswith("(0)"))
    which.value = group                                    # a new group: one redraw, of its first query
    assert pick.value == 0 and len(drawn) == 1


def test_logit_breakdown_scores_each_cala_logit_on_training_batches(world):
    """top-1 is the share of rows whose own column wins, recomputed here on the one batch."""
    import torch

    from cirtutor.config import Stage1Config
    from cirtutor.engine.stage1 import batch_order, stage1_inputs, stage1_objective
    from cirtutor.explore import logit_breakdown

    cfg, filt, train, _, store, _ = world
    objective, _ = stage1_objective(filt, Stage1Config(aux="cala"))
    out = logit_breakdown(objective, train, store, n_batches=1, batch_size=8)
    assert set(out) == {"S_f", "S_ctr", "S_tbia", "S_mix"}
    batch = next(batch_order(train.queries, 8, "reference_groups", torch.Generator().manual_seed(0)))
    with torch.no_grad():
        S = objective.logits(*stage1_inputs(train, store, "cpu")(batch, 0))
    for name, m in S.items():
        assert out[name]["top-1"] == pytest.approx((m.argmax(1) == torch.arange(8)).float().mean().item() * 100)
        assert out[name]["mean |S|"] == pytest.approx(m.abs().mean().item(), rel=1e-5)
    from cirtutor.engine.stage1 import FilterObjective
    assert logit_breakdown(FilterObjective(filt), train, store, n_batches=1, batch_size=8) == {"S_f": out["S_f"]}
    with pytest.raises(CirtutorError, match="asked for 1000"):
        logit_breakdown(objective, train, store, n_batches=1000, batch_size=8)
