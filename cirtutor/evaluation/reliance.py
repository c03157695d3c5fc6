"""What a trained re-ranker relies on: two inference-only interventions (notebook 07 uses them to explain findings
that do not reproduce in tiny mode; `docs/findings.md`).

* `words_hidden(model)`: inside the block, Encoder-t (the text stream, paper §3.2, Fig. 3) reads [PAD] at every
  word position (positions and attention mask kept), while Encoder-z_t still reads z_t, which the filter made
  from the same text. If the scores barely change, the trained model does not use its text stream: the question
  the paper's "w/o Encoder-t" ablation (Tables 3 and 4) asks, answered on one trained model.
* `shifted_references(vision, dataset, store, names, shift)`: a copy of a feature store whose rows `names` are the
  frozen ViT's tokens of those images moved `shift` pixels right and down (the uncovered border painted with the
  image's corner colour). In the synthetic world each object stays in its grid cell for small shifts, so what
  a shift costs a model measures how much it relies on the reference and the candidate being pixel-aligned.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from PIL import Image

from cirtutor.data.preprocess import load_image
from cirtutor.engine.features import FeatureStore
from cirtutor.errors import CirtutorError
from cirtutor.models.backbones import frozen_image_tokens


@contextmanager
def words_hidden(model):
    """Within the block, `model`'s Encoder-t embeds every input id as [PAD] (id 0); restored afterwards."""
    embeddings = getattr(model.text_encoder, "embeddings", None)
    if embeddings is None:
        raise CirtutorError("this re-ranker has no Encoder-t (streams='z_t'): there are no words to hide")
    original = embeddings.forward

    def pad_only(input_ids=None, **kwargs):                   # (P, L_w) ids -> the same shape of [PAD]s
        return original(input_ids=torch.zeros_like(input_ids), **kwargs)
    embeddings.forward = pad_only
    try:
        yield model
    finally:
        del embeddings.forward                                # back to the class's own method


def shift_image(image: Image.Image, shift: int) -> Image.Image:
    """`image` moved `shift` px right and down on a canvas of its corner colour (same size)."""
    out = Image.new(image.mode, image.size, image.getpixel((0, 0)))
    out.paste(image, (shift, shift))
    return out


@torch.no_grad()
def shifted_references(vision, dataset, store: FeatureStore, names: list[str], shift: int) -> FeatureStore:
    """A copy of `store` whose rows `names` are `vision`'s tokens of those images of `dataset` shifted by `shift` px."""
    images = torch.stack([dataset.transform(shift_image(load_image(dataset.image_path(n)), shift)) for n in names])
    feats = store.feats.clone()                                        # (N, L_v, d_v)
    feats[[store.index[n] for n in names]] = frozen_image_tokens(vision, images).to(feats.dtype)
    return FeatureStore(store.names, feats)
