"""The two BLIP backbones, as transformers builds them (docs/authors_code.md, 'BLIP backbones').

* Image encoder: `BlipVisionModel` — ViT with a [CLS] token; at 384 px / patch 16 it turns
  an image into L_v = 577 tokens of width 768 (24 x 24 patches + [CLS]), final LayerNorm
  applied to all of them.
* Text encoder: `BlipTextModel` with cross-attention in every layer (BLIP's "MED" BERT).
  Called with `encoder_hidden_states=image tokens` it is BLIP's multimodal encoder (the
  text attends to the image after each self-attention); called without, a plain BERT.

Only the configs are ours: `ModelConfig` (cirtutor.config) maps onto transformers' BLIP
configs, with BLIP-base's exact values where transformers' defaults differ.
"""
from __future__ import annotations

from functools import partial

import torch
from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from cirtutor.config import ModelConfig


def vision_config(cfg: ModelConfig) -> BlipVisionConfig:
    return BlipVisionConfig(
        hidden_size=cfg.vision_width, intermediate_size=cfg.vision_mlp, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act="gelu", layer_norm_eps=cfg.vision_eps, attention_dropout=0.0,
        initializer_range=0.02,  # transformers' default (1e-10) leaves a fresh ViT at ~0: tiny mode trains one
    )


def text_config(cfg: ModelConfig) -> BlipTextConfig:
    return BlipTextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.text_width, encoder_hidden_size=cfg.vision_width,
        intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_positions, hidden_act="gelu",
        layer_norm_eps=cfg.text_eps, hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
        is_decoder=True,  # builds the cross-attention blocks; forward(is_decoder=False) keeps attention bidirectional
        pad_token_id=0, bos_token_id=30522, sep_token_id=102,
    )


def build_vision_encoder(cfg: ModelConfig) -> BlipVisionModel:
    return BlipVisionModel(vision_config(cfg))


def build_text_encoder(cfg: ModelConfig) -> BlipTextModel:
    model = BlipTextModel(text_config(cfg), add_pooling_layer=False)
    model.supports_gradient_checkpointing = True  # transformers refuses otherwise
    return model


def image_tokens(vision: BlipVisionModel, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L_v, d_v): every token after the final LayerNorm; token 0 is [CLS].

    (Not `pooler_output`: transformers applies the final LayerNorm to it a second time.)"""
    return vision(pixel_values=images).last_hidden_state


@torch.no_grad()
def frozen_image_tokens(vision: BlipVisionModel, images: torch.Tensor) -> torch.Tensor:
    """`image_tokens` for a frozen ViT: no graph kept, fp32 out (as the authors compute features)."""
    return image_tokens(vision, images).float()


def text_states(text: BlipTextModel, input_ids, text_mask, image_feats=None) -> torch.Tensor:
    """(B, L_w) ids -> (B, L_w, d) last hidden states; multimodal when `image_feats` (B, L_v, d_v) is given."""
    kwargs = {}
    if image_feats is not None:
        kwargs["encoder_hidden_states"] = image_feats
        kwargs["encoder_attention_mask"] = torch.ones(image_feats.shape[:2], dtype=torch.long, device=image_feats.device)
    return text(input_ids=input_ids, attention_mask=text_mask, is_decoder=False, **kwargs).last_hidden_state


def add_drop_path(vision: BlipVisionModel, rate: float) -> list:
    """Stochastic depth on the ViT's residual branches, as BLIP's ViT has it (docs/authors_code.md, 'BLIP backbones': the
    authors' stage 2 builds its ViT with drop_path_rate 0.1): block i drops each sample's
    attention and MLP updates with probability rate * i / (depth - 1) (linearly spaced 0 … rate)
    and scales kept ones by 1 / (1 - p). Active in train mode only. Returns the hook handles."""
    layers = vision.encoder.layers
    handles = []
    for i, layer in enumerate(layers):
        p = rate * i / max(1, len(layers) - 1)
        if p > 0:
            handles += [m.register_forward_hook(partial(_drop_branch, p)) for m in (layer.self_attn, layer.mlp)]
    return handles


def _drop_branch(p: float, module: torch.nn.Module, inputs, output):
    """Forward hook: a residual branch's output (B, L, d), zeroed for a random p of the samples."""
    if not module.training:
        return output
    x = output[0] if isinstance(output, tuple) else output
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    x = x * keep / (1 - p)
    return (x, *output[1:]) if isinstance(output, tuple) else x


@torch.no_grad()
def stochastic_image_tokens(vision: BlipVisionModel, images: torch.Tensor) -> torch.Tensor:
    """The frozen ViT run in train mode (drop-path on, no gradient): the authors' stage-2
    features, a fresh sample every step (docs/authors_code.md, 'Drop-path on the stage-2 image tokens'). fp32 out."""
    was = vision.training
    vision.train()
    try:
        return image_tokens(vision, images).float()
    finally:
        vision.train(was)
