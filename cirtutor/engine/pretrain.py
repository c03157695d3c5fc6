"""Pretraining tiny mode's mini-BLIP (`cirtutor/models/mini_blip.py`): BLIP's image-text pretraining at CPU scale.

The paper starts from pretrained BLIP (Li et al. 2022) and freezes its ViT. Tiny mode
needs the same starting point at tiny dims, so we pretrain one: the model *is*
transformers' `BlipForImageTextRetrieval` (ViT `vision_model`, MED BERT `text_encoder`,
`vision_proj`, `text_proj`, `itm_head`) built from the tiny `ModelConfig`, plus the
learnable temperature that transformers' model lacks. It learns from the synthetic
world's (image, scene description) pairs with two of BLIP's three objectives (BLIP paper, Sec. 3.2;
no language-modelling loss, the paper's pipeline never generates text):

* ITC, image-text contrastive: the image [CLS] (vision_proj, normalised) against the
  text [CLS] of the text encoder in *unimodal* mode (no image, [CLS] at position 0;
  text_proj, normalised); symmetric cross-entropy over the batch with temperature `temp`,
  clamped to [0.001, 0.5] as BLIP does. In-batch negatives only: BLIP's momentum encoder
  and queue are left out at this scale.
* ITM, image-text matching: the text encoder in *multimodal* mode ([ENC] at position 0,
  cross-attending the image tokens); `itm_head` on its [CLS] says match / no match. Each
  image gets one hard-negative text and each text one hard-negative image, drawn from the
  ITC similarity softmax with the positive excluded (BLIP's hard-negative mining).

The artifact ships in `cirtutor/assets/mini_blip/` (float16 safetensors, 7.8 MB, + cirtutor.json
with the temperature, the config, the commands that reproduce it, its measured metrics and
curve); `pretrained_mini_blip` loads it, or builds the same three-phase recipe (RECIPE and
GROUNDING with 64-dim projections, then NARROWING to the preset's 32) into the cache:

    cirtutor pretrain-tiny --preset tiny --set model.embed_dim=64 --steps 3000 --out runs/mini_blip_base
    cirtutor pretrain-tiny --preset tiny --set model.embed_dim=64 --steps 1000 --lr 0.0005 --edited-negatives 6 \
        --sincos-positions 1.0 --init runs/mini_blip_base --out runs/mini_blip64
    cirtutor pretrain-tiny --preset tiny --steps 600 --lr 0.0005 --edited-negatives 6 \
        --init runs/mini_blip64 --out runs/mini_blip

Phase 1 (batch 64, AdamW lr 1e-3, 6000 train pairs) took 1.17 s/step on one thread of a
2-core CPU, about an hour. From scratch both encoders first collapse to near-identical
embeddings (ITC near ln 64 for ~100 steps); ITM sits at its 1/3-positive prior until ~550
steps. On 504 held-out pairs (84 whole scene groups) it reached image->text R@1/5 0.61/0.99
and ITM accuracy 0.83 against a sibling scene's caption. But it had learned to ignore *where*
things are: its ITM scored a scene's description and the same description with one object
moved alike (pair accuracy 0.50 on 600 val images), its ITC embeddings of the two texts had
cosine 0.999, and its learned position embeddings had norm ~1 per token against ~17 for the
patch embeddings. It barely saw shapes either (pair accuracy 0.67).

Phase 2, grounding (1000 steps, lr 5e-4, 0.93 s/step on 2 threads, 16 minutes), adds 2D
sine-cosine codes to the ViT's position embeddings (`add_sincos_positions_`; no weight decay
on them) and gives every image one more ITM negative: its own scene's description after one
edit, the six edit kinds in turn (`edited_captions`). Measured after it: image->text R@1 0.72,
ITM accuracy 0.85, ITM accuracy against one-edit texts 0.81; pair accuracy on moved objects
0.58 and ITC pair accuracy on them 0.79 (from 0.60). Downstream, on the same stage-1 recipe,
the filter's R@1/5/10 rose from 16.6/47.0/67.8 to 22.8/58.4/74.2. Position is still the
weakest attribute: a longer grounding phase is the obvious next lever. The temperature ends at
0.004 (inside BLIP's clamp, never at its 0.001 floor).

Phase 3, narrowing (600 steps, lr 5e-4, 1.31 s/step, 13 minutes). BLIP projects its 768-wide
[CLS] to 256 dims for ITC, a third of the width; the first two phases used 64 of 96. Narrowing
starts the 32-dim projections from the top singular directions of the 64-dim ones' outputs
(`narrow_projections_`), then continues the grounding recipe. After it image->text R@1 is 0.76
and ITM accuracy 0.85 (against one-edit texts 0.80). Downstream, on a tuning world of another data
seed, the filter's R@1/5/Rs@1 rose from 24.2/54.4/78.0 to 26.4/59.8/80.2 (docs/tiny_mode.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipForImageTextRetrieval

from cirtutor.cache import cached
from cirtutor.config import Config, DataConfig, ModelConfig, apply_overrides, get_preset
from cirtutor.data import synthetic as world
from cirtutor.data.base import read_json
from cirtutor.data.registry import dataset_root, open_dataset
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_json
from cirtutor.models.tokenizer import tokenize_text_only
from cirtutor.models.mini_blip import (ARCH_FIELDS, META_FILE, SHIPPED, SHIPPED_E64, add_sincos_positions_,
                                      build_mini_blip, check_arch, clamp_temp_, image_feats_of, itc_embeddings,
                                      itm_logits, load_meta, load_mini_blip, narrow_projections_, save_mini_blip)

# The named, seeded recipe of the shipped mini-BLIP: a `steps`-step cosine schedule whose
# weights after `stop_after` steps are kept (None: all of them).
RECIPE = dict(steps=3000, stop_after=None, batch_size=64, lr=1e-3, seed=0)
# ...then continued by this grounding phase (None: no second phase): position codes added to the
# ViT and ITM negatives that are the image's own scene after one edit (see `add_sincos_positions_`).
GROUNDING = dict(steps=1000, stop_after=None, batch_size=64, lr=5e-4, seed=0, edited_negatives=6, sincos_positions=1.0)
# ...and, when the requested embed_dim is below `from_dim`, the two phases above run at `from_dim` and this third one
# narrows the ITC projections to embed_dim (`narrow_projections_`) and trains on (None: no narrowing phase). The tiny
# preset's 32 dims keep BLIP's ratio of projection to text width (256 / 768 = 1/3; 96 / 3 = 32).
NARROWING = dict(from_dim=64, steps=600, stop_after=None, batch_size=64, lr=5e-4, seed=0, edited_negatives=6)


def pad_cat(rows: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B_i, L_i) token tensors along the batch, zero-padding to the longest L."""
    length = max(r.shape[1] for r in rows)
    return torch.cat([F.pad(r, (0, length - r.shape[1])) for r in rows])


