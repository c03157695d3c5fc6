"""Paper dimensions on CPU, where it is quick: both stages build and run one forward with
BLIP-base shapes (577 image tokens x 768)."""
import torch

from cirtutor.config import get_model_config
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize


def test_paper_dims_forward_shapes_then_one_optimisation_step_of_each_stage():
    """Both stages at BLIP-base dims, built once each (building is most of the time): a forward with the
    paper's shapes, then one AdamW step, batch 2 — stage 1 (Eq. 1) and stage 2 (Eq. 2, B x B). The trainable
    tensors move, the frozen ViT does not."""
    from cirtutor.config import get_preset
    from cirtutor.engine.optim import make_optimizer
    from cirtutor.engine.stage1 import FilterObjective
    from cirtutor.engine.stage2 import BxBObjective, make_stage2_optimizer

    torch.manual_seed(0)
    cfg = get_preset("paper_cirr")
    assert cfg.model == get_model_config("paper")
    one = tokenize(["is shiny and silver with shorter sleeves and fit and flare"])
    ids, mask = tokenize(["has two dogs instead of one", "the same place at night"])
    feats = torch.randn(4, 577, 768)                                          # 2 references, 2 targets

    stage1 = CandidateFilter(cfg.model)
    with torch.no_grad():
        images = stage1.eval().encode_images(torch.randn(2, 3, 384, 384))    # reference, candidate
        assert images.shape == (2, 577, 768)
        query_emb, z_one = stage1(*one, images[:1])
        assert query_emb.shape == (1, 256) and z_one.shape == (1, one[0].shape[1], 768)
    stage1.train()
    opt = make_optimizer(stage1, cfg.stage1.lr, cfg.stage1.weight_decay)
    before = {n: p.detach().clone() for n, p in stage1.named_parameters() if n in ("text_proj.weight", "temp")}
    vit = stage1.visual_encoder.embeddings.patch_embedding.weight.detach().clone()
    loss = FilterObjective(stage1)(ids, mask, feats[:2], feats[2:])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(not torch.equal(before[n], p) for n, p in stage1.named_parameters() if n in before)
    assert torch.equal(vit, stage1.visual_encoder.embeddings.patch_embedding.weight)
    with torch.no_grad():
        z_t = stage1(ids, mask, feats[:2])[1]
    del stage1, opt

    stage2 = DualEncoderReranker(cfg.model)
    with torch.no_grad():
        scores = stage2.eval().score_candidates(*one, z_one, images[None])    # 1 query x 2 candidates
        assert scores.shape == (1, 2) and torch.isfinite(scores).all()
    stage2.train()
    opt = make_stage2_optimizer(stage2, cfg.stage2)
    head = stage2.cls_head[0].weight.detach().clone()
    loss = BxBObjective(stage2)(ids, mask, z_t, feats[2:])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(head, stage2.cls_head[0].weight)


def test_paper_presets_match_the_paper_recipe():
    """The paper's recipe (docs/authors_code.md, 'Training recipe'; docs/metrics.md, 'Re-ranked evaluation'): AdamW lr 2e-5, wd 0.05, cosine per epoch to 0
    without warm-up, AMP, batch 512 / 16, 10 epochs; stage 2 50 (Fashion-IQ) / 80 (CIRR) epochs,
    K 100 / 50; the BLIP checkpoint's temperature kept; random batches; BLIP initialisation."""
    from cirtutor.config import get_preset

    for name, epochs2, k in (("paper_fashioniq", 50, 100), ("paper_cirr", 80, 50)):
        cfg = get_preset(name)
        s1, s2 = cfg.stage1, cfg.stage2
        assert (s1.lr, s1.weight_decay, s1.batch_size, s1.epochs, s1.schedule) == (2e-5, 0.05, 512, 10, "epoch")
        assert (s2.lr, s2.weight_decay, s2.batch_size, s2.epochs, s2.schedule, s2.k) == (2e-5, 0.05, 16, epochs2, "epoch", k)
        assert s1.amp and s2.amp and not s1.cpu_bf16 and not s2.cpu_bf16
        assert s1.init_temp is None and s1.batch_composition == "random" and s2.batch_composition == "random"
        assert s2.head_lr_mult == 1.0 and s2.init == "blip" and s1.grad_accum == s2.grad_accum == 1
        assert s1.horizon is None and s2.horizon is None and s1.select == s2.select == "best"
        assert cfg.model.merge_init == "bert" and cfg.model.dropout == 0.1 and cfg.data.resolution == 384
        assert cfg.weights == "models/model_base.pth" and k in s2.eval_ks
