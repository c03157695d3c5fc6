"""Paper dimensions on CPU, where it is quick: both stages build and run one forward with
BLIP-base shapes (577 image tokens x 768)."""
import torch

from cirtutor.config import get_model_config
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize


def test_paper_dims_forward_shapes():
    torch.manual_seed(0)
    cfg = get_model_config("paper")
    ids, mask = tokenize(["is shiny and silver with shorter sleeves and fit and flare"])
    with torch.no_grad():
        stage1 = CandidateFilter(cfg).eval()
        feats = stage1.encode_images(torch.randn(2, 3, 384, 384))          # reference, candidate
        assert feats.shape == (2, 577, 768)
        query_emb, z_t = stage1(ids, mask, feats[:1])
        assert query_emb.shape == (1, 256) and z_t.shape == (1, ids.shape[1], 768)
        del stage1
        stage2 = DualEncoderReranker(cfg).eval()
        scores = stage2.score_candidates(ids, mask, z_t, feats[None])         # 1 query x 2 candidates
        assert scores.shape == (1, 2) and torch.isfinite(scores).all()
