"""Stage-2 engine: batch composition, optimiser groups, training and re-ranked evaluation (tiny dims)."""
import dataclasses

import numpy as np
import pytest
import torch

from cirtutor.config import apply_overrides
from cirtutor.engine.stage1 import encode_queries, evaluate_filter, filter_topk, rank_with_filter
from cirtutor.engine.stage2 import (BxBObjective, TrainingZt, batch_order, evaluate_reranker, filter_negatives, hard_pools,
                                    kv_bytes_per_candidate, make_stage2_optimizer, query_inputs, sample_negatives, score_lists,
                                    train_stage2, varying_texts)
from cirtutor.models import DualEncoderReranker
from cirtutor.models import reranker_fast

SMALL = ["data.synthetic_size=8", "data.synthetic_resolution=32", "data.resolution=32", "model.image_size=32",
         "stage2.batch_size=6", "stage2.epochs=2", "stage2.hard_pool=10"]


@pytest.fixture(scope="module")
def world(small_world):
    return small_world(SMALL)


def queries(n_refs=6, edits=5):
    return [{"reference": f"r{i // edits}", "target": f"t{i}"} for i in range(n_refs * edits)]


def test_random_batches_cover_n_over_b():
    batches = list(batch_order(queries(), 7, "random", torch.Generator().manual_seed(0)))
    assert len(batches) == 30 // 7 and len({i for b in batches for i in b}) == 28


def test_hard_batches_start_with_seed_and_its_reference_group():
    qs = queries()
    pools = [[(i + 5) % 30, (i + 6) % 30, (i + 7) % 30] for i in range(30)]
    for batch in batch_order(qs, 8, "hard", torch.Generator().manual_seed(1), pools):
        seed = batch[0]
        group = [j for j in range(30) if qs[j]["reference"] == qs[seed]["reference"]]
        assert set(group) <= set(batch[:5]) and len(batch) == 8
        assert {(seed + d) % 30 for d in (5, 6, 7)} - set(group) <= set(batch)  # the pool comes next
        assert len({qs[j]["target"] for j in batch}) == 8
    with pytest.raises(ValueError, match="hard"):
        next(batch_order(qs, 8, "hard", torch.Generator(), None))


def test_new_parts_get_the_head_learning_rate(world):
    cfg = world[0]
    model = DualEncoderReranker(cfg.model)
    opt = make_stage2_optimizer(model, apply_overrides(cfg, ["stage2.head_lr_mult=10"]).stage2)
    rest, new = opt.param_groups
    assert new["lr_mult"] == 10 and rest["lr_mult"] == 1
    n_new = sum(p.numel() for p in new["params"])
    assert n_new == sum(p.numel() for n, p in model.named_parameters() if "merge_layer" in n or n.startswith("cls_head"))