@torch.no_grad()
def sample_hard_negatives(sim: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BLIP's hard negatives: row i of `sim` (B, B) -> one column j != i, drawn with
    probability softmax(sim[i]) + 1e-4, the diagonal (the positive) set to zero. (B,)"""
    weights = F.softmax(sim.float(), dim=1) + 1e-4
    weights.fill_diagonal_(0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def pretrain_losses(model, temp, images, input_ids, text_mask, generator=None,
                    edited: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP's ITC and ITM losses for a batch of matching pairs: images (B, 3, H, W), unimodal
    text ids/mask (B, L_w) ([CLS] at position 0). Clamps `temp` in place first, as BLIP does.
    `edited` (ids, mask) (B, L_e): for each image the description of its scene after one edit
    (an object added, removed, recoloured, resized, moved or reshaped), one more ITM negative
    per image that only token-level grounding can reject (a tiny-mode addition to BLIP's ITM)."""
    clamp_temp_(temp)
    image_feats = image_feats_of(model, images)                           # (B, L_v, d_v)
    image_emb, text_emb = itc_embeddings(model, image_feats, input_ids, text_mask)
    sim_i2t = image_emb @ text_emb.t() / temp                             # (B, B)
    labels = torch.arange(len(images))
    loss_itc = (F.cross_entropy(sim_i2t, labels) + F.cross_entropy(sim_i2t.t(), labels)) / 2

    neg_text = sample_hard_negatives(sim_i2t, generator)                  # a text for each image
    neg_image = sample_hard_negatives(sim_i2t.t(), generator)             # an image for each text
    ids = [input_ids, input_ids, input_ids[neg_text]]                     # 3 x (B, L_w)
    mask = [text_mask, text_mask, text_mask[neg_text]]
    feats = [image_feats, image_feats[neg_image], image_feats]            # 3 x (B, L_v, d_v)
    if edited is not None:
        ids.append(edited[0])
        mask.append(edited[1])
        feats.append(image_feats)
    ids, mask = pad_cat(ids), pad_cat(mask)                               # (3B or 4B, L)
    feats = torch.cat(feats)
    itm_labels = torch.cat([torch.ones(len(images)), torch.zeros(len(feats) - len(images))]).long()
    loss_itm = F.cross_entropy(itm_logits(model, ids, mask, feats), itm_labels)
    return loss_itc, loss_itm


# ---------------------------------------------------------------------------- data

def pretraining_data(data: DataConfig) -> DataConfig:
    """The pretraining corpus: always the synthetic CIRR-format world (at `data`'s size,
    resolution and seed), whichever benchmark follows — as one BLIP checkpoint serves both."""
    return dataclasses.replace(data, dataset="cirr", root=None, annotations=None, images=None)


def batch_tokens(input_ids, text_mask, idx) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `idx` of captions tokenised once for the whole split (unimodal, (N, L)), trimmed
    to their longest text: the same ids and mask as tokenising just these texts."""
    input_ids, text_mask = input_ids[idx], text_mask[idx]
    length = int(text_mask.sum(1).max())
    return input_ids[:, :length], text_mask[:, :length]


def image_caption_pairs(data: DataConfig, split: str, verbose: bool = False) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The synthetic world's (image, scene description) pairs of `split`: the images
    preprocessed once into one tensor (N, 3, R, R), the captions, and each pair's scene
    group (N,): a reference and its edited scenes, `n` in CIRR's name `{split}-{n}-{j}-img{b}`."""
    root = dataset_root(data, verbose)
    pairs = read_json(root / "synthetic" / f"captions.{split}.json", f"synthetic {split} image-caption pairs",
                      "Delete the cached synthetic dataset folder to regenerate it.")
    gallery = open_dataset(data, split, mode="gallery")
    images = torch.stack([gallery.load(p["image"]) for p in pairs])
    groups = torch.tensor([int(p["image"].split("-")[1]) for p in pairs])
    return images, [p["caption"] for p in pairs], groups


def pair_names(data: DataConfig, split: str) -> list[str]:
    """The image names of `split`'s pairs, in `image_caption_pairs` order."""
    pairs = read_json(dataset_root(data) / "synthetic" / f"captions.{split}.json", f"synthetic {split} image-caption pairs",
                      "Delete the cached synthetic dataset folder to regenerate it.")
    return [p["image"] for p in pairs]


def edited_captions(names: list[str], captions: list[str], per_image: int = 4, seed: int = 0) -> list[list[str]]:
    """For each image (`names`, with its scene description in `captions`), `per_image` descriptions
    of its scene after one random edit (seeded by the image's name): captions that are wrong
    about exactly one object. The edit kinds
    (add, remove, recolour, resize, move, shape) take turns in a random order, then one edit
    of the kind is drawn: uniform over all edits would be ~90 % "add" (any free cell x any
    unused description) and would never teach positions or shapes."""
    out = []
    for name, caption in zip(names, captions, strict=True):
        scene = world.parse_scene(caption)
        rng = random.Random(f"{seed}/{name}")
        by_kind = {kind: edits for kind, edits in world.possible_edits(scene).items() if edits}
        order = rng.sample(sorted(by_kind), len(by_kind))          # kinds in a random order, cycled
        picked = []
        for i in range(per_image):
            options = [e for e in by_kind[order[i % len(order)]] if e not in picked]
            if options:
                picked.append(rng.choice(options))
        picked += [picked[i % len(picked)] for i in range(per_image - len(picked))]  # always per_image
        out.append([world.describe_scene(world.apply_edit(scene, e)) for e in picked])
    return out


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless epochs of a seeded permutation of range(n), cut into full batches (no pair twice in a batch)."""
    if batch_size > n:
        raise CirtutorError(f"batch size {batch_size} exceeds the {n} training pairs; use a smaller --batch-size")
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from perm[: n - n % batch_size].view(-1, batch_size)


# ---------------------------------------------------------------------------- evaluation

def recall_at(sim: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """Row i's positive is column i: fraction of rows whose positive ranks in the top k."""
    rank = (sim > sim.diagonal()[:, None]).sum(1)  # (N,) columns scoring strictly higher
    return {k: (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def evaluate(model, images, input_ids, text_mask, neg_text, edited=None, chunk: int = 250) -> dict[str, float]:
    """Zero-shot N-way retrieval by ITC similarity (image->text and text->image R@1/5/10) on
    N held-out pairs, and ITM accuracy on 2N balanced pairs: each image with its own text
    (a match) and with the fixed hard-negative text `neg_text` (N,) (no match). With
    `edited` (ids, mask) (N, L), also "itm_edit_acc": the same with, as the negative, the
    description of the image's scene after one edit (grounding: one object is wrong)."""
    was_training = model.training
    model.eval()
    image_feats = torch.cat([image_feats_of(model, x) for x in images.split(chunk)])  # (N, L_v, d_v)
    embs = [itc_embeddings(model, feats, *batch_tokens(input_ids, text_mask, idx))
            for feats, idx in zip(image_feats.split(chunk), torch.arange(len(images)).split(chunk))]
    image_emb, text_emb = (torch.cat(e) for e in zip(*embs))                  # (N, e) each
    sim = image_emb @ text_emb.t()                                            # (N, N) cosine
    metrics = {f"i2t_r{k}": r for k, r in recall_at(sim).items()}
    metrics |= {f"t2i_r{k}": r for k, r in recall_at(sim.t()).items()}
    def itm_accuracy(negative) -> float:
        """ITM accuracy over each image with its own text (match) and the text `negative(idx)` (no match)."""
        correct = []
        for idx in torch.arange(len(images)).split(chunk):
            for tokens, label in ((batch_tokens(input_ids, text_mask, idx), 1), (negative(idx), 0)):
                correct.append(itm_logits(model, *tokens, image_feats[idx]).argmax(1) == label)
        return torch.cat(correct).float().mean().item()

    metrics["itm_acc"] = itm_accuracy(lambda idx: batch_tokens(input_ids, text_mask, neg_text[idx]))
    if edited is not None:
        metrics["itm_edit_acc"] = itm_accuracy(lambda idx: batch_tokens(*edited, idx))
    model.train(was_training)
    return metrics


def eval_pairs(data: DataConfig, size: int) -> tuple[torch.Tensor, ...]:
    """About `size` val pairs made of whole scene groups (so the N-way retrieval includes
    scenes one edit apart), a fixed seeded choice, the same for every run and model:
    images, unimodal ids, mask, each pair's hard-negative text (N,): the caption of a
    fixed, randomly chosen other scene of its group, one or two edits away, and (ids, mask)
    of one edited description of each image's own scene (`edited_captions`)."""
    images, captions, groups = image_caption_pairs(data, "val")
    g = torch.Generator().manual_seed(0)
    per_group = len(groups) // len(groups.unique())
    chosen = groups.unique()[torch.randperm(len(groups.unique()), generator=g)][: math.ceil(size / per_group)]
    pick = torch.isin(groups, chosen).nonzero().squeeze(1)                     # (N,) whole groups
    neg_text = torch.empty(len(pick), dtype=torch.long)
    for i, group in enumerate(groups[pick]):
        siblings = (groups[pick] == group).nonzero().squeeze(1)
        siblings = siblings[siblings != i]
        neg_text[i] = siblings[torch.randint(len(siblings), (1,), generator=g)]
    names = pair_names(data, "val")
    edited = edited_captions([names[i] for i in pick], [captions[i] for i in pick], per_image=1)
    return (images[pick], *tokenize_text_only([captions[i] for i in pick]), neg_text,
            tokenize_text_only([e[0] for e in edited]))


def format_metrics(m: dict) -> str:
    edit = f"  ITM-edit acc {m['itm_edit_acc']:.3f}" if "itm_edit_acc" in m else ""
    return (f"i2t R@1/5/10 {m['i2t_r1']:.3f}/{m['i2t_r5']:.3f}/{m['i2t_r10']:.3f}  "
            f"t2i R@1/5/10 {m['t2i_r1']:.3f}/{m['t2i_r5']:.3f}/{m['t2i_r10']:.3f}  ITM acc {m['itm_acc']:.3f}{edit}")


# ---------------------------------------------------------------------------- training

def lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `steps` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def continue_from(init: str | Path, cfg: ModelConfig, images, input_ids, text_mask, seed: int, log):
    """(model, temp, its record) of the mini-BLIP folder `init`, in training mode; when its projections are wider
    than `cfg.embed_dim`, narrowed to it on 2000 seeded training pairs (the narrowing phase)."""
    model, temp, base = load_mini_blip(init)
    wider = base["model_config"]["embed_dim"] > cfg.embed_dim
    check_arch(base, dataclasses.replace(cfg, embed_dim=base["model_config"]["embed_dim"]) if wider else cfg,
               Path(init))
    if wider:
        model.eval()
        sample = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:2000]
        narrow_projections_(model, cfg.embed_dim, image_feats_of(model, images[sample]),
                            *batch_tokens(input_ids, text_mask, sample))
        log(f"narrowed the ITC projections from {base['model_config']['embed_dim']} to {cfg.embed_dim} dims")
    model.train()
    return model, temp, base


def pretrain_optimizer(model, temp, lr: float, weight_decay: float, warmup: int, steps: int):
    """AdamW with weight decay on the model but not on `temp` or the ViT's position and [CLS] embeddings, and
    a linear warm-up + cosine schedule over `steps`."""
    frozen_decay = ("position_embedding", "class_embedding")
    no_decay = [p for n, p in model.named_parameters() if n.endswith(frozen_decay)]
    decay = [p for n, p in model.named_parameters() if not n.endswith(frozen_decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": [*no_decay, temp], "weight_decay": 0.0}], lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, steps))


def pretrain_step(loss: torch.Tensor, opt, sched, temp) -> None:
    """Backward, one AdamW step, the schedule's step, and the temperature clamped to BLIP's range."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    clamp_temp_(temp)


def edited_texts(data: DataConfig, captions: list[str], per_image: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) (N * per_image, L): `per_image` edited descriptions of each train pair's scene, row i's at
    i * per_image ... (`edited_captions`), the pool of extra ITM negatives."""
    variants = edited_captions(pair_names(data, "train"), captions, per_image, seed)
    return tokenize_text_only([c for row in variants for c in row])


def edited_batch(edited, idx: torch.Tensor, per_image: int, generator: torch.Generator):
    """(ids, mask) of one edited description per pair of batch `idx`, drawn with `generator`; None without a pool."""
    if edited is None:
        return None
    pick = idx * per_image + torch.randint(per_image, (len(idx),), generator=generator)
    return batch_tokens(*edited, pick)


def log_losses(window: list, history: list, step: int, temp, lr: float, sec_per_step: float, log) -> None:
    """The mean ITC and ITM losses of the steps in `window` (emptied): a row of `history` and a log line."""
    itc, itm = (sum(v) / len(v) for v in zip(*window))
    history.append(dict(step=step, loss_itc=itc, loss_itm=itm, temp=temp.item(), lr=lr))
    log(f"step {step:5d}  loss_itc {itc:.3f}  loss_itm {itm:.3f}  temp {temp.item():.4f}  ({sec_per_step:.2f} s/step)")
    window.clear()


def pretrain_mini_blip(cfg: Config, *, steps: int, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05,
                       warmup: int = 30, seed: int = 0, eval_every: int = 250, eval_size: int = 500,
                       log_every: int = 50, stop_after: int | None = None, save_every: int | None = None,
                       save_dir: str | Path | None = None, overrides: list[str] = (),
                       edited_negatives: int = 0, init: str | Path | None = None, sincos_positions: float = 0.0,
                       log: Callable[[str], None] = print) -> dict:
    """BLIP pretraining (ITC + ITM) of a fresh mini-BLIP on the synthetic train pairs.

    AdamW (weight decay on the model, not on `temp`), linear warm-up + cosine over `steps`;
    `stop_after` ends early with exactly the weights a full run has at that step. Fully
    seeded: `seed` fixes the initial weights, dropout, batches and hard negatives. Evaluates
    on `eval_size` held-out val pairs every `eval_every` steps and at the end; with
    `save_every` and `save_dir`, writes `save_dir/step_XXXX/` checkpoints. `overrides` (the
    --set items `cfg` was made with) only go into the recorded command. `edited_negatives` > 0:
    every image also gets an ITM negative drawn from that many edited descriptions of its scene
    (`edited_captions`). `init`: continue from this mini-BLIP folder instead of fresh weights.
    `sincos_positions` > 0: first add that many times 2D sine-cosine codes to the ViT's position
    embeddings (`add_sincos_positions_`); position embeddings are never weight-decayed.
    Returns {"model", "temp", "history", "evals", "metrics", "meta", "sec_per_step"}."""
    data = pretraining_data(cfg.data)
    torch.manual_seed(seed)
    model, temp = build_mini_blip(cfg.model)     # built even with `init`: later random draws follow the same stream
    base = None
    images, captions, _ = image_caption_pairs(data, "train")
    input_ids, text_mask = tokenize_text_only(captions)
    if init is not None:
        model, temp, base = continue_from(init, cfg.model, images, input_ids, text_mask, seed, log)
    if sincos_positions:
        add_sincos_positions_(model, sincos_positions)
    edited_pool = edited_texts(data, captions, edited_negatives, seed) if edited_negatives else None
    val = eval_pairs(data, eval_size)
    log(f"mini-BLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{len(images)} train pairs, {len(val[0])} val pairs")

    opt, sched = pretrain_optimizer(model, temp, lr, weight_decay, warmup, steps)
    generator = torch.Generator().manual_seed(seed)
    recipe = dict(steps=steps, stop_after=stop_after, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                  warmup=warmup, seed=seed, edited_negatives=edited_negatives, sincos_positions=sincos_positions,
                  init=None if base is None else {"command": base.get("command"), "recipe": base.get("recipe")})
    history, evals, window, train_seconds = [], [], [], 0.0
    last = stop_after or steps
    model.train()
    for step, idx in zip(range(1, last + 1), batches(len(images), batch_size, generator)):
        t0 = time.perf_counter()
        edited = edited_batch(edited_pool, idx, edited_negatives, generator)
        loss_itc, loss_itm = pretrain_losses(model, temp, images[idx], *batch_tokens(input_ids, text_mask, idx),
                                             generator=generator, edited=edited)
        pretrain_step(loss_itc + loss_itm, opt, sched, temp)
        train_seconds += time.perf_counter() - t0
        window.append((loss_itc.item(), loss_itm.item()))
        if step % log_every == 0 or step == last:
            log_losses(window, history, step, temp, sched.get_last_lr()[0], train_seconds / step, log)
        saving = bool(save_every and save_dir and step % save_every == 0)
        if step % eval_every == 0 or saving or step == last:
            evals.append(dict(step=step, **evaluate(model, *val)))
            log("  val " + format_metrics(evals[-1]))
        if saving:
            save_mini_blip(model, temp, Path(save_dir) / f"step_{step:04d}",
                           checkpoint_meta(cfg, data, recipe, step, evals[-1], history, overrides))
    meta = checkpoint_meta(cfg, data, recipe, last, evals[-1], history, overrides)
    return dict(model=model, temp=temp, history=history, evals=evals, metrics=evals[-1], meta=meta,
                sec_per_step=train_seconds / last)


def checkpoint_meta(cfg: Config, data: DataConfig, recipe: dict, step: int, metrics: dict, history: list,
                    overrides: list[str]) -> dict:
    """What cirtutor.json records next to the weights after `step` steps: the recipe and the
    command that rebuild exactly them, the configs, and how good they are."""
    recipe = {**recipe, "stop_after": step if step < recipe["steps"] else None}
    return dict(step=step, recipe=recipe, seed=recipe["seed"], command=recipe_command(cfg, recipe, overrides),
                model_config=dataclasses.asdict(cfg.model), data=dataclasses.asdict(data), metrics=metrics,
                train=history[-1] if history else None, torch=torch.__version__, threads=torch.get_num_threads())


def recipe_command(cfg: Config, recipe: dict, overrides: list[str] = ()) -> str:
    """The `cirtutor pretrain-tiny` command line that trains `recipe` on preset `cfg.name` (a
    continued recipe names its starting folder as --init BASE, the base's own command recorded apart)."""
    args = ["cirtutor", "pretrain-tiny", "--preset", cfg.name, "--steps", recipe["steps"], "--batch-size",
            recipe["batch_size"], "--lr", recipe["lr"], "--seed", recipe["seed"]]
    if recipe.get("stop_after"):
        args += ["--stop-after", recipe["stop_after"]]
    if recipe.get("edited_negatives"):
        args += ["--edited-negatives", recipe["edited_negatives"]]
    if recipe.get("sincos_positions"):
        args += ["--sincos-positions", recipe["sincos_positions"]]
    if recipe.get("init"):
        args += ["--init", "BASE"]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(str(a) for a in args)


# ---------------------------------------------------------------------------- artifact

def cache_name(cfg: Config) -> str:
    """Cache folder name for RECIPE on `cfg`: a digest of everything the weights depend on."""
    key = dict(recipe=RECIPE, model=dataclasses.asdict(cfg.model), data=dataclasses.asdict(pretraining_data(cfg.data)))
    if GROUNDING:
        key["grounding"] = GROUNDING
    if narrows(cfg.model):
        key["narrowing"] = NARROWING
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"models/mini-blip-{cfg.model.image_size}px-{digest}"


def mini_blip_folder(cfg: Config, verbose: bool = True) -> Path:
    """The folder of the pretrained mini-BLIP for `cfg`'s model dims: a shipped copy when its
    architecture matches (SHIPPED, or SHIPPED_E64 at 64 dims), else the recipe (RECIPE, GROUNDING and, below
    64 dims, NARROWING) trained once into the cache (more than an hour on 2 CPU cores).
    It is a transformers BLIP folder, so `load_filter` / `load_reranker` read it directly.
    The environment variable CIRTUTOR_MINI_BLIP=DIR picks a mini-BLIP of your own instead (e.g. one
    `cirtutor pretrain-tiny --out DIR` wrote); caches are keyed by its contents, so nothing mixes."""
    if own := os.environ.get("CIRTUTOR_MINI_BLIP"):
        folder = Path(own)
        check_arch(load_meta(folder), cfg.model, folder)
        if verbose:
            print(f"found pretrained mini-BLIP ({folder}, CIRTUTOR_MINI_BLIP), loading…")
        return folder
    for shipped in (SHIPPED, SHIPPED_E64):
        if (shipped / META_FILE).is_file():
            arch = json.loads((shipped / META_FILE).read_text()).get("model_config", {})
            if all(arch.get(k) == getattr(cfg.model, k) for k in ARCH_FIELDS):
                if verbose:
                    print(f"found pretrained mini-BLIP{'' if shipped == SHIPPED else ' (64-dim projections)'}, loading…")
                return shipped

    log = print if verbose else (lambda _: None)

    def build(tmp: Path) -> None:
        wide = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, embed_dim=NARROWING["from_dim"])) \
            if narrows(cfg.model) else cfg
        result = pretrain_mini_blip(wide, **RECIPE, log=log)
        if GROUNDING:
            save_mini_blip(result["model"], result["temp"], tmp / "base", result["meta"])
            result = pretrain_mini_blip(wide, **GROUNDING, init=tmp / "base", log=log)
        if wide is not cfg:
            save_mini_blip(result["model"], result["temp"], tmp / "grounded", result["meta"])
            steps = {k: v for k, v in NARROWING.items() if k != "from_dim"}
            result = pretrain_mini_blip(cfg, **steps, init=tmp / "grounded", log=log)
        save_mini_blip(result["model"], result["temp"], tmp, result["meta"])

    phases = [RECIPE] + ([GROUNDING] if GROUNDING else []) + ([NARROWING] if narrows(cfg.model) else [])
    n = sum(p["stop_after"] or p["steps"] for p in phases)
    what = f"pretrained mini-BLIP ({n} steps of ITC + ITM pretraining, about {n // 60} minutes at ~1 s/step on 2 CPU cores)"
    return cached(cache_name(cfg), build, what, verbose)


def narrows(cfg: ModelConfig) -> bool:
    """Whether the recipe for these dims ends with the narrowing phase (NARROWING)."""
    return bool(NARROWING) and cfg.embed_dim < NARROWING["from_dim"]


def pretrained_mini_blip(cfg: Config, verbose: bool = True) -> tuple[BlipForImageTextRetrieval, nn.Parameter, dict]:
    """(model, temp, meta) of `mini_blip_folder(cfg)`."""
    return load_mini_blip(mini_blip_folder(cfg, verbose), cfg.model)


# ---------------------------------------------------------------------------- command line

def pretrain_tiny_main(argv: list[str] | None = None) -> int:
    """`cirtutor pretrain-tiny`: pretrain a mini-BLIP, write it to --out, print its metrics."""
    p = argparse.ArgumentParser(prog="cirtutor pretrain-tiny", description=pretrain_tiny_main.__doc__)
    p.add_argument("--preset", default="tiny", help="preset whose model dims and synthetic world to use")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a preset field")
    p.add_argument("--steps", type=int, default=RECIPE["steps"], help="length of the warm-up + cosine schedule")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps of the schedule")
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"])
    p.add_argument("--seed", type=int, default=RECIPE["seed"])
    p.add_argument("--edited-negatives", type=int, default=0,
                   help="ITM negatives per image drawn from this many one-edit descriptions of its scene")
    p.add_argument("--sincos-positions", type=float, default=0.0,
                   help="first add this scale x 2D sine-cosine codes to the ViT position embeddings")
    p.add_argument("--init", default=None, help="continue from this mini-BLIP folder instead of fresh weights")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=None, help="also write OUT/step_XXXX/ checkpoints")
    p.add_argument("--out", required=True, help="folder for the final model, its cirtutor.json and history.json")
    args = p.parse_args(argv)
    try:
        cfg = apply_overrides(get_preset(args.preset), args.set)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise CirtutorError(f"--out {args.out} is a file, not a folder: choose a folder for the model")
        for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--eval-every", args.eval_every)):
            if value < 1:
                raise CirtutorError(f"{flag} {value}: expected at least 1")
        if not args.lr > 0 or args.lr == float("inf"):
            raise CirtutorError(f"--lr {args.lr}: expected a finite number above 0")
        recipe = dict(steps=args.steps, stop_after=args.stop_after, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, edited_negatives=args.edited_negatives, sincos_positions=args.sincos_positions,
                      init=args.init)
        result = pretrain_mini_blip(cfg, **recipe, eval_every=args.eval_every, save_every=args.save_every,
                                    save_dir=args.out, overrides=args.set)
        save_mini_blip(result["model"], result["temp"], args.out, result["meta"])
    except CirtutorError as e:
        print(f"cirtutor pretrain-tiny: error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(Path(args.out) / "history.json", {k: result[k] for k in ("history", "evals", "sec_per_step")},
                      indent=2)
    print(f"\nwrote {args.out} ({result['sec_per_step']:.2f} s/step)")
    for e in result["evals"]:
        print(f"step {e['step']:5d}  {format_metrics(e)}")
    return 0
