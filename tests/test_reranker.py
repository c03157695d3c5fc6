"""Stage 2, DualEncoderReranker (docs/authors_code.md, 'The dual-encoder layer', 'Ablation variants'): exactness against transformers' BLIP text
encoder, batched == per-pair scoring, the speed paths of reranker_fast == the reference layer, the merge
rules, and every ablation switch."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cirtutor.config import get_model_config
from cirtutor.models import DualEncoderReranker, tokenize
from cirtutor.models.backbones import build_text_encoder, text_states
from cirtutor.models.loading import reranker_state_from_stage1
from cirtutor.models import reranker_fast
from cirtutor.models.reranker import DualOutput

TINY = get_model_config("tiny")
TEXTS = ["make the red circle blue", "add a square", "remove the small blue triangle at the top left"]
VARIANTS = [{}, {"streams": "z_t"}, {"streams": "text"}, {"zt_input": "ref_cls"}, {"zt_input": "ref_cls_spatial"},
            {"merge": "full_mlp"}, {"dual_ffn": True}]


def variant(**kw):
    torch.manual_seed(0)
    return DualEncoderReranker(dataclasses.replace(TINY, **kw)).eval()


def inputs(n=3, k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = tokenize(TEXTS[:n])
    z_t = torch.randn(n, ids.shape[1], 96, generator=g)
    feats = torch.randn(n, 65, 96, generator=g) if k is None else torch.randn(n, k, 65, 96, generator=g)
    ref = torch.randn(n, 65, 96, generator=g)
    return ids, mask, z_t, feats, ref


def blip_initialised(model, text_encoder):
    """Load a BlipTextModel's weights into `model` by the stage-2 duplication rule."""
    state = {f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}
    dup = reranker_state_from_stage1(state, model.cfg, {})
    missing, unexpected = model.load_state_dict(dup, strict=False)
    assert not unexpected and all("visual_encoder" in k or "merge_layer" in k or "cls_head" in k for k in missing)
    return model


def test_text_stream_alone_equals_transformers_blip_text_encoder():
    torch.manual_seed(1)
    blip = build_text_encoder(TINY).eval()
    model = blip_initialised(variant(streams="text"), blip)
    ids, mask, _, V, _ = inputs()
    _, B = model.text_encoder(None, ids, None, mask, V)
    expected = text_states(blip, ids, mask, V)
    keep = mask.bool()
    assert torch.allclose(B[keep], expected[keep], atol=1e-5)