def test_fashion_iq_training_reads_the_z_t_of_the_text_each_epoch_draws(small_world):
    """Fashion-IQ redraws each training query's text every epoch: the cached z_t must be that text's."""
    cfg, filt, train, _, st, _ = small_world(["data.dataset=fashioniq", *SMALL])
    z_ts = TrainingZt(filt, train, st)
    assert varying_texts(train) and len(z_ts.z_t) > len(train.queries)
    idx = list(range(8))
    for epoch in range(3):
        train.set_epoch(epoch)
        expect = encode_queries(filt, train, st, idx)[1]                  # this epoch's texts
        _, mask, z_t = query_inputs(train, idx, z_ts, "cpu")
        for row, z in enumerate(expect):
            torch.testing.assert_close(z_t[row, : int(mask[row].sum())], z)
    s2 = dataclasses.replace(cfg.stage2, batch_composition="random", epochs=2)
    with pytest.raises(ValueError, match="TrainingZt"):                    # one z_t per query cannot follow the texts
        train_stage2(DualEncoderReranker(cfg.model), train, encode_queries(filt, train, st)[1], st, s2)
    history = train_stage2(DualEncoderReranker(cfg.model), train, z_ts, st, s2, log=lambda _: None).train
    assert len(history) == 2 * (len(train.queries) // 6) and all(np.isfinite(h["loss"]) for h in history)


def test_training_runs_seeded_with_hard_batches(world):
    cfg, filt, train, _, st, _ = world
    _, z_ts = encode_queries(filt, train, st)
    assert all(z.shape[0] <= 64 and z.shape[1] == 96 for z in z_ts)
    ids, mask, z_t = query_inputs(train, [0, 1, 2], z_ts, "cpu")
    assert z_t.shape[:2] == ids.shape and torch.equal(z_t[0, : int(mask[0].sum())], z_ts[0])
    pools = hard_pools(filt, train, st, cfg.stage2.hard_pool)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DualEncoderReranker(cfg.model)
        runs.append(train_stage2(model, train, z_ts, st, cfg.stage2, pools=pools, log=lambda _: None).train)
    assert runs[0] == runs[1] and len(runs[0]) == cfg.stage2.epochs * (len(train.queries) // 6)
    assert all(np.isfinite(h["loss"]) for h in runs[0])


def test_filter_negatives_are_the_filter_top_k_without_the_target(world):
    cfg, filt, train, _, st, _ = world
    negs = filter_negatives(filt, train, st, 5)
    assert len(negs) == len(train.queries) and all(len(row) == 5 for row in negs)
    for q, row in zip(train.queries, negs):
        assert q["target"] not in row and q["reference"] not in row and len(set(row)) == 5
    a, b = sample_negatives(negs[0], 3, 0, 1, 0), sample_negatives(negs[0], 3, 0, 1, 0)
    assert a == b and len(set(a)) == 3 and set(a) <= set(negs[0])
    assert sample_negatives(negs[0], 3, 0, 2, 0) != a or sample_negatives(negs[0], 3, 0, 3, 0) != a  # per epoch
    assert len(sample_negatives(["x", "y"], 4, 0, 0, 0)) == 4  # too few: with replacement
    with pytest.raises(ValueError, match="no filter candidates"):
        sample_negatives([], 2, 0, 0, 0)


def test_filter_topk_negatives_extend_each_row_of_eq2(world):
    cfg = world[0]
    torch.manual_seed(0)
    model = DualEncoderReranker(cfg.model).eval()
    ids, mask = torch.randint(1000, 2000, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    z_t, targets = torch.randn(3, 7, 96), torch.randn(3, 17, 96)
    extra = torch.randn(3, 2, 17, 96)
    loss = BxBObjective(model)(ids, mask, z_t, targets, None, extra)
    bxb = model.bxb_logits(ids, mask, z_t, targets)                               # (3, 3)
    own = model.score_candidates(ids, mask, z_t, extra)                           # (3, 2)
    expected = torch.nn.functional.cross_entropy(torch.cat([bxb, own], 1), torch.arange(3))
    torch.testing.assert_close(loss, expected)
    assert BxBObjective(model)(ids, mask, z_t, targets) < loss                    # more negatives, higher loss


def test_training_with_filter_topk_negatives(world):
    cfg, filt, train, _, st, _ = world
    _, z_ts = encode_queries(filt, train, st)
    s2 = apply_overrides(cfg, ["stage2.negatives=filter_topk", "stage2.num_negatives=3", "stage2.epochs=1",
                              "stage2.batch_composition=random"]).stage2
    with pytest.raises(ValueError, match="filter_topk"):
        train_stage2(DualEncoderReranker(cfg.model), train, z_ts, st, s2, log=lambda _: None)
    negs = filter_negatives(filt, train, st, s2.topk_pool)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(train_stage2(DualEncoderReranker(cfg.model), train, z_ts, st, s2, negatives=negs,
                                 log=lambda _: None).train)
    assert runs[0] == runs[1] and all(np.isfinite(h["loss"]) for h in runs[0])
    with pytest.raises(ValueError, match="negatives"):
        train_stage2(DualEncoderReranker(cfg.model), train, z_ts, st, dataclasses.replace(s2, negatives="mine"))


def test_drop_path_samples_the_vit_in_train_mode_only():
    from cirtutor.models.backbones import add_drop_path, build_vision_encoder, frozen_image_tokens, stochastic_image_tokens
    from cirtutor.config import get_preset
    cfg = apply_overrides(get_preset("tiny"), ["model.vision_layers=4"])
    torch.manual_seed(0)
    vit, images = build_vision_encoder(cfg.model).eval(), torch.randn(16, 3, 64, 64)
    plain = frozen_image_tokens(vit, images)
    assert torch.equal(stochastic_image_tokens(vit, images), plain)  # no hooks: train mode == eval mode (no dropout)
    hooks = add_drop_path(vit, 0.5)
    assert len(hooks) == 2 * 3                                       # block 0 has rate 0: no hook
    assert torch.equal(frozen_image_tokens(vit, images), plain) and not vit.training  # eval mode: off, mode restored
    a, b = stochastic_image_tokens(vit, images), stochastic_image_tokens(vit, images)
    assert not torch.equal(a, b) and not torch.equal(a, plain)
    kept_all = [torch.equal(a[i], plain[i]) for i in range(16)]      # all 6 branches kept: p = (5/6 * 2/3 * 1/2)^2 ≈ 0.08
    assert not all(kept_all)
    for h in hooks:
        h.remove()
    assert torch.equal(stochastic_image_tokens(vit, images), plain)


def test_stage2_with_drop_path_and_recomputed_z_t_reads_images(world):
    cfg, filt, train, _, st, _ = world
    s2 = apply_overrides(cfg, ["stage2.drop_path=0.1", "stage2.z_t=recompute", "stage2.epochs=1"]).stage2
    torch.manual_seed(0)
    model = DualEncoderReranker(cfg.model)
    hist = train_stage2(model, train, None, st, s2, pools=hard_pools(filt, train, st, 10), filter_model=filt,
                        log=lambda _: None, stop_after=2)
    assert len(hist.train) == 2 and all(np.isfinite(h["loss"]) for h in hist.train)
    assert not model.visual_encoder.encoder.layers[-1].mlp._forward_hooks  # hooks removed after training
    with pytest.raises(ValueError, match="drop_path"):
        train_stage2(model, train, None, st, dataclasses.replace(s2, drop_path=1.5), filter_model=filt)


def test_reranked_evaluation_keeps_the_paper_identities(world):
    cfg, filt, _, val, _, sv = world
    torch.manual_seed(0)
    model = DualEncoderReranker(cfg.model)
    model.visual_encoder.load_state_dict(filt.visual_encoder.state_dict())    # the ViT the features came from
    res = evaluate_reranker(filt, model, val, sv, filter_topk(filt, val, sv), ks=(5, 10))
    f = res["filter"]
    assert f == evaluate_filter(filt, val, sv)                # the filter's numbers, from its own lists
    assert res["K=5"]["R@5"] == pytest.approx(f["R@5"]) == pytest.approx(res["K=5"]["coverage"])  # a permutation of the top 5
    assert res["K=5"]["R@10"] == pytest.approx(f["R@5"])    # nothing beyond K in a re-ranked list
    assert res["K=10"]["R@10"] == pytest.approx(f["R@10"])
    assert res["K=5"]["Rs@1"] == res["K=10"]["Rs@1"]         # the subset is scored directly, whatever K
    _, z_ts = encode_queries(filt, val, sv)
    names = np.array([[val.queries[0]["target"], val.queries[1]["target"]]])
    direct = model.eval().score_candidates(*query_inputs(val, [0], z_ts, "cpu"), sv[list(names[0])][None])
    assert np.allclose(score_lists(model, val, z_ts, sv, names), direct.detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"streams": "z_t"}, {"streams": "text"}, {"zt_input": "ref_cls"},
                                {"zt_input": "ref_cls_spatial"}, {"merge": "full_mlp"}, {"dual_ffn": True}])
@pytest.mark.parametrize("one_by_one", [False, True])
def test_fast_path_scores_equal_the_per_query_path(world, kw, one_by_one, monkeypatch):
    """Grouping the split's pairs by candidate (keys/values once per candidate, equal-length
    batches, blocks of candidates) gives the scores of one K-pair forward per query, whether
    the keys/values are copied per pair (small contexts) or attended one candidate at a time."""
    if one_by_one:
        monkeypatch.setattr(reranker_fast, "SMALL_CONTEXT", 0)
    cfg, filt, _, val, _, sv = world
    torch.manual_seed(0)
    model = DualEncoderReranker(dataclasses.replace(cfg.model, **kw))
    _, z_ts = encode_queries(filt, val, sv)
    ranked = rank_with_filter(filt, val, sv, val.gallery, remove_reference=True, top_k=8)
    idx = list(range(0, len(val.queries), 2))                       # a subset of queries, as Fashion-IQ's categories
    slow = score_lists(model, val, z_ts, sv, ranked[idx], indices=idx, share_kv=False)
    fast = score_lists(model, val, z_ts, sv, ranked[idx], indices=idx, pair_batch=7,
                       kv_budget_mb=3 * kv_bytes_per_candidate(model, sv[[val.gallery[0]]].shape[1]) / 2 ** 20)
    assert len(np.unique(ranked[idx])) > 3 and fast.shape == slow.shape == (len(idx), 8)   # several blocks
    assert np.abs(fast - slow).max() < 1e-5


def test_equal_length_batches_never_mix_lengths():
    from cirtutor.engine.stage2 import equal_length_batches
    lengths = np.array([3, 1, 3, 2, 3, 3])
    batches = [b.tolist() for b in equal_length_batches(lengths, 3)]
    assert batches == [[1], [3], [0, 2, 4], [5]]


def test_bf16_scoring_stays_close_to_fp32(world):
    cfg, filt, _, val, _, sv = world
    torch.manual_seed(0)
    model = DualEncoderReranker(cfg.model)
    _, z_ts = encode_queries(filt, val, sv)
    ranked = rank_with_filter(filt, val, sv, val.gallery, remove_reference=True, top_k=5)
    fp32, bf16 = score_lists(model, val, z_ts, sv, ranked), score_lists(model, val, z_ts, sv, ranked, bf16=True)
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max() + 1e-2


def test_evaluation_re_ranks_the_lists_it_is_given(world):
    """Stage 2 reads stage 1's lists and never ranks the gallery itself: the same lists give the same
    numbers; each query's list reversed (its worst candidates first) changes both stages' numbers."""
    cfg, filt, _, val, _, sv = world
    torch.manual_seed(0)
    model = DualEncoderReranker(cfg.model)
    model.visual_encoder.load_state_dict(filt.visual_encoder.state_dict())
    lists = filter_topk(filt, val, sv)
    res = evaluate_reranker(filt, model, val, sv, lists, ks=(5,))
    assert evaluate_reranker(filt, model, val, sv, filter_topk(filt, val, sv), ks=(5,)) == res
    flipped = [dataclasses.replace(t, sorted_index_names=t.sorted_index_names[:, ::-1], labels=None) for t in lists]
    other = evaluate_reranker(filt, model, val, sv, flipped, ks=(5,))
    assert other["K=5"]["coverage"] == pytest.approx(100 * np.mean([t.labels[:, :5].any(1).mean() for t in flipped]))
    assert other["K=5"]["R@5"] != res["K=5"]["R@5"] and other["filter"] != res["filter"]
