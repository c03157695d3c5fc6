"""Stage 1, CandidateFilter (docs/authors_code.md, 'The filter'): embeddings, z_t, frozen parts, Eq. 1."""
import pytest
import torch
import torch.nn.functional as F

from cirtutor.config import get_model_config
from cirtutor.models import CandidateFilter, tokenize


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CandidateFilter(get_model_config("tiny")).eval()


def batch(n=3, size=64):
    g = torch.Generator().manual_seed(1)
    ids, mask = tokenize(["make the circle red", "add a square", "remove the small blue triangle"][:n])
    return ids, mask, torch.randn(n, 3, size, size, generator=g)


def test_shapes_and_normalisation(model):
    ids, mask, images = batch()
    feats = model.encode_images(images)
    assert feats.shape == (3, 65, 96) and not feats.requires_grad
    query_emb, z_t = model(ids, mask, feats)
    assert query_emb.shape == (3, 32) and z_t.shape == (3, ids.shape[1], 96)   # embed_dim 32: a third of the width
    assert torch.allclose(query_emb.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(model.gallery_embed(feats).norm(dim=-1), torch.ones(3), atol=1e-6)


def test_query_depends_on_reference_image(model):
    ids, mask, images = batch()
    feats = model.encode_images(images)
    q1, _ = model(ids, mask, feats)
    q2, _ = model(ids, mask, feats.roll(1, dims=0))
    assert not torch.allclose(q1, q2, atol=1e-4)  # cross-attention to the reference is live


def test_eq1_loss_is_one_directional_cross_entropy(model):
    ids, mask, images = batch()
    feats = model.encode_images(images)
    q, _ = model(ids, mask, feats)
    g = model.gallery_embed(model.encode_images(images.flip(-1)))
    logits = q @ g.t() / model.temp
    assert torch.allclose(model.loss(q, g), F.cross_entropy(logits, torch.arange(3)))
    symmetric = (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.t(), torch.arange(3))) / 2
    assert not torch.allclose(model.loss(q, g), symmetric)


def test_frozen_parts_get_no_gradient_temp_does():
    torch.manual_seed(0)
    model = CandidateFilter(get_model_config("tiny")).train()
    ids, mask, images = batch()
    feats = model.encode_images(images)
    q, _ = model(ids, mask, feats)
    model.loss(q, model.gallery_embed(model.encode_images(images.flip(-1)))).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.visual_encoder.parameters())
    assert all(p.grad is None for p in model.vision_proj.parameters())
    assert model.temp.grad is not None and model.text_proj.weight.grad.abs().sum() > 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.text_encoder.parameters()) + 32 * 96 + 32 + 1
