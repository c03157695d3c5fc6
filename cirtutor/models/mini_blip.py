"""tiny mode's pretrained mini-BLIP as a model: transformers' `BlipForImageTextRetrieval` at tiny dims.

The paper starts from pretrained BLIP (Li et al. 2022) and freezes its ViT. Tiny mode needs the same
starting point at tiny dims: the model *is* transformers' `BlipForImageTextRetrieval` (ViT `vision_model`,
MED BERT `text_encoder`, `vision_proj`, `text_proj`, `itm_head`) built from the tiny `ModelConfig`, plus the
learnable temperature that transformers' model lacks. This module builds it, scores with it (ITC
embeddings, ITM logits), changes it between pretraining phases (sine-cosine positions, narrowed
projections) and saves / loads it; `cirtutor/engine/pretrain.py` pretrains it (notebook 01).

The artifact ships in `cirtutor/assets/mini_blip/` (float16 safetensors + cirtutor.json with the
temperature, the config, the commands that reproduce it, its measured metrics and curve).
"""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipConfig, BlipForImageTextRetrieval
from transformers.utils import logging as hf_logging

from cirtutor.config import ModelConfig
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_json
from cirtutor.models.backbones import text_config, text_states, vision_config
from cirtutor.models.tokenizer import enc_token_id

TEMP_MIN, TEMP_MAX = 0.001, 0.5  # BLIP clamps its temperature to this range during pretraining
META_FILE = "cirtutor.json"      # written last: its presence marks a complete folder
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "mini_blip"
# The mini-BLIP before the narrowing phase (64-dim projections), kept for the studies that pinned it (`--set
# model.embed_dim=64` selects it): the CaLa and zero-shot studies and their shipped models were measured on it.
SHIPPED_E64 = SHIPPED.parent / "mini_blip_e64"
# ModelConfig fields that fix the architecture (and so the weights' shapes and meaning).
ARCH_FIELDS = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp",
               "vision_eps", "text_width", "text_layers", "text_heads", "text_intermediate", "text_eps",
               "vocab_size", "max_positions", "embed_dim")


# ---------------------------------------------------------------------------- model

def blip_config(cfg: ModelConfig) -> BlipConfig:
    """transformers' BLIP config for `cfg`: our text and vision configs, projections to embed_dim.

    The ViT's position and [CLS] embeddings start from N(0, 0.02) as in BLIP's ViT
    (transformers' vision default, 1e-10, would start them at zero)."""
    return BlipConfig(text_config=text_config(cfg).to_dict(), vision_config=vision_config(cfg).to_dict(),
                      image_text_hidden_size=cfg.embed_dim)


def build_mini_blip(cfg: ModelConfig) -> tuple[BlipForImageTextRetrieval, nn.Parameter]:
    """A freshly initialised (model, temp): BlipForImageTextRetrieval and its temperature, cfg.temp."""
    return BlipForImageTextRetrieval(blip_config(cfg)), nn.Parameter(torch.tensor(float(cfg.temp)))


