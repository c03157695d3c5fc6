"""Stage 2's exact speed paths: the re-ranker of `cirtutor/models/reranker.py` (paper §3.2, Fig. 3)
with each candidate's cross-attention keys and values computed once for every pair that ranks it.

A candidate's keys and values depend on the candidate alone. Nothing here owns a parameter:
every function runs the reference modules' own weights, and only the cross-attention is computed
another way; self-attention, merge, residual LayerNorms and feed-forward are the reference's own
calls. The test suite holds both paths equal, variant by variant. `DualEncoderReranker.forward` comes here
when it is given

* `grid=(n_q, n_c)` — training's B x B logits (Eq. 2). The P = n_q * n_c pairs form a grid
  (row i * n_c + j = query i, candidate j) and the candidate tokens hold the n_c candidates
  once, (n_c, L_v, d_v); every query's tokens attend a candidate in one SDPA call (tokens attend
  independently, so folding the queries into the length axis is exact). Given one row per
  query (n_q rows, not n_q * n_c), what comes before the first cross-attention (embeddings,
  layer 1's self-attention) runs once per query: it never sees the candidate.
* `index` (P,) — evaluation. The candidate tokens are `candidate_kv`'s keys and values of n_c
  candidates, and pair p attends candidate index[p]; on CPU a large context is attended one
  candidate at a time (`attend_each_candidate`) rather than copied for every pair.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Candidates whose keys (heads x L_c x d / heads) are larger than this are attended one by one
# on CPU rather than copied for every pair that ranks them (`attend_each_candidate`).
SMALL_CONTEXT = 2 ** 16


def attend_each_candidate(q, k, v, index, dropout: float = 0.0) -> torch.Tensor:
    """q (P, heads, L, d_h) of P pairs; k, v (n_c, heads, L_c, d_h) of n_c candidates; pair p
    attends candidate index[p] -> (P, heads, L, d_h). The pairs of one candidate are folded into
    one SDPA call on views of its keys and values (tokens attend independently: exact), so no
    per-pair copy of a 577-token context is made: on CPU at paper dims, copying it cost more
    than the attention itself."""
    P, heads, L, dh = q.shape
    is_sorted = bool((index[1:] >= index[:-1]).all())       # score_by_candidate sends pairs sorted
    if not is_sorted:
        order = torch.argsort(index, stable=True)
        q, index = q[order], index[order]
    cands, counts = torch.unique_consecutive(index, return_counts=True)
    out = torch.empty_like(q)
    start = 0
    for c, n in zip(cands.tolist(), counts.tolist()):
        qc = q[start:start + n].transpose(0, 1).reshape(1, heads, n * L, dh)        # (1, heads, n * L, d_h)
        oc = F.scaled_dot_product_attention(qc, k[c:c + 1], v[c:c + 1], dropout_p=dropout)
        out[start:start + n] = oc.view(heads, n, L, dh).transpose(0, 1)
        start += n
    if not is_sorted:
        out = torch.empty_like(out).index_copy_(0, order, out)
    return out


def attention(attn, x: torch.Tensor, context, grid: tuple[int, int] | None = None,
              index: torch.Tensor | None = None) -> torch.Tensor:
    """`Attention.forward` of the module `attn` for a cross-attention (no mask), its keys and values
    once per candidate. x (P, L, d) of P pairs. With `grid=(n_q, n_c)`, `context` holds the n_c
    candidates once, (n_c, L_c, d_c); with `index` (P,), `context` is their (keys, values), each
    (n_c, heads, L_c, d / heads), from `attn.keys_values`. -> (P, L, d)."""
    q = attn.query(x)                                                      # (P, L, d)
    if grid is not None:
        n_q, n_c = grid
        L = q.shape[1]
        q = q.view(n_q, n_c, L, -1).transpose(0, 1).flatten(1, 2)          # (n_c, n_q * L, d)
    k, v = context if isinstance(context, tuple) else attn.keys_values(context)
    p = attn.dropout if attn.training else 0.0
    if index is not None and not q.is_cuda and k[0].numel() > SMALL_CONTEXT:
        out = attend_each_candidate(attn.split(q), k, v, index, p)        # no copies of k, v per pair
    else:
        if index is not None:
            k, v = k.index_select(0, index), v.index_select(0, index)     # (P, heads, L_c, d / heads)
        out = F.scaled_dot_product_attention(attn.split(q), k, v, dropout_p=p)
    out = out.transpose(1, 2).flatten(-2)                                  # (P, L, d) or (n_c, n_q * L, d)
    if grid is not None:
        out = out.view(n_c, n_q, L, -1).transpose(0, 1).flatten(0, 1)     # (P, L, d), pair order restored
    return out


def candidate_kv(encoder, V: torch.Tensor) -> list[tuple]:
    """Candidate tokens V (n_c, L_v, d_v) -> per layer of the `DualEncoder` `encoder`, each stream's
    cross-attention (keys, values), (n_c, heads, L_v, d / heads) each (None for an ablated stream)."""
    return [tuple(getattr(layer.crossattention, name).keys_values(V) if hasattr(layer.crossattention, name)
                  else None for name in ("self0", "self1"))
            for layer in encoder.encoder.layer]


def attend_candidate(layer, A, B, context, mask_A, mask_B, grid=None, index=None):
    """`DualEncoderLayer.forward` of `layer` after its self-attention: cross-attention to the
    candidate (once per candidate, see `attention`), merge, residual LayerNorms, feed-forward.
    With `index`, `context` is this layer's entry of `candidate_kv`: (keys, values) per stream."""
    ca = layer.crossattention
    ctx_A, ctx_B = context if index is not None else (context, context)
    c = attention(ca.self0, A, ctx_A, grid, index) if A is not None else None      # (P, L_A, d)
    d = attention(ca.self1, B, ctx_B, grid, index) if B is not None else None      # (P, L_B, d)
    A, B = ca.output(c, d, A, B, merge=True)
    A = layer.feed_forward(A, "A", mask_A[:, 0, 0]) if A is not None else None
    B = layer.feed_forward(B, "B", mask_B[:, 0, 0]) if B is not None else None
    return A, B


