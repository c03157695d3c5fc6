"""CaLa's training-only associations (docs/extensions.md, 'TBIA', 'The CaLa loss as coded', 'Checks') on the tiny filter."""
import math

import pytest
import torch
import torch.nn.functional as F

from cirtutor.config import CalaConfig, Stage1Config, get_model_config
from cirtutor.engine.stage1 import CalaObjective, FilterObjective, stage1_objective
from cirtutor.models import CandidateFilter, tokenize
from cirtutor.models.backbones import text_states
from cirtutor.models.tokenizer import cls_token_id
from cirtutor.models.cala import CaLa, HingeCrossAttention, TwinAttentionCompositor, ce

TINY = get_model_config("tiny")


def test_hinge_attention_is_the_two_hop_formula():
    torch.manual_seed(0)
    hca = HingeCrossAttention(4).eval()                          # eval: no dropout on the map
    X_r, X_c, X_t = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 4)
    lin = lambda m, x: x @ m.weight.T + m.bias
    A1 = lin(hca.Wq, X_r) @ lin(hca.Wkc, X_c).transpose(1, 2) / math.sqrt(4)
    A2 = lin(hca.Wkc, X_c) @ lin(hca.Wkt, X_t).transpose(1, 2) / math.sqrt(4)   # the caption key in both hops
    expected = (torch.softmax(A1 @ A2, -1) @ lin(hca.Wv, X_t))[:, 0]
    assert torch.allclose(hca(X_r, X_c, X_t), expected, atol=1e-6)
    by_hand = sum(A1[0, 0, k] * A2[0, k, 0] for k in range(5))  # entry (0, 0): sum over caption tokens
    assert torch.allclose((A1 @ A2)[0, 0, 0], by_hand, atol=1e-6)


def test_twin_compositor_shape_parameters_and_four_calls_per_branch():
    d = 8
    tac = TwinAttentionCompositor(d)
    assert sum(p.numel() for p in tac.parameters()) == 2 * (4 * d * d + 4 * d)
    calls = {"r": 0, "t": 0}
    tac.M_r.register_forward_hook(lambda *_: calls.__setitem__("r", calls["r"] + 1))
    tac.M_t.register_forward_hook(lambda *_: calls.__setitem__("t", calls["t"] + 1))
    g = tac(torch.randn(3, 7, d), torch.randn(3, 7, d))
    assert g.shape == (3, d) and calls == {"r": 4, "t": 4}


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask = tokenize(["make it red", "add a blue square", "remove the circle", "move the star left"][:n])
    return ids, mask, torch.randn(n, 65, 96, generator=g), torch.randn(n, 65, 96, generator=g)


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_zero_weights_give_exactly_the_plain_filter_loss_and_gradients():
    torch.manual_seed(0)
    filt = CandidateFilter(TINY).train()                         # dropout on: the same random draws too
    inputs = batch()
    torch.manual_seed(1)
    plain = FilterObjective(filt)(*inputs)
    plain.backward()
    expected = grads(filt)
    filt.zero_grad()
    cfg = Stage1Config(aux="cala", cala=CalaConfig(w_c=0.0, w_t=0.0))
    objective, _ = stage1_objective(filt, cfg)
    torch.manual_seed(1)
    loss = objective(*inputs)
    loss.backward()
    assert isinstance(objective, CalaObjective) and torch.equal(loss, plain)
    got = grads(filt)
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_every_cala_parameter_and_both_text_passes_get_gradients(form):
    torch.manual_seed(0)
    filt = CandidateFilter(TINY).train()
    cala = CaLa(96, 96, CalaConfig(form=form))
    ids, mask, ref, tgt = batch()
    q, H_mm = filt(ids, mask, ref)
    text_ids = ids.clone()
    text_ids[:, 0] = cls_token_id()                              # [CLS]: the caption alone
    H_txt = text_states(filt.text_encoder, text_ids, mask)
    H_mm.retain_grad(), H_txt.retain_grad()
    S_f = filt.logits(q, filt.gallery_embed(tgt))
    loss = cala.loss(S_f, H_mm, H_txt, ref, tgt, mask)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cala.parameters())
    assert H_mm.grad.abs().sum() > 0 and H_txt.grad.abs().sum() > 0


