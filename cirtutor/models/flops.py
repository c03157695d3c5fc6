"""A FLOP model of the re-ranker: what one (query, candidate) pair costs, and where it goes.

Counts the matrix products of one forward of the dual encoder (paper §3.2, Fig. 3) on one
pair — 2 FLOPs per multiply-add; LayerNorms, softmaxes, GELUs and embeddings are left out
(elementwise, a few % at most). Per layer and stream, with text length L, L_v image tokens,
widths d (text) and d_v (vision), feed-forward width I:

    self-attention     4 L d^2 (q, k, v, out)  + 2 L^2 d (scores, weighted sum)
    cross-attention    2 L d^2 (q, out)        + 2 L L_v d + 2 L_v d_v d (keys, values of V)
    feed-forward       2 L d I
and per layer of the second half (both streams): the merge, L 2d d; at the end the head.

The candidate's keys and values (2 L_v d_v d per layer and stream) depend on the candidate
only: `shared_by` = how many pairs share one candidate's (1: per pair, as the authors' code;
the fast path shares them across every query that ranks the candidate). At paper dims with
L = 14 and L_v = 577 they are ~80% of a pair's FLOPs when computed per pair.
"""
from __future__ import annotations

from cirtutor.config import ModelConfig


def pair_flops(cfg: ModelConfig, L: int, L_v: int | None = None, shared_by: float = 1.0) -> dict[str, float]:
    """FLOPs of one pair's forward by part: "text" (projections and feed-forward on the text
    tokens), "candidate_kv" (divided by `shared_by`), "attention" (scores and weighted sums),
    "merge_head", and "total". Encoder-z_t is taken to read z_t (length L), as the paper's model."""
    d, dv, I, layers = cfg.text_width, cfg.vision_width, cfg.text_intermediate, cfg.text_layers
    L_v = L_v if L_v is not None else cfg.image_tokens
    streams = 2 if cfg.streams == "both" else 1
    per_stream = {"text": 2 * (4 * L * d * d + 2 * L * d * d + 2 * L * d * I),
                  "candidate_kv": 2 * 2 * L_v * dv * d / shared_by,
                  "attention": 2 * (2 * L * L * d + 2 * L * L_v * d)}
    out = {part: streams * layers * f for part, f in per_stream.items()}
    merges = 0 if streams == 1 else (layers if cfg.merge == "full_mlp" else layers - layers // 2)
    head_in = streams * d
    out["merge_head"] = 2 * (merges * L * 2 * d * d + head_in * d + d * 2)
    out["total"] = sum(out.values())
    return out