def test_both_streams_with_averaging_merge_reduce_to_blip():
    """Equal inputs, duplicated weights and a merge layer that averages: both streams are BLIP."""
    torch.manual_seed(1)
    blip = build_text_encoder(TINY).eval()
    model = blip_initialised(variant(), blip)
    eye = torch.eye(96)
    for layer in model.text_encoder.encoder.layer[TINY.text_layers // 2:]:
        layer.crossattention.output.merge_layer.weight.data = torch.cat([eye, eye], 1) / 2
        layer.crossattention.output.merge_layer.bias.data.zero_()
    ids, mask, _, V, _ = inputs()
    A0 = model.text_encoder.embeddings(input_ids=ids)
    A, B = model.text_encoder(A0, ids, mask, mask, V)
    expected, keep = text_states(blip, ids, mask, V), mask.bool()
    assert torch.allclose(A[keep], expected[keep], atol=1e-5) and torch.allclose(B[keep], expected[keep], atol=1e-5)


@pytest.mark.parametrize("kw", VARIANTS)
def test_batched_scores_equal_per_pair_scores(kw):
    model = variant(**kw)
    ids, mask, z_t, cands, ref = inputs(k=4)
    with torch.no_grad():
        batched = model.score_candidates(ids, mask, z_t, cands, ref)
        for i in range(3):
            n = int(mask[i].sum())  # each query alone, unpadded
            for j in range(4):
                single = model(ids[i:i + 1, :n], mask[i:i + 1, :n], z_t[i:i + 1, :n], cands[i, j:j + 1], ref[i:i + 1])
                assert torch.allclose(batched[i, j], single[0], atol=1e-5), (i, j)


def test_bxb_logits_rows_are_queries_columns_are_targets():
    model = variant()
    ids, mask, z_t, targets, ref = inputs()
    with torch.no_grad():
        logits = model.bxb_logits(ids, mask, z_t, targets, ref)
        expected = torch.stack([model(ids[i:i + 1].expand(3, -1), mask[i:i + 1].expand(3, -1),
                                      z_t[i:i + 1].expand(3, -1, -1), targets) for i in range(3)])
    assert logits.shape == (3, 3) and torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(model.loss(logits), F.cross_entropy(logits, torch.arange(3)))


@pytest.mark.parametrize("kw", [{}, {"streams": "z_t"}, {"streams": "text"}, {"zt_input": "ref_cls_spatial"}])
def test_bxb_runs_the_query_part_once_per_query_when_no_dropout_is_sampled(kw):
    """Without dropout, embeddings and layer 1's self-attention run on B rows, not B x B: the
    same loss and gradients as one row per pair (both `grid` paths), and as the reference path
    (share_kv=False). With dropout on, each pair gets its own sample."""
    model = variant(dropout=0.0, **kw).train()
    ids, mask, z_t, targets, ref = inputs()
    rep = lambda x: x.repeat_interleave(3, dim=0)

    def grads(path):
        model.zero_grad()
        logits = (model.bxb_logits(ids, mask, z_t, targets, ref) if path == "per query" else
                  model(rep(ids), rep(mask), rep(z_t), targets, rep(ref), grid=(3, 3)).view(3, 3) if path == "per pair"
                  else model.bxb_logits(ids, mask, z_t, targets, ref, share_kv=False))
        model.loss(logits).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    rows = []
    hook = lambda m, i, o: rows.append(len(next(h for h in o if h is not None)))
    model.text_encoder.encoder.layer[0].attention.register_forward_hook(hook)
    (l0, g0), (l1, g1), (l2, g2) = grads("per query"), grads("per pair"), grads("reference")
    assert rows == [3, 9, 9]                                    # layer 1's self-attention: B rows, then B x B
    for logits, g in ((l1, g1), (l2, g2)):
        assert torch.allclose(l0, logits, atol=1e-5) and g0.keys() == g.keys() and len(g0) > 20
        assert all(torch.allclose(g0[n], g[n], atol=1e-5) for n in g0)
    noisy = variant(**kw).train()                               # BLIP's dropout 0.1: a sample per pair
    noisy.text_encoder.encoder.layer[0].attention.register_forward_hook(hook)
    noisy.bxb_logits(ids, mask, z_t, targets, ref)
    assert rows[-1] == 9


def test_merge_rule_per_layer():
    layers = variant().text_encoder.encoder.layer
    assert [hasattr(l.crossattention.output, "merge_layer") for l in layers] == [False, False, True, True]
    assert not any(hasattr(l.attention.output, "merge_layer") for l in layers)  # only cross-attention merges
    full = variant(merge="full_mlp").text_encoder.encoder.layer
    assert all(hasattr(l.crossattention.output, "merge_layer") for l in full)
    assert not any(hasattr(l.crossattention.output, "merge_layer") for l in variant(streams="z_t").text_encoder.encoder.layer)


def test_one_dropout_sample_is_added_to_both_streams():
    torch.manual_seed(0)
    out = DualOutput(8, 1e-12, 0.5, "both", merge_layer=False).train()
    out.LayerNormB.load_state_dict(out.LayerNormA.state_dict())
    zeros = torch.zeros(2, 5, 8)
    A, B = out(torch.randn(2, 5, 8), torch.randn(2, 5, 8), zeros, zeros, merge=True)
    assert torch.equal(A, B)  # same update, same mask; with separate dropout they would differ


def test_ref_cls_variants_merge_at_cls_only():
    torch.manual_seed(0)
    out = DualOutput(8, 1e-12, 0.0, "both", merge_layer=False).eval()
    a, b = torch.randn(1, 1, 8), torch.randn(1, 6, 8)
    A, B = out(a, b, torch.zeros(1, 1, 8), torch.zeros(1, 6, 8), merge=True)
    ha, hb = out.dense0(a), out.dense1(b)
    assert torch.allclose(A[:, 0], out.LayerNormA((ha[:, 0] + hb[:, 0]) / 2), atol=1e-6)
    assert torch.allclose(B[:, 0], out.LayerNormB((ha[:, 0] + hb[:, 0]) / 2), atol=1e-6)
    assert torch.allclose(B[:, 1:], out.LayerNormB(hb[:, 1:]), atol=1e-6)


def test_zt_stream_inputs_per_variant():
    ids, mask, z_t, _, ref = inputs()
    A, m = variant().zt_stream_input(z_t, mask, ref)
    assert A is z_t and m is mask
    A, m = variant(zt_input="ref_cls").zt_stream_input(z_t, mask, ref)
    assert torch.equal(A, ref[:, :1]) and m.shape == (3, 1)
    A, m = variant(zt_input="ref_cls_spatial").zt_stream_input(z_t, mask, ref)
    grid = ref[:, 1:].reshape(3, 8, 8, 96).permute(0, 3, 1, 2)
    assert A.shape == (3, 37, 96) and torch.allclose(A[:, 1:], F.adaptive_avg_pool2d(grid, 6).flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="needs the reference image tokens"):
        variant(zt_input="ref_cls")(ids, mask, z_t, ref, None)


def test_ablation_parameter_accounting():
    d, ff, n = 96, 384, TINY.text_layers
    full = sum(p.numel() for p in variant().parameters())
    assert sum(p.numel() for p in variant(merge="full_mlp").parameters()) - full == (n // 2) * (2 * d * d + d)
    assert sum(p.numel() for p in variant(dual_ffn=True).parameters()) - full == n * (d * ff + ff + ff * d + d + 2 * d)
    single = variant(streams="z_t")
    assert single.cls_head[0].in_features == d and not hasattr(single.text_encoder, "embeddings")
    assert not any(".self1." in k or "LayerNormB" in k for k in single.state_dict())
    with pytest.raises(ValueError, match="streams"):
        variant(streams="neither")


def test_gradients_reach_every_trainable_tensor_and_not_the_vit():
    model = variant().train()
    ids, mask, z_t, targets, ref = inputs()
    model.loss(model.bxb_logits(ids, mask, z_t, targets, ref)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()) and not any("visual_encoder" in n for n in grads)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Checkpointed layers are recomputed in the backward pass with the same dropout samples."""
    model = variant().train()                                   # BLIP's dropout 0.1 is on
    ids, mask, z_t, targets, _ = inputs()

    def step(checkpointing):
        model.zero_grad()
        model.text_encoder.checkpointing = checkpointing
        torch.manual_seed(3)
        loss = model.loss(model.bxb_logits(ids, mask, z_t, targets))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (loss0, g0), (loss1, g1) = step(False), step(True)
    assert torch.equal(loss0, loss1) and g0.keys() == g1.keys() and len(g0) > 50
    assert all(torch.allclose(g0[n], g1[n], atol=1e-6) for n in g0)
    torch.manual_seed(4)
    assert not torch.equal(model.loss(model.bxb_logits(ids, mask, z_t, targets)).detach(), loss0)  # dropout is live


@pytest.mark.parametrize("kw", [{}, {"streams": "text"}, {"merge": "full_mlp"}])
def test_the_flop_model_counts_what_torch_counts(kw):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from cirtutor.models.flops import pair_flops
    model = variant(**kw)
    ids, mask = tokenize(["add a square"] * 3)                  # equal lengths: no padding
    z_t, V = torch.randn(3, ids.shape[1], 96), torch.randn(3, 65, 96)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:   # the math kernel: matmuls torch can count
        model(ids, mask, z_t, V)
    assert counter.get_total_flops() == pytest.approx(3 * pair_flops(model.cfg, ids.shape[1], 65)["total"])
    shared = pair_flops(model.cfg, ids.shape[1], 65, shared_by=10)
    assert shared["candidate_kv"] == pytest.approx(pair_flops(model.cfg, ids.shape[1], 65)["candidate_kv"] / 10)


@pytest.mark.parametrize("kw", VARIANTS)
def test_the_fast_paths_give_the_reference_scores(kw, monkeypatch):
    """reranker_fast against the reference layer, pair by pair: `grid` (training's B x B, one row per
    query or per pair) and `index` (evaluation: `candidate_kv` once, keys/values copied per pair or
    attended one candidate at a time)."""
    model = variant(**kw)
    ids, mask, z_t, _, ref = inputs()
    V = torch.randn(4, 65, 96, generator=torch.Generator().manual_seed(1))      # n_c = 4 candidates
    rep = lambda x: x.repeat_interleave(4, dim=0)                               # query i -> rows 4i .. 4i + 3
    index = torch.tensor([3, 0, 2, 2, 1, 0, 3, 1, 0, 2, 3, 1])                  # pair p's candidate, unsorted
    with torch.no_grad():
        grid_ref = model(rep(ids), rep(mask), rep(z_t), V.repeat(3, 1, 1), rep(ref))   # pair (i, j): row 4i + j
        per_query = model(ids, mask, z_t, V, ref, grid=(3, 4))
        per_pair = model(rep(ids), rep(mask), rep(z_t), V, rep(ref), grid=(3, 4))
        index_ref = model(rep(ids), rep(mask), rep(z_t), V[index], rep(ref))
        kv = model.candidate_kv(V)
        copied = model(rep(ids), rep(mask), rep(z_t), kv, rep(ref), index=index)
        monkeypatch.setattr(reranker_fast, "SMALL_CONTEXT", 0)
        each = model(rep(ids), rep(mask), rep(z_t), kv, rep(ref), index=index)
    assert torch.allclose(per_query, grid_ref, atol=1e-5) and torch.allclose(per_pair, grid_ref, atol=1e-5)
    assert torch.allclose(copied, index_ref, atol=1e-5) and torch.allclose(each, index_ref, atol=1e-5)


def test_attending_each_candidate_equals_copying_its_keys_per_pair():
    from cirtutor.models.reranker_fast import attend_each_candidate
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(7, 4, 5, 8, generator=g), torch.randn(3, 4, 9, 8, generator=g), torch.randn(3, 4, 9, 8, generator=g)
    for index in (torch.tensor([0, 0, 1, 1, 1, 2, 2]), torch.tensor([2, 0, 1, 0, 2, 1, 0])):  # sorted and not
        expected = F.scaled_dot_product_attention(q, k[index], v[index])
        assert torch.allclose(attend_each_candidate(q, k, v, index), expected, atol=1e-6)