def test_cala_loss_as_the_authors_code_mixes_it():
    torch.manual_seed(0)
    cala = CaLa(96, 96).eval()
    ids, mask, ref, tgt = batch()
    H_mm, H_txt, S_f = torch.randn(4, ids.shape[1], 96), torch.randn(4, ids.shape[1], 96), torch.randn(4, 4)
    S_tbia, S_ctr = cala.tbia_logits(H_mm, H_txt, tgt), cala.ctr_logits(H_txt, ref, tgt)
    labels = torch.arange(4)
    expected = 0.1 * F.cross_entropy(S_tbia, labels) + 0.9 * F.cross_entropy(0.45 * S_ctr + 0.55 * S_f, labels)
    assert torch.allclose(cala.loss(S_f, H_mm, H_txt, ref, tgt), expected)
    assert torch.allclose(S_ctr, 10 * H_txt[:, 0] @ cala.tac(ref, tgt).t())    # raw dot products x 10


def test_a_cala_trained_filter_evaluates_without_the_modules():
    torch.manual_seed(0)
    filt = CandidateFilter(TINY)
    objective, optimizer = stage1_objective(filt, Stage1Config(aux="cala", lr=1e-3))
    boosted = [g for g in optimizer.param_groups if g["lr_mult"] == 2.0]
    assert {id(p) for g in boosted for p in g["params"]} == {id(p) for p in objective.cala.parameters()}
    ids, mask, ref, tgt = batch()
    objective(ids, mask, ref, tgt).backward()
    optimizer.step()
    state = filt.state_dict()
    assert not any("cala" in k or "hca" in k or "tac" in k for k in state)
    plain = CandidateFilter(TINY)
    plain.load_state_dict(state)                                 # strict: exactly the filter's tensors
    with torch.no_grad():
        assert torch.equal(plain.eval()(ids, mask, ref)[0], filt.eval()(ids, mask, ref)[0])


def test_bad_cala_settings_say_what_was_expected():
    with pytest.raises(ValueError, match="stage1.aux"):
        stage1_objective(CandidateFilter(TINY), Stage1Config(aux="calla"))
    with pytest.raises(ValueError, match="form"):
        CaLa(96, 96, CalaConfig(form="sum"))
    with pytest.raises(ValueError, match="widths must match"):
        CaLa(96, 64)


def test_the_pictures_helpers_recompute_what_the_modules_use():
    torch.manual_seed(0)
    hca = HingeCrossAttention(8).eval()
    X_r, X_c, X_t = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 6, 8)
    A1, A2 = hca.hops(X_r, X_c, X_t)
    path = hca.path(X_r, X_c, X_t)                               # (B, L_c, L_t): per caption token
    assert path.shape == (2, 5, 6) and torch.allclose(path.sum(1), (A1 @ A2)[:, 0], atol=1e-5)
    o = torch.softmax(path.sum(1), -1)[:, None] @ hca.Wv(X_t)     # the row o is read with
    assert torch.allclose(o[:, 0], hca(X_r, X_c, X_t), atol=1e-5)

    tac = TwinAttentionCompositor(8).eval()
    Y_r, Y_t = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    maps = tac.attention_maps(Y_r, Y_t)
    assert maps["r"].shape == maps["t"].shape == (4, 2, 7, 7)
    assert torch.allclose(maps["r"].sum(-1), torch.ones(4, 2, 7))
    first = tac.M_r(Y_r, Y_t, Y_t)[1]                            # iteration 1 of branch r attends the target
    assert torch.allclose(maps["r"][0], first)


def test_the_objective_names_its_logits_and_they_make_the_loss():
    torch.manual_seed(0)
    filt = CandidateFilter(TINY).eval()
    objective, _ = stage1_objective(filt, Stage1Config(aux="cala"))
    objective.eval()
    inputs = batch()
    with torch.no_grad():
        S = objective.logits(*inputs)
        loss = objective(*inputs)
    assert set(S) == {"S_f", "S_ctr", "S_tbia", "S_mix"} and all(v.shape == (4, 4) for v in S.values())
    assert torch.allclose(S["S_mix"], 0.45 * S["S_ctr"] + 0.55 * S["S_f"])
    assert torch.allclose(loss, 0.1 * ce(S["S_tbia"]) + 0.9 * ce(S["S_mix"]))
    off, _ = stage1_objective(filt, Stage1Config(aux="cala", cala=CalaConfig(w_c=0.0, w_t=0.0)))
    with pytest.raises(ValueError, match="inactive"):
        off.logits(*inputs)
