"""The bottleneck probe: cell labels from scenes, the ridge read-out on a problem with a known
answer, and the whole probe on a small synthetic world with stand-in features."""
from __future__ import annotations

import numpy as np
import torch

from cirtutor.data.synthetic import CIRR_FAMILY, Obj, descriptions, make_scene, make_synthetic_dataset
from cirtutor.engine.features import FeatureStore
from cirtutor.evaluation.probe import bottleneck_probe, cell_classes, fit_probe, scenes_of


def test_cell_classes_number_each_cells_object():
    desc = descriptions(CIRR_FAMILY)
    scene = make_scene([Obj("circle", "red", "large", 4), Obj("square", "blue", "small", 0)])
    y = cell_classes([scene], 9, desc)
    assert y.shape == (1, 9) and (y[0, [1, 2, 3, 5, 6, 7, 8]] == 0).all()
    assert desc[y[0, 4] - 1] == ("circle", "red", "large") and desc[y[0, 0] - 1] == ("square", "blue", "small")


def test_fit_probe_reads_a_linearly_coded_label_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 5, size=(400, 2))                         # 2 cells, classes 1..4 (0 = empty unused)
    code = torch.nn.functional.one_hot(torch.as_tensor(y), 5).view(400, -1).float()
    x = code @ torch.randn(10, 16) + 0.05 * torch.randn(400, 16)  # a linear code of the labels, lightly noised
    pred, _ = fit_probe(x[:300], y[:300], x[300:], 5)
    assert (pred == y[300:]).mean() > 0.95
    pred, _ = fit_probe(torch.randn(400, 16)[:300], y[:300], torch.randn(100, 16), 5)
    assert (pred == y[300:]).mean() < 0.45                        # chance is 1/4


class Identity:
    """A stand-in filter whose gallery vector is the ViT [CLS]' first 4 numbers."""
    def gallery_embed(self, tokens):
        return tokens[:, 0, :4]


def test_the_probe_separates_a_vector_that_holds_nothing_from_tokens_that_hold_the_scene(tmp_path):
    root = tmp_path / "cirr_dataset"
    make_synthetic_dataset(root, "cirr", size=250, resolution=32)   # ~5 examples per (cell, object)
    desc = descriptions(CIRR_FAMILY)
    stores = {}
    for split, prefix in (("train", "train"), ("val", "dev")):
        import json
        names = sorted(json.loads((root / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text()))
        y = cell_classes(scenes_of(root, split, names), 9, desc)                   # (N, 9)
        tokens = torch.nn.functional.one_hot(torch.as_tensor(y), len(desc) + 1).float()   # token c codes cell c
        cls = torch.randn(len(names), 1, len(desc) + 1)                           # [CLS]: noise
        stores[split] = FeatureStore(names, torch.cat([cls, tokens], 1))
    out = bottleneck_probe(Identity(), stores, root, desc)
    assert out["tokens"]["objects"] > 90 and out["tokens"]["edited"] > 90 and out["tokens"]["colour"] > 95
    assert out["vector"]["objects"] < 15 and out["vector"]["dim"] == 4 and out["cls"]["dim"] == len(desc) + 1
