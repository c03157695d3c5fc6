"""The reliance probes: hiding Encoder-t's words changes a re-ranker's scores only inside the block and needs a text
stream; shifting images changes only the rows asked for, and a zero shift changes nothing."""
import dataclasses

import pytest
import torch
from PIL import Image

from cirtutor.config import DataConfig, get_model_config
from cirtutor.data.registry import open_dataset
from cirtutor.data.synthetic import make_synthetic_dataset
from cirtutor.engine.features import FeatureStore
from cirtutor.errors import CirtutorError
from cirtutor.evaluation.reliance import shift_image, shifted_references, words_hidden
from cirtutor.models import DualEncoderReranker, tokenize
from cirtutor.models.backbones import build_vision_encoder, frozen_image_tokens

TINY = get_model_config("tiny")


def scores(model):
    g = torch.Generator().manual_seed(0)
    ids, mask = tokenize(["make the red circle blue", "add a square"])
    z_t = torch.randn(2, ids.shape[1], 96, generator=g)
    feats = torch.randn(2, 3, 65, 96, generator=g)
    return model.score_candidates(ids, mask, z_t, feats)


def test_hiding_the_words_changes_the_scores_only_inside_the_block():
    torch.manual_seed(0)
    model = DualEncoderReranker(TINY).eval()
    before = scores(model)
    with words_hidden(model):
        hidden = scores(model)
    assert not torch.allclose(before, hidden)
    assert torch.equal(scores(model), before)                           # restored
    torch.manual_seed(0)
    with pytest.raises(CirtutorError, match="no Encoder-t"):
        with words_hidden(DualEncoderReranker(dataclasses.replace(TINY, streams="z_t"))):
            pass


def test_shift_image_moves_the_content_and_paints_the_border():
    img = Image.new("RGB", (8, 8), (9, 9, 9))
    img.putpixel((2, 3), (255, 0, 0))
    out = shift_image(img, 2)
    assert out.getpixel((4, 5)) == (255, 0, 0) and out.getpixel((0, 0)) == (9, 9, 9) and out.size == (8, 8)


def test_shifted_references_replace_only_the_named_rows(tmp_path):
    root = tmp_path / "cirr_dataset"
    make_synthetic_dataset(root, "cirr", size=6, resolution=64)
    val = open_dataset(DataConfig(dataset="cirr", root=str(root), resolution=64), "val", "gallery")
    torch.manual_seed(0)
    vision = build_vision_encoder(TINY).eval()
    with torch.no_grad():
        store = FeatureStore(val.gallery, frozen_image_tokens(vision, torch.stack([val.load(n) for n in val.gallery])))
    names = val.gallery[:2]
    same = shifted_references(vision, val, store, names, 0)
    assert torch.allclose(same.feats, store.feats, atol=1e-5)
    moved = shifted_references(vision, val, store, names, 4)
    changed = [(moved.feats[i] - store.feats[i]).abs().max().item() > 1e-4 for i in range(len(store))]
    assert changed == [True, True] + [False] * (len(store) - 2)
