"""Compact copies of trained tiny models, small enough to ship with the package.

A tiny model's word-embedding table (30,524 x 96, BERT's vocabulary) is three quarters of
its weights, and training touches only the rows of the few dozen words the synthetic world
uses. Every other row is never looked up, so the only thing that happens to it is AdamW's
decoupled weight decay, p <- p * (1 - lr * wd) at every step: one factor for all of them.
So a trained model is fully described, relative to the weights it started from, by

* its trainable tensors other than the word embeddings (attention, feed-forward, LayerNorms,
  projections, heads, the temperature), stored whole;
* the rows of the word-embedding table that moved otherwise, stored whole with their indices;
* the decay factor of all other rows;

while frozen tensors (the ViT, `vision_proj`) are the start's own. `pack` measures the
factor and checks that the rule reproduces the trained table before it returns anything;
`unpack` rebuilds the state dict. Stored in float32: a shipped model gives exactly the
numbers that were recorded when it was trained.
"""
from __future__ import annotations

import torch

from cirtutor.errors import CirtutorError

EMBEDDINGS = "text_encoder.embeddings.word_embeddings.weight"


def decay_factor(trained: torch.Tensor, start: torch.Tensor) -> float:
    """The common factor by which most rows of `trained` are `start`'s rows: the median per-row ratio."""
    ratio = (trained * start).sum(1) / (start * start).sum(1).clamp_min(1e-30)   # (V,) least-squares per row
    return float(ratio.median())


def pack(trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor], trainable: set[str],
         rtol: float = 1e-5) -> dict[str, torch.Tensor]:
    """The compact form of `trained` relative to `start` (both state dicts of the same module;
    `trainable`: the names of its trained tensors). Raises CirtutorError when the decay rule
    does not reproduce the trained embedding table."""
    if trained.keys() != start.keys():
        raise CirtutorError("pack: the trained and the starting state dicts hold different tensors")
    out = {}
    for name, value in trained.items():
        if name in trainable and name != EMBEDDINGS:
            out[name] = value.detach().float().clone()
        elif name not in trainable and not torch.equal(value, start[name]):
            raise CirtutorError(f"pack: {name} is frozen but differs from the starting weights")
    if EMBEDDINGS in trainable:
        table, table0 = trained[EMBEDDINGS].float(), start[EMBEDDINGS].float()
        factor = decay_factor(table, table0)
        off = ((table - factor * table0).abs() > rtol * table0.abs().max()).any(1)   # (V,) rows that moved otherwise
        rows = off.nonzero().squeeze(1)
        out["compact.embedding_rows"] = rows
        out["compact.embedding_values"] = table[rows].clone()
        out["compact.embedding_decay"] = torch.tensor(factor, dtype=torch.float64)
        err = (decayed_table(table0, rows, out["compact.embedding_values"], factor) - table).abs().max().item()
        if err > rtol * table0.abs().max().item():
            raise CirtutorError(f"pack: the decay rule misses the trained embedding table by {err:.2e}")
    return out


def unpack(packed: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full state dict of a model packed relative to `start`."""
    state = {name: value.clone() for name, value in start.items()}
    for name, value in packed.items():
        if name.startswith("compact."):
            continue
        if name not in state or state[name].shape != value.shape:
            raise CirtutorError(f"unpack: {name} does not fit the starting weights; were they the same model?")
        state[name] = value.to(state[name].dtype)
    if "compact.embedding_rows" in packed:
        table = decayed_table(start[EMBEDDINGS], packed["compact.embedding_rows"], packed["compact.embedding_values"],
                              packed["compact.embedding_decay"])
        state[EMBEDDINGS] = table.to(start[EMBEDDINGS].dtype)
    return state


def decayed_table(start: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, decay) -> torch.Tensor:
    """The embedding table `start` x `decay`, with `rows` replaced by `values` (float32)."""
    table = (start.double() * decay).float()
    table[rows] = values
    return table