def sincos_2d(side: int, width: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position codes of a side x side patch grid (MAE-style): (side^2, width),
    half the channels for the row, half for the column; each row has norm sqrt(width / 2)."""
    quarter = width // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter) / quarter)                 # (width/4,)
    pos = torch.arange(side, dtype=torch.float)[:, None] * freq             # (side, width/4)
    axis = torch.cat([pos.sin(), pos.cos()], dim=1)                          # (side, width/2)
    rows, cols = axis[:, None].expand(side, side, -1), axis[None].expand(side, side, -1)
    return torch.cat([rows, cols], dim=-1).flatten(0, 1)                     # (side^2, width)


@torch.no_grad()
def add_sincos_positions_(model: BlipForImageTextRetrieval, scale: float) -> None:
    """Add `scale` x 2D sine-cosine codes to the ViT's learned patch position embeddings ([CLS] untouched).

    Measured on the mini-BLIP pretrained without it: its learned position embeddings stayed at
    norm ~1 per token against ~17 for the patch embeddings, and its ITM told a scene from the
    same scene with one object moved no better than chance (pair accuracy 0.50): the ViT had not
    learned where things are. Codes at a comparable scale give every patch token its place."""
    emb = model.vision_model.embeddings
    side = int((emb.position_embedding.shape[1] - 1) ** 0.5)
    emb.position_embedding[0, 1:] += scale * sincos_2d(side, emb.position_embedding.shape[-1])


@torch.no_grad()
def narrow_projections_(model: BlipForImageTextRetrieval, dim: int, image_feats: torch.Tensor,
                        input_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Shrink the ITC projections (vision_proj, text_proj: d -> e) to d -> `dim` < e, keeping as much
    of the embedding space as one linear map can: both become P^T W, P (e, dim) the top right-singular
    vectors of the normalised image and text embeddings of a sample (uncentred: the directions that
    carry the dot products ITC compares). Returns P. Used to give the filter the paper's ratio of
    embedding to text width (256 / 768) from a wider pretrained mini-BLIP, before training goes on."""
    image_emb, text_emb = itc_embeddings(model, image_feats, input_ids, text_mask)
    _, _, vh = torch.linalg.svd(torch.cat([image_emb, text_emb]), full_matrices=False)
    p = vh[:dim].T                                                            # (e, dim)
    for name in ("vision_proj", "text_proj"):
        old = getattr(model, name)
        new = nn.Linear(old.in_features, dim)
        new.weight.copy_(p.T @ old.weight)
        new.bias.copy_(old.bias @ p)
        setattr(model, name, new)
    model.config.image_text_hidden_size = dim
    return p


@torch.no_grad()
def clamp_temp_(temp: nn.Parameter) -> nn.Parameter:
    """Clamp the temperature in place to BLIP's pretraining range [0.001, 0.5]."""
    return temp.clamp_(TEMP_MIN, TEMP_MAX)


def image_feats_of(model: BlipForImageTextRetrieval, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> image tokens (B, L_v, d_v), [CLS] first."""
    return model.vision_model(pixel_values=images).last_hidden_state


def itc_embeddings(model, image_feats, input_ids, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tokens (B, L_v, d_v) and unimodal text ids/mask (B, L_w) -> image_emb, text_emb (B, e), normalised."""
    image_emb = F.normalize(model.vision_proj(image_feats[:, 0]), dim=-1)  # (B, e)
    text_cls = text_states(model.text_encoder, input_ids, text_mask)[:, 0]  # (B, d) no image: unimodal
    return image_emb, F.normalize(model.text_proj(text_cls), dim=-1)


def itm_logits(model, input_ids, text_mask, image_feats) -> torch.Tensor:
    """Multimodal encoder ([ENC] at position 0, cross-attending image tokens) -> itm_head on [CLS]: (B, 2)."""
    input_ids = input_ids.clone()
    input_ids[:, 0] = enc_token_id()
    z = text_states(model.text_encoder, input_ids, text_mask, image_feats)  # (B, L_w, d)
    return model.itm_head(z[:, 0])                                          # column 1 = match


def save_mini_blip(model: BlipForImageTextRetrieval, temp: torch.Tensor, folder: str | Path, meta: dict) -> Path:
    """Write `folder/`: config.json + model.safetensors in float16 (save_pretrained), then
    cirtutor.json = `meta` (which must hold "model_config") plus the temperature."""
    if "model_config" not in meta:
        raise ValueError("meta must record the ModelConfig as meta['model_config']")
    folder = Path(folder)
    with quiet_progress():
        copy.deepcopy(model).to(torch.float16).save_pretrained(folder)
    atomic_write_json(folder / META_FILE, {**meta, "temp": temp.item()}, indent=2)
    return folder


def check_arch(meta: dict, expected: ModelConfig, folder: Path) -> None:
    """Raise CirtutorError naming every architecture field where `folder` differs from `expected`."""
    saved = meta.get("model_config") or {}
    diff = [f"{k}: saved {saved.get(k)!r}, requested {getattr(expected, k)!r}"
            for k in ARCH_FIELDS if saved.get(k) != getattr(expected, k)]
    if diff:
        raise CirtutorError(f"the mini-BLIP in {folder} was built for other model dims:\n  " + "\n  ".join(diff)
                            + "\n  Use a config with these dims, or pretrain one for yours with `cirtutor pretrain-tiny`.")


def load_meta(folder: Path) -> dict:
    """The cirtutor.json of a complete mini-BLIP folder (a clear error for anything else)."""
    missing = [f for f in ("config.json", "model.safetensors", META_FILE) if not (folder / f).is_file()]
    if missing:
        raise CirtutorError(f"{folder} is not a complete mini-BLIP folder (missing {', '.join(missing)}). "
                            "Write one with `cirtutor pretrain-tiny --out DIR`, or delete a broken cached copy "
                            "so that it is rebuilt.")
    return json.loads((folder / META_FILE).read_text())


def load_mini_blip(folder: str | Path, expected: ModelConfig | None = None) -> tuple[BlipForImageTextRetrieval, nn.Parameter, dict]:
    """(model in float32 and eval mode, temp, meta) from a `save_mini_blip` folder; with
    `expected`, its architecture must match that ModelConfig."""
    folder = Path(folder)
    meta = load_meta(folder)
    if expected is not None:
        check_arch(meta, expected, folder)
    with quiet_progress():
        model = BlipForImageTextRetrieval.from_pretrained(folder, dtype=torch.float32)
    return model, nn.Parameter(torch.tensor(float(meta["temp"]))), meta


@contextlib.contextmanager
def quiet_progress():
    """Hide transformers' per-call progress bars (writing shards, loading weights)."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
