"""Opening the models up for the notebooks (01: BLIP's encoders; 03: the dual-encoder layer).

Nothing here trains or changes a model. It loads BLIP with its image-text heads, writes
multi-head attention out with a module's own weights, reads cross-attention maps, and
replays the re-ranker layer by layer, so that a notebook can check a hand computation
against every layer's output (paper §3.2, Fig. 3; docs/authors_code.md, 'BLIP backbones', 'The dual-encoder layer').
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BlipForImageTextRetrieval

from cirtutor.config import ModelConfig
from cirtutor.io import torch_load
from cirtutor.models.loading import IGNORED, CheckpointError, blip_names_to_ours, fit_pos_embed
from cirtutor.models.mini_blip import blip_config, load_mini_blip
from cirtutor.models.reranker import Attention, DualEncoderReranker

# The parts of BLIP's model_base.pth that make up transformers' BlipForImageTextRetrieval.
RETRIEVAL_PARTS = ("text_encoder.", "vision_proj.", "text_proj.", "itm_head.")
KEEP_ITM = [(pattern, why) for pattern, why in IGNORED if not pattern.startswith(r"^itm_head")]  # the ITM head is used here


# ----------------------------------------------------------------------------- BLIP with its ITC / ITM heads

def load_blip_retrieval(path: str | Path, cfg: ModelConfig, trust: bool = False):
    """BLIP as transformers' BlipForImageTextRetrieval (ViT, text encoder, vision_proj,
    text_proj, itm_head) and its temperature, from what `cirtutor.features.init_weights`
    returns: the mini-BLIP folder (tiny mode) or BLIP's `model_base.pth` (paper mode; ViT
    names mapped as `cirtutor.models.loading` does, position embedding resized to
    cfg.image_size, momentum encoder / queues / decoder left out). -> (model in eval mode, temp)."""
    path = Path(path)
    if path.is_dir():
        model, temp, _ = load_mini_blip(path, cfg)
        return model.eval(), temp
    raw = torch_load(path, trust, error=CheckpointError)
    if not isinstance(raw, dict) or "model" not in raw:
        raise CheckpointError(f"{path}: expected BLIP's {{'model': state_dict}} layout")
    state = blip_names_to_ours(raw["model"], {}, KEEP_ITM)      # ViT names mapped, pre-training-only keys dropped
    temp = state.pop("temp", None)
    unexpected = [k for k in state if not k.startswith(("visual_encoder.", *RETRIEVAL_PARTS))]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected BLIP key {unexpected[0]!r}")
    fit_pos_embed(state, cfg)
    state = {("vision_model." + k.removeprefix("visual_encoder.") if k.startswith("visual_encoder.") else k): v.float()
             for k, v in state.items()}
    model = BlipForImageTextRetrieval(blip_config(cfg))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit a BLIP of these dims: missing {sorted(missing)[:6]}, "
                              f"unexpected {sorted(unexpected)[:6]}")
    return model.eval(), torch.nn.Parameter(torch.tensor(cfg.temp if temp is None else float(temp)))


@torch.no_grad()
def blip_cross_attention(text_encoder, input_ids, text_mask, image_feats) -> torch.Tensor:
    """BLIP's multimodal text encoder on (ids, mask) (B, L_w) cross-attending `image_feats`
    (B, L_v, d_v): its cross-attention probabilities, (layers, B, heads, L_w, L_v)."""
    out = text_encoder(input_ids=input_ids, attention_mask=text_mask, encoder_hidden_states=image_feats,
                       encoder_attention_mask=torch.ones(image_feats.shape[:2], dtype=torch.long),
                       is_decoder=False, output_attentions=True)
    return torch.stack(out.cross_attentions)


def patch_maps(probs: torch.Tensor) -> torch.Tensor:
    """Attention over image tokens (..., L_v) with [CLS] first -> over the patch grid
    (..., g, g), g = sqrt(L_v - 1): the [CLS] column dropped, patches in raster order."""
    side = math.isqrt(probs.shape[-1] - 1)
    if side * side != probs.shape[-1] - 1:
        raise ValueError(f"{probs.shape[-1]} image tokens are not [CLS] + a square grid")
    return probs[..., 1:].unflatten(-1, (side, side))


def attention_per_cell(maps: torch.Tensor, cells: int = 3) -> torch.Tensor:
    """Attention over a g x g patch grid (..., g, g) summed over a cells x cells partition of
    the image (the synthetic world's 3 x 3 object grid), each patch counted in the cell its
    centre falls in: (..., cells, cells). Sums to what `maps` sums to."""
    g = maps.shape[-1]
    cell_of = ((torch.arange(g) + 0.5) * cells / g).long()         # (g,) cell index of each patch row / column
    onehot = F.one_hot(cell_of, cells).to(maps.dtype)               # (g, cells)
    return onehot.T @ maps @ onehot                                 # (..., cells, cells)


# ----------------------------------------------------------------------------- the dual-encoder layer

def attention_by_hand(attn: Attention, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None):
    """Multi-head scaled dot-product attention with `attn`'s own weights, written out:
    per head softmax(Q K^T / sqrt(d_h)) V, heads concatenated. x (P, L, d) attends
    context (P, L_c, d_c); mask (P, 1, 1, L_c) bool, True = attend.
    -> (out (P, L, d), probs (P, heads, L, L_c)); `out` equals attn(x, context, mask) in eval mode."""
    q = attn.split(attn.query(x))                                  # (P, heads, L, d_h)
    k, v = attn.split(attn.key(context)), attn.split(attn.value(context))  # (P, heads, L_c, d_h)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])      # (P, heads, L, L_c)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1)
    return (probs @ v).transpose(1, 2).flatten(-2), probs          # (P, L, d), (P, heads, L, L_c)


def _stream_masks(reranker: DualEncoderReranker, z_t, text_mask, ref_feats):
    A, mask_A = reranker.zt_stream_input(z_t, text_mask, ref_feats)
    mask_A = mask_A[:, None, None, :].bool() if A is not None else None  # (P, 1, 1, L_A)
    return A, mask_A, text_mask[:, None, None, :].bool()


@torch.no_grad()
def dual_layer_states(reranker: DualEncoderReranker, input_ids, text_mask, z_t, cand_feats, ref_feats=None) -> list:
    """`DualEncoder.forward` replayed: the streams (A, B) entering each layer, then the final
    pair — text_layers + 1 tuples of (P, L, d) tensors (None for an ablated stream). A starts
    as Encoder-z_t's input (z_t itself), B as the text embeddings (docs/authors_code.md, 'The dual-encoder layer')."""
    enc = reranker.text_encoder
    A, mask_A, mask_B = _stream_masks(reranker, z_t, text_mask, ref_feats)
    B = enc.embeddings(input_ids=input_ids) if hasattr(enc, "embeddings") else None
    states = [(A, B)]
    for layer in enc.encoder.layer:
        A, B = layer(A, B, cand_feats, mask_A, mask_B)
        states.append((A, B))
    return states


@torch.no_grad()
def dual_cross_attention(reranker: DualEncoderReranker, input_ids, text_mask, z_t, cand_feats, ref_feats=None):
    """Both streams' cross-attention to the candidate's image tokens, every layer:
    (probs_A, probs_B), each (layers, P, heads, L, L_v) (None for an ablated stream). Each
    layer's self-attention block is run, then its CA queries attend `cand_feats` by `attention_by_hand`.
    Rows of padded text positions mean nothing (their states are zeros after a layer's feed-forward)."""
    _, mask_A, mask_B = _stream_masks(reranker, z_t, text_mask, ref_feats)
    states = dual_layer_states(reranker, input_ids, text_mask, z_t, cand_feats, ref_feats)
    maps = {"A": [], "B": []}
    for layer, (A, B) in zip(reranker.text_encoder.encoder.layer, states):
        A1, B1 = layer.attention(A, B, A, B, mask_A, mask_B, merge=False)  # SA block: (P, L, d) each
        for name, h, attn in (("A", A1, getattr(layer.crossattention, "self0", None)),
                              ("B", B1, getattr(layer.crossattention, "self1", None))):
            if h is not None:
                maps[name].append(attention_by_hand(attn, h, cand_feats)[1])
    return tuple(torch.stack(maps[s]) if maps[s] else None for s in "AB")


@torch.no_grad()
def stream_similarity(states: list, text_mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the two streams (both present), token by token over the text's real
    (unpadded) tokens, at every entry of `dual_layer_states`: (text_layers + 1,)."""
    keep = text_mask.bool()                                        # (P, L)
    return torch.stack([F.cosine_similarity(A, B, dim=-1)[keep].mean() for A, B in states])


_TWINS = {"self0": "self1", "dense0": "dense1", "LayerNormA": "LayerNormB"}  # stream A's part -> stream B's


def streams_identical(module: torch.nn.Module) -> bool:
    """True when every stream-A parameter of `module` (a `DualEncoderLayer`, or a whole
    re-ranker) equals its stream-B twin (`self0`/`self1`, `dense0`/`dense1`,
    `LayerNormA`/`LayerNormB`): the state the duplication rule (docs/authors_code.md, 'The duplication rule') leaves both
    streams in before training. False when `module` has no such pairs."""
    params = dict(module.named_parameters())
    twins = [(name, ".".join(_TWINS.get(part, part) for part in name.split("."))) for name in params]
    twins = [(a, b) for a, b in twins if a != b and b in params]
    return bool(twins) and all(torch.equal(params[a], params[b]) for a, b in twins)

