"""Stage 1 — the candidate filter (paper §3.1, Eq. 1; docs/authors_code.md, 'The filter').

The query is encoded by BLIP's text encoder in *multimodal* mode: the text, with [ENC] at
position 0, self-attends and cross-attends the reference image's tokens. Its [CLS] output,
projected by `text_proj` and L2-normalised, is the query embedding; a gallery image's
embedding is its ViT [CLS], projected by `vision_proj` and normalised. Ranking is cosine
similarity, so the whole gallery is embedded once and searched with one matrix product.

The full last hidden sequence of the query, z_t (B, L_w, d), is kept: stage 2 reads it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirtutor.config import ModelConfig
from cirtutor.models.backbones import build_text_encoder, build_vision_encoder, frozen_image_tokens, text_states


class CandidateFilter(nn.Module):
    """BLIP ViT (frozen) + multimodal text encoder + projections + learnable temperature.

    Parameter names follow transformers' BLIP (`visual_encoder` is a BlipVisionModel,
    `text_encoder` a BlipTextModel); `cirtutor.models.loading` maps the original BLIP and
    the authors' checkpoint names onto them. As in the authors' training, the ViT and
    `vision_proj` are frozen (`vision_proj` never receives a gradient there: target
    embeddings are computed without grad), and `temp` is an own, unclamped parameter.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = build_vision_encoder(cfg)
        self.text_encoder = build_text_encoder(cfg)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(cfg.temp))
        self.freeze_frozen_parts()

    def freeze_frozen_parts(self) -> None:
        for p in [*self.visual_encoder.parameters(), *self.vision_proj.parameters()]:
            p.requires_grad_(False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> image tokens (B, L_v, d_v), computed without gradient (frozen ViT)."""
        return frozen_image_tokens(self.visual_encoder, images)

    def gallery_embed(self, image_feats: torch.Tensor) -> torch.Tensor:
        """Image tokens (N, L_v, d_v) -> normalised gallery embeddings (N, embed_dim) from the [CLS] token."""
        return F.normalize(self.vision_proj(image_feats[:, 0]), dim=-1)

    def forward(self, input_ids, text_mask, ref_feats) -> tuple[torch.Tensor, torch.Tensor]:
        """Query: ids (B, L_w), mask (B, L_w), reference tokens (B, L_v, d_v)
        -> (query_emb (B, embed_dim) normalised, z_t (B, L_w, d))."""
        z_t = text_states(self.text_encoder, input_ids, text_mask, ref_feats)  # (B, L_w, d)
        query_emb = F.normalize(self.text_proj(z_t[:, 0]), dim=-1)             # (B, embed_dim)
        return query_emb, z_t

    def logits(self, query_emb: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
        """(B, e) x (B', e) -> (B, B') cosine similarities divided by the temperature."""
        return query_emb @ target_emb.t() / self.temp

    def loss(self, query_emb: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
        """Eq. 1: cross-entropy of each query against its own target among the batch's targets.

        One direction only (query -> target), labels arange(B), no label smoothing; the other
        queries' targets are the negatives, repeated images included."""
        logits = self.logits(query_emb, target_emb)
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
