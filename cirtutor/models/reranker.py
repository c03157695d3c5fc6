"""Stage 2 — the dual multi-modal encoder re-ranker (paper §3.2, Fig. 3, Eq. 2; docs/authors_code.md, 'The dual-encoder layer', 'Ablation variants').

For one (query, candidate) pair it runs two BERT-like streams of the same length L_w:

* Encoder-z_t (stream A, suffix 0/A) starts from z_t, the filter's output sequence, as is;
* Encoder-t   (stream B, suffix 1/B) starts from the text's embeddings.

Every layer l does, for each stream with its own weights, self-attention then cross-attention
to the candidate's image tokens V. The two cross-attention updates are merged — averaged in
the first half of the layers, concatenated and mapped by a Linear(2d -> d) (no activation)
in the second half — and the one merged update (one dropout sample) is added to both
streams, each with its own residual LayerNorm. One feed-forward, shared, finishes the layer
on each stream. The score is column 0 of a 2-way MLP on concat([CLS]_A, [CLS]_B).

Parameter names are the authors' (`attention.self0`, `crossattention.output.merge_layer`,
`cls_head.0`, ...), so BLIP's text-layer weights and the released checkpoints load by name.
Attention runs through `torch.nn.functional.scaled_dot_product_attention`.

This file is the reference: each pair attends its own candidate's tokens, and
`DualEncoderLayer.forward` reads as Fig. 3. The exact speed paths — training's B x B logits and
evaluation, with each candidate's cross-attention keys and values computed once for all the
pairs that rank it — are in `cirtutor/models/reranker_fast.py`; they run these modules' weights
and `DualEncoderReranker.forward` takes them behind one `if`, when given `grid` or `index`.

Ablations (paper Tables 3/4) are `ModelConfig` switches. Choices where the paper is silent:
* `streams="z_t"` / `"text"` (w/o Encoder-t / w/o Encoder-z_t): one stream, no merge (its
  own cross-attention update is used); the head reads that stream's [CLS] only, so its first
  Linear is d -> d (not a duplicated 2d input).
* `zt_input="ref_cls"` / `"ref_cls_spatial"`: Encoder-z_t reads the reference image's ViT
  [CLS] (1 token), or [CLS] + the patch grid average-pooled to `spatial_grid`^2 tokens
  (adaptive average pooling; 37 tokens at 6x6), all attended (mask of ones). Its length
  differs from the text stream's, so the merge happens at [CLS] only: position 0 of both
  streams gets the merged update, every other position keeps its stream's own
  cross-attention update. Requires vision width == text width (true for BLIP).
* `dual_ffn=True`: stream B gets its own feed-forward (`intermediate1`, `output1`),
  stream A keeps the names of the shared one (`intermediate`, `output`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.blip.modeling_blip_text import BlipTextEmbeddings, BlipTextIntermediate, BlipTextOutput

from cirtutor.config import ModelConfig
from cirtutor.models import reranker_fast as fast
from cirtutor.models.backbones import build_vision_encoder, frozen_image_tokens, text_config

STREAMS = ("both", "z_t", "text")
ZT_INPUTS = ("z_t", "ref_cls", "ref_cls_spatial")
MERGES = ("paper", "full_mlp")
MERGE_INITS = ("bert", "average")


class Attention(nn.Module):
    """Multi-head attention with BLIP's `query`/`key`/`value` names, computed by SDPA."""

    def __init__(self, width: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (P, L, d) -> (P, heads, L, d / heads)
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens (n, L_c, d_c) -> keys, values (n, heads, L_c, d / heads)."""
        return self.split(self.key(context)), self.split(self.value(context))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (P, L, d) attends `context` (P, L_c, d_c); mask (P, 1, 1, L_c) bool, True = attend -> (P, L, d)."""
        q = self.split(self.query(x))                                        # (P, heads, L, d / heads)
        k, v = self.keys_values(context)                                     # (P, heads, L_c, d / heads) each
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return out.transpose(1, 2).flatten(-2)                               # (P, L, d): the heads concatenated


class DualOutput(nn.Module):
    """Output denses, optional merge, and per-stream residual LayerNorms of one attention block."""

    def __init__(self, width: int, eps: float, dropout: float, streams: str, merge_layer: bool):
        super().__init__()
        if streams in ("both", "z_t"):
            self.dense0, self.LayerNormA = nn.Linear(width, width), nn.LayerNorm(width, eps=eps)
        if streams in ("both", "text"):
            self.dense1, self.LayerNormB = nn.Linear(width, width), nn.LayerNorm(width, eps=eps)
        if merge_layer:
            self.merge_layer = nn.Linear(2 * width, width)  # concat(c'_A, c'_B) -> d, no activation
        self.dropout = nn.Dropout(dropout)

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Fig. 3's merge of the two streams' updates: average, or concat + Linear."""
        if hasattr(self, "merge_layer"):
            return self.merge_layer(torch.cat([a, b], dim=-1))
        return (a + b) / 2

    def updates(self, a, b, merge: bool):
        """Attention outputs a (P, L_A, d), b (P, L_B, d) of streams A, B (either may be None) -> what is
        added to each stream: its own output dense, then with `merge` one merged update for both."""
        a = self.dense0(a) if a is not None else None
        b = self.dense1(b) if b is not None else None
        if not merge or a is None or b is None:        # self-attention, or a single stream
            return tuple(self.dropout(u) if u is not None else None for u in (a, b))
        if a.shape[1] == b.shape[1]:                    # token-wise merge, one dropout sample for both
            h = self.dropout(self.merge(a, b))          # (P, L, d)
            return h, h
        m = self.dropout(self.merge(a[:, :1], b[:, :1]))    # Ref_CLS variants: merge at [CLS] only, (P, 1, d)
        return torch.cat([m, self.dropout(a[:, 1:])], 1), torch.cat([m, self.dropout(b[:, 1:])], 1)

    def forward(self, a, b, A, B, merge: bool):
        """Attention outputs a, b of streams A, B (either may be None) -> new (A, B): each stream's
        residual LayerNorm of its update."""
        ha, hb = self.updates(a, b, merge)
        A = self.LayerNormA(A + ha) if ha is not None else None
        B = self.LayerNormB(B + hb) if hb is not None else None
        return A, B


class DualAttention(nn.Module):
    """One attention block for both streams: `self0` (stream A) and `self1` (stream B)."""

    def __init__(self, cfg: ModelConfig, kv_width: int, merge_layer: bool):
        super().__init__()
        d, h, p = cfg.text_width, cfg.text_heads, cfg.dropout
        if cfg.streams in ("both", "z_t"):
            self.self0 = Attention(d, h, kv_width, p)
        if cfg.streams in ("both", "text"):
            self.self1 = Attention(d, h, kv_width, p)
        self.output = DualOutput(d, cfg.text_eps, p, cfg.streams, merge_layer)

    def forward(self, A, B, ctx_A, ctx_B, mask_A, mask_B, merge: bool):
        """Streams A (P, L_A, d), B (P, L_B, d) attend ctx_A, ctx_B (masks (P, 1, 1, L_c)) -> new (A, B)."""
        a = self.self0(A, ctx_A, mask_A) if A is not None else None
        b = self.self1(B, ctx_B, mask_B) if B is not None else None
        return self.output(a, b, A, B, merge)


class DualEncoderLayer(nn.Module):
    """Fig. 3, one layer: SA per stream -> CA per stream -> merge -> shared FF.

    The feed-forward is transformers' own BERT block (`intermediate`, `output`), shared by
    both streams; with `dual_ffn` stream B uses a second copy (`intermediate1`, `output1`)."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        concat = cfg.merge == "full_mlp" or index >= cfg.text_layers // 2
        self.attention = DualAttention(cfg, cfg.text_width, merge_layer=False)
        self.crossattention = DualAttention(cfg, cfg.vision_width, merge_layer=concat and cfg.streams == "both")
        tcfg = text_config(cfg)
        self.intermediate, self.output = BlipTextIntermediate(tcfg), BlipTextOutput(tcfg)
        if cfg.dual_ffn:
            self.intermediate1, self.output1 = BlipTextIntermediate(tcfg), BlipTextOutput(tcfg)

    def feed_forward(self, x: torch.Tensor, stream: str, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The feed-forward on the real tokens only (`keep` (P, L) bool): padded positions come out
        as zeros. They are masked wherever another token could read them (self-attention keys), so
        every real token's output is unchanged, and the padding no longer costs a feed-forward."""
        own = stream == "B" and hasattr(self, "intermediate1")
        intermediate, output = (self.intermediate1, self.output1) if own else (self.intermediate, self.output)
        if keep is None or bool(keep.all()):
            return output(intermediate(x), x)
        h = x[keep]                                             # (N_real, d)
        out = torch.zeros_like(x)
        out[keep] = output(intermediate(h), h)
        return out

    def forward(self, A, B, V, mask_A, mask_B):
        """Fig. 3 on P pairs. Streams A (P, L_A, d) (Encoder-z_t) and B (P, L_B, d) (Encoder-t), either
        None when ablated; V (P, L_v, d_v), each pair's candidate image tokens; masks (P, 1, 1, L)
        bool, True = a real token. -> the new (A, B)."""
        # 1. self-attention, each stream with its own weights, output dense and residual LayerNorm
        A, B = self.attention(A, B, A, B, mask_A, mask_B, merge=False)      # (P, L_A, d), (P, L_B, d)
        # 2. cross-attention: each stream's queries attend all of the candidate's image tokens
        ca = self.crossattention
        c = ca.self0(A, V) if A is not None else None                       # (P, L_A, d)
        d = ca.self1(B, V) if B is not None else None                       # (P, L_B, d)
        # 3. each stream's output dense, then one merged update for both: their average in the
        #    first half of the layers, Linear(concat) in the second (one dropout sample)
        h_A, h_B = ca.output.updates(c, d, merge=True)                      # (P, L_A, d), (P, L_B, d)
        # 4. per-stream residual LayerNorm: the same update, each stream's own residual
        A = ca.output.LayerNormA(A + h_A) if A is not None else None
        B = ca.output.LayerNormB(B + h_B) if B is not None else None
        # 5. the shared feed-forward (with `dual_ffn`, stream B's own), on each stream
        A = self.feed_forward(A, "A", mask_A[:, 0, 0]) if A is not None else None
        B = self.feed_forward(B, "B", mask_B[:, 0, 0]) if B is not None else None
        return A, B


class DualEncoder(nn.Module):
    """The re-ranker's text encoder: text embeddings (stream B only) + the dual layers."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.streams in ("both", "text"):
            self.embeddings = BlipTextEmbeddings(text_config(cfg))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(DualEncoderLayer(cfg, i) for i in range(cfg.text_layers))
        self.checkpointing = False  # activation checkpointing in training: keep each layer's inputs only and
                                    # recompute its insides in the backward pass (same RNG, so the same numbers)

    def stream_inputs(self, A, input_ids, mask_A, text_mask):
        """-> stream B's input (the text embeddings (P, L_B, d); None without Encoder-t) and both
        streams' masks (P, 1, 1, L) bool (mask_A None without Encoder-z_t)."""
        B = self.embeddings(input_ids=input_ids) if hasattr(self, "embeddings") else None
        mask_A = mask_A[:, None, None, :].bool() if A is not None else None  # (P, 1, 1, L_A)
        return B, mask_A, text_mask[:, None, None, :].bool()                 # (P, 1, 1, L_B)

    def step(self, layer, *args):
        """layer(*args), checkpointed in training when `checkpointing` is on."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, A, input_ids, mask_A, text_mask, V):
        """Encoder-z_t's input A (P, L_A, d) and mask (P, L_A) (None without it), the text's tokens
        (P, L_B), each pair's candidate tokens V (P, L_v, d_v) -> final (A, B) hidden sequences
        (either None when its stream is ablated)."""
        B, mask_A, mask_B = self.stream_inputs(A, input_ids, mask_A, text_mask)
        for layer in self.encoder.layer:
            A, B = self.step(layer, A, B, V, mask_A, mask_B)
        return A, B


def bert_init(module: nn.Module) -> None:
    """BERT's initialisation (as BLIP's text encoder applies it): N(0, 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight), nn.init.zeros_(m.bias)


class DualEncoderReranker(nn.Module):
    """Frozen ViT + dual encoder + 2-way head; one score per (query, candidate) pair.

    Inputs per pair: the query's tokens `input_ids`/`text_mask` (P, L_w), its z_t
    (P, L_w, d), and the candidate's image tokens `cand_feats` (P, L_v, d_v). The Ref_CLS
    variants also need the reference's image tokens `ref_feats` (P, L_v, d_v).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        for value, allowed, name in ((cfg.streams, STREAMS, "streams"), (cfg.zt_input, ZT_INPUTS, "zt_input"),
                                     (cfg.merge, MERGES, "merge"), (cfg.merge_init, MERGE_INITS, "merge_init")):
            if value not in allowed:
                raise ValueError(f"model.{name}={value!r}; expected one of {allowed}")
        if cfg.zt_input != "z_t" and cfg.vision_width != cfg.text_width:
            raise ValueError("Ref_CLS variants feed ViT tokens to Encoder-z_t: vision_width must equal text_width")
        self.cfg = cfg
        self.visual_encoder = build_vision_encoder(cfg)
        self.visual_encoder.requires_grad_(False)
        self.text_encoder = DualEncoder(cfg)
        bert_init(self.text_encoder)
        if cfg.merge_init == "average":
            self.init_merge_as_average()
        n_cls = 2 if cfg.streams == "both" else 1
        self.cls_head = nn.Sequential(nn.Linear(n_cls * cfg.text_width, cfg.text_width), nn.ReLU(),
                                      nn.Linear(cfg.text_width, 2))  # PyTorch's default init, as the authors'

    @torch.no_grad()
    def init_merge_as_average(self) -> None:
        """merge_layer = [I/2 | I/2], bias 0: the concat+Linear merge starts as the average of the
        two updates (the first half's merge) instead of a random mix (tiny-mode option)."""
        for name, m in self.named_modules():
            if name.endswith("merge_layer"):
                d = m.out_features
                m.weight.copy_(torch.cat([torch.eye(d), torch.eye(d)], dim=1) / 2)
                m.bias.zero_()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> image tokens (B, L_v, d_v) from the frozen ViT."""
        return frozen_image_tokens(self.visual_encoder, images)

    def zt_stream_input(self, z_t, text_mask, ref_feats):
        """Encoder-z_t's input sequence and mask for the configured variant."""
        if self.cfg.streams == "text":
            return None, None
        if self.cfg.zt_input == "z_t":
            return z_t, text_mask                              # (P, L_w, d), z_t enters as is
        if ref_feats is None:
            raise ValueError(f"zt_input={self.cfg.zt_input!r} needs the reference image tokens (ref_feats)")
        tokens = ref_feats[:, :1]                              # (P, 1, d): the reference [CLS]
        if self.cfg.zt_input == "ref_cls_spatial":
            side = int((ref_feats.shape[1] - 1) ** 0.5)
            grid = ref_feats[:, 1:].transpose(1, 2).unflatten(-1, (side, side))        # (P, d, side, side)
            pooled = F.adaptive_avg_pool2d(grid, self.cfg.spatial_grid).flatten(2).transpose(1, 2)  # (P, g*g, d)
            tokens = torch.cat([tokens, pooled], dim=1)        # (P, 1 + g*g, d)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)

    def forward(self, input_ids, text_mask, z_t, cand_feats, ref_feats=None, grid=None, index=None) -> torch.Tensor:
        """Aligned pairs -> scores (P,) = column 0 of the head. The speed paths of `reranker_fast`,
        the same scores: with `grid=(n_q, n_c)` the pairs are every query x every candidate and
        `cand_feats` holds each candidate once (n_c, L_v, d_v); with `index` (P,), `cand_feats` is
        `candidate_kv(...)` of n_c candidates and pair p's candidate is index[p]."""
        A, mask_A = self.zt_stream_input(z_t, text_mask, ref_feats)
        if grid is None and index is None:             # the reference: each pair's own candidate tokens
            A, B = self.text_encoder(A, input_ids, mask_A, text_mask, cand_feats)
        else:                                           # each candidate's keys/values once (exact)
            A, B = fast.encode(self.text_encoder, A, input_ids, mask_A, text_mask, cand_feats, grid, index)
        cls = torch.cat([h[:, 0] for h in (A, B) if h is not None], dim=-1)  # [CLS]_A first, then [CLS]_B
        return self.cls_head(cls)[:, 0]

    def candidate_kv(self, cand_feats: torch.Tensor) -> list[tuple]:
        """The keys and values that n_c candidates' image tokens (n_c, L_v, d_v) give every
        cross-attention layer and stream. They depend on the candidate alone (~70% of a pair's
        FLOPs at paper dims: 577 image tokens against ~15 text tokens), so evaluation computes
        them once per candidate and every pair that ranks it reuses them: `forward(..., index=)`."""
        return fast.candidate_kv(self.text_encoder, cand_feats)

    def score_candidates(self, input_ids, text_mask, z_t, cand_feats, ref_feats=None) -> torch.Tensor:
        """B queries x their K candidates (B, K, L_v, d_v) -> scores (B, K), in one forward."""
        Bq, K = cand_feats.shape[:2]
        rep = lambda x: None if x is None else x.repeat_interleave(K, dim=0)  # query i -> rows i*K .. i*K+K-1
        scores = self(rep(input_ids), rep(text_mask), rep(z_t), cand_feats.flatten(0, 1), rep(ref_feats))
        return scores.view(Bq, K)

    def bxb_logits(self, input_ids, text_mask, z_t, target_feats, ref_feats=None, share_kv: bool = True) -> torch.Tensor:
        """Training logits (B, B): row i = query i against every target j of the batch, one forward.

        `share_kv` (default; `reranker_fast`'s `grid` path) computes each target's cross-attention
        keys/values once for all B queries (exact; B x fewer K/V projections), and, when no dropout is
        sampled, the query's embeddings and layer 1's self-attention once per query; False expands
        the targets to B x B pairs (the reference path)."""
        Bq, Bt = len(input_ids), len(target_feats)
        if not share_kv:
            cand = target_feats[None].expand(Bq, *target_feats.shape)  # (B, B, L_v, d_v): row i holds all targets
            return self.score_candidates(input_ids, text_mask, z_t, cand, ref_feats)
        if self.training and self.cfg.dropout > 0:      # a dropout sample per pair: one row per pair from the start
            rep = lambda x: None if x is None else x.repeat_interleave(Bt, dim=0)  # query i -> rows i*B .. i*B+B-1
        else:                                           # nothing random before the first cross-attention:
            rep = lambda x: x                           # the encoder runs that part once per query (`DualEncoder`)
        scores = self(rep(input_ids), rep(text_mask), rep(z_t), target_feats, rep(ref_feats), grid=(Bq, Bt))
        return scores.view(Bq, Bt)

    @staticmethod
    def loss(logits: torch.Tensor) -> torch.Tensor:
        """Eq. 2: cross-entropy of each query's row against its own target (the diagonal)."""
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
