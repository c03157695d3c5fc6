"""A linear probe of the filter's bottleneck: what one gallery vector keeps of a scene, and what
the image tokens keep (tiny mode's synthetic world; `docs/tiny_mode.md`).

The paper's reason for re-ranking (§1, §3.2): the filter compares a query with ONE vector per
gallery image, the ViT's [CLS] projected to embed_dim (`CandidateFilter.gallery_embed`), while the
re-ranker cross-attends every one of the L_v image tokens. Both come from the same frozen ViT, so
before training either stage we can ask how much of a scene each representation holds: fit a linear
read-out of every grid cell's object (its shape, colour and size, or "empty") from

    "vector"   the filter's gallery embedding        (N, embed_dim)        what stage 1 compares
    "cls"      the ViT's [CLS] before the projection (N, d_v)
    "tokens"   all image tokens, flattened          (N, L_v * d_v)         what stage 2 reads

on the training split's images, and score it on the validation split's. A world in which the
vector fails where the tokens succeed is a world in which the paper's mechanism is at work.
"edited" scores only the object the validation queries' edits produce, in their target images:
the detail a re-ranker has to check.

The read-out is ridge regression onto one-hot classes (a least-squares linear classifier, solved in
closed form: deterministic, seconds on a CPU), its ridge strength chosen on a held-out fifth of the
training images.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cirtutor.data.synthetic import parse_scene, scene_from_json

RIDGES = (1e-3, 1e-2, 1e-1, 1, 10)          # relative ridge strengths tried (× mean feature variance × N)


def cell_classes(scenes: list, cells: int, descriptions: list[tuple]) -> np.ndarray:
    """(N, cells) int: 0 for an empty cell, 1 + the index of the object's (shape, colour, size) otherwise."""
    index = {d: i + 1 for i, d in enumerate(descriptions)}
    out = np.zeros((len(scenes), cells), dtype=np.int64)
    for row, scene in enumerate(scenes):
        for o in scene:
            out[row, o.cell] = index[(o.shape, o.colour, o.size)]
    return out


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))      # a feature constant in training stays ~0
    return (train - mean) / std, (test - mean) / std


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W |xW - y|^2 + lam |W|^2, with a bias column (not penalised), in the cheaper of the
    primal (D x D) and dual (N x N) forms."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    y = y.double()
    n, d = x.shape
    reg = lam * torch.eye(d if d <= n else n, dtype=x.dtype)
    if d <= n:
        reg[-1, -1] = 0.0
        return torch.linalg.solve(x.T @ x + reg, x.T @ y)
    return x.T @ torch.linalg.solve(x @ x.T + reg, y)


def _predict(w: torch.Tensor, x: torch.Tensor, cells: int, classes: int) -> torch.Tensor:
    """The object read in each cell: the best of the non-empty classes (the probe is scored on occupied
    cells, so the question is "which object is there?", not "is there one?"; a least-squares read-out of
    a weak feature would otherwise answer "empty", the commonest class, everywhere)."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    return (x @ w).view(len(x), cells, classes)[..., 1:].argmax(-1) + 1


def fit_probe(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, classes: int,
              seed: int = 0) -> tuple[np.ndarray, float]:
    """Predicted classes (N_test, cells) of a linear read-out of every cell from features (N, D), its
    ridge chosen on a held-out fifth of the training rows; and that ridge."""
    x_train, x_test = _standardise(x_train.float(), x_test.float())
    cells = y_train.shape[1]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y_train), classes).view(len(y_train), -1).float()
    order = np.random.default_rng(seed).permutation(len(x_train))
    hold, fit = order[: len(order) // 5], order[len(order) // 5:]
    occupied = torch.as_tensor(y_train[hold] > 0)

    def score(lam: float) -> float:
        w = _ridge(x_train[fit], onehot[fit], lam * len(fit))
        pred = _predict(w, x_train[hold], cells, classes)
        return float((pred == torch.as_tensor(y_train[hold]))[occupied].float().mean())
    best = max(RIDGES, key=score)
    w = _ridge(x_train, onehot, best * len(x_train))
    return _predict(w, x_test, cells, classes).numpy(), best


def representations(filt, store) -> dict[str, torch.Tensor]:
    """The three probed representations of every image of a feature store, in its order."""
    with torch.no_grad():
        tokens = store.feats.float()                                    # (N, L_v, d_v)
        return {"vector": filt.gallery_embed(tokens), "cls": tokens[:, 0], "tokens": tokens.flatten(1)}


def scenes_of(root: Path, split: str, names: list[str]) -> list:
    """The scene drawn in each named image of a synthetic dataset (its captions file describes every image)."""
    rows = json.loads((Path(root) / "synthetic" / f"captions.{split}.json").read_text())
    by_name = {r["image"]: r["caption"] for r in rows}
    return [parse_scene(by_name[n]) for n in names]


def edited_cells(root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rows into `names`, cells) of the object each validation query's edit produced in its target
    image (queries that remove an object have none)."""
    queries = json.loads((Path(root) / "synthetic" / "queries.val.json").read_text())
    index = {n: i for i, n in enumerate(names)}
    rows, cells = [], []
    for q in queries:
        if q["edit_type"] == "remove":
            continue
        before = {(o.shape, o.colour, o.size, o.cell) for o in scene_from_json(q["reference_scene"])}
        new = [o for o in scene_from_json(q["target_scene"]) if (o.shape, o.colour, o.size, o.cell) not in before]
        rows.append(index[q["target"]])
        cells.append(new[0].cell)
    return np.asarray(rows), np.asarray(cells)


def bottleneck_probe(filt, stores: dict, root: Path, descriptions: list[tuple], cells: int = 9) -> dict:
    """{representation: {"objects": % of occupied validation cells whose object is read exactly, "edited":
    % of the edited objects read exactly, "shape" / "colour" / "size": % of occupied cells with that
    attribute right, "dim": D, "ridge": chosen}} for "vector", "cls" and "tokens"."""
    train_names, val_names = stores["train"].names, stores["val"].names
    y_train = cell_classes(scenes_of(root, "train", train_names), cells, descriptions)
    y_val = cell_classes(scenes_of(root, "val", val_names), cells, descriptions)
    rows, ecells = edited_cells(root, val_names)
    x_train, x_val = representations(filt, stores["train"]), representations(filt, stores["val"])
    table = np.array([("",) * 3] + list(descriptions))                 # class -> (shape, colour, size)
    occupied = y_val > 0
    out = {}
    for name in x_train:
        pred, ridge = fit_probe(x_train[name], y_train, x_val[name], len(descriptions) + 1)
        correct = pred == y_val
        out[name] = {"objects": 100 * float(correct[occupied].mean()),
                     "edited": 100 * float(correct[rows, ecells].mean()),
                     **{attr: 100 * float((table[pred][..., i] == table[y_val][..., i])[occupied].mean())
                        for i, attr in enumerate(("shape", "colour", "size"))},
                     "dim": int(x_train[name].shape[1]), "ridge": ridge}
    return out