def layer_forward(layer, A, B, context, mask_A, mask_B, grid=None, index=None):
    """`DualEncoderLayer.forward` of `layer` with `grid` or `index` (see `attention`)."""
    A, B = layer.attention(A, B, A, B, mask_A, mask_B, merge=False)       # (P, L_A, d), (P, L_B, d)
    return attend_candidate(layer, A, B, context, mask_A, mask_B, grid, index)


def encode(encoder, A, input_ids, mask_A, text_mask, V, grid=None, index=None):
    """`DualEncoder.forward` of `encoder` with `grid` or `index` -> final (A, B) (None when ablated).
    With `index`, V is `candidate_kv`'s list: one layer's keys and values per layer. With `grid`
    and one row per query (n_q rows, not n_q * n_c), the embeddings and layer 1's self-attention
    run once per query, and their output is repeated for the query's n_c pairs."""
    B, mask_A, mask_B = encoder.stream_inputs(A, input_ids, mask_A, text_mask)
    layers = list(encoder.encoder.layer)
    contexts = V if index is not None else [V] * len(layers)
    if grid is not None and len(input_ids) == grid[0] != grid[0] * grid[1]:   # one row per query
        A, B = layers[0].attention(A, B, A, B, mask_A, mask_B, merge=False)   # (n_q, L, d) each
        per_pair = lambda x: None if x is None else x.repeat_interleave(grid[1], dim=0)  # (n_q * n_c, ...)
        A, B, mask_A, mask_B = map(per_pair, (A, B, mask_A, mask_B))
        A, B = attend_candidate(layers[0], A, B, contexts[0], mask_A, mask_B, grid, index)
        layers, contexts = layers[1:], contexts[1:]
    for layer, context in zip(layers, contexts):
        A, B = encoder.step(layer_forward, layer, A, B, context, mask_A, mask_B, grid, index)
    return A, B
