"""Training and evaluating the zero-shot models (`cirtutor.models.zeroshot`) with the shared loop.

Stage I, mapping (images only). For a batch of B images with tokens V and ITC embeddings v:
    q_i = text_embed("a photo of $", $ = pseudo words of image i)                   (B, e)
    L_map = (CE(q v^T / tau) + CE(v q^T / tau)) / 2       Pic2Word's symmetric InfoNCE, frozen tau
    L_soft = KL(softmax(c c^T / tau_soft) || softmax(q c^T / tau))   soft text alignment [I]:
             c_i = the frozen embedding of image i's caption; the prompt of image i must spread
             over the batch's captions as image i's own caption does (0 weight: the baseline)
Stage II, composing (a budget of triplets; Stage I frozen, adapters trained). For a batch of
queries (reference, text, target):
    q_i = text_embed("a photo of $ that {text_i}")                                   (B, e)
    columns = the batch's targets and each query's `hard_negatives` mined train images, once each
    L_comp = CE(q C^T / tau) against each query's own target column.
The hard negatives are the train images the Stage I model ranks highest for the query, its
target excluded, mined once before Stage II [I]. Zero-shot evaluation is the filter's
(`evaluate_filter`) with these query embeddings: the same galleries, metrics and rules.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from cirtutor.config import Config, ZeroShotConfig
from cirtutor.data.base import read_json
from cirtutor.engine.features import FeatureStore
from cirtutor.engine.loop import Schedule, fit
from cirtutor.engine.optim import make_optimizer
from cirtutor.engine.stage1 import evaluate_filter, rank_with_filter
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_bytes
from cirtutor.models.loading import load_filter
from cirtutor.models.tokenizer import blip_tokenizer, tokenize_text_only
from cirtutor.models.zeroshot import ZeroShotEncoder, prompts

TRAINABLE = ("mapper.", "injections.", "adapters.")
ZEROSHOT_FILE = "zeroshot.safetensors"             # the trained parts (`trainable_state`), in pipeline.zeroshot_dir(run, seed)


def build_zeroshot(weights: Path, cfg: Config, seed: int = 0) -> ZeroShotEncoder:
    """The frozen BLIP of `weights` (its text encoder, projections and ITC temperature, as the
    filter loads them) with the zero-shot parts of `cfg.zeroshot`, drawn from `seed`."""
    filt, _ = load_filter(weights, cfg.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ZeroShotEncoder(filt.text_encoder, filt.text_proj, filt.vision_proj, float(filt.temp.detach()), cfg.zeroshot)


def trainable_state(model: ZeroShotEncoder) -> dict[str, torch.Tensor]:
    """What the zero-shot training adds to the frozen BLIP: the mapper, injections and adapters."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(TRAINABLE)}


def save_zeroshot(model: ZeroShotEncoder, path: Path) -> None:
    atomic_write_bytes(path, safetensors_bytes(trainable_state(model)))


def load_zeroshot(model: ZeroShotEncoder, path: Path) -> ZeroShotEncoder:
    """The trained parts saved by `save_zeroshot` into `model` (built with the same config; add
    the adapters first when the file has them)."""
    state = load_file(str(path))
    if any(k.startswith("adapters.") for k in state) and not len(model.adapters):
        model.add_adapters()
    missing, unexpected = model.load_state_dict(state, strict=False)
    wanted = [k for k in missing if k.startswith(TRAINABLE)]
    if wanted or unexpected:
        raise CirtutorError(f"{path} does not fit this zero-shot config (missing {wanted[:3]}, unexpected "
                            f"{unexpected[:3]}): use the --set zeroshot.* options it was trained with")
    return model


# ----------------------------------------------------------------------------- Stage I

class MappingObjective(nn.Module):
    """Stage I's loss for a batch of images (the module docstring's L_map + soft_weight L_soft)."""

    def __init__(self, model: ZeroShotEncoder, cfg: ZeroShotConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, image_tokens: torch.Tensor, caption_emb: torch.Tensor | None = None) -> torch.Tensor:
        v = self.model.gallery_embed(image_tokens)                              # (B, e), frozen
        q = self.model.image_prompt_embed(image_tokens)                         # (B, e)
        logits = self.model.logits(q, v)                                        # (B, B)
        labels = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        if self.cfg.soft_weight and caption_emb is not None:
            teacher = F.softmax(caption_emb @ caption_emb.t() / self.cfg.soft_temp, dim=1)   # (B, B), frozen
            student = F.log_softmax(self.model.logits(q, caption_emb), dim=1)
            loss = loss + self.cfg.soft_weight * F.kl_div(student, teacher, reduction="batchmean")
        return loss


@torch.no_grad()
def caption_embeddings(model: ZeroShotEncoder, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Frozen ITC embeddings of plain captions (N, e): the soft alignment's targets."""
    out = []
    for start in range(0, len(captions), batch_size):
        ids, mask = tokenize_text_only(captions[start:start + batch_size], model.temp.device)
        out.append(model.text_embed(ids, mask).cpu())
    return torch.cat(out)


def synthetic_captions(root: Path, split: str) -> dict[str, str]:
    """Tiny mode's scene descriptions of `split`'s images, by image name."""
    pairs = read_json(Path(root) / "synthetic" / f"captions.{split}.json", f"synthetic {split} image-caption pairs",
                      "Delete the cached synthetic dataset folder to regenerate it.")
    return {p["image"]: p["caption"] for p in pairs}


def train_mapping(model: ZeroShotEncoder, store: FeatureStore, names: list[str], cfg: ZeroShotConfig, *,
                  captions: dict[str, str] | None = None, seed: int = 0, device="cpu", log=print, progress=None):
    """Stage I on the images `names` of `store` (no triplets). Returns the loop's history."""
    if cfg.soft_weight and captions is None:
        raise CirtutorError("zeroshot.soft_weight > 0 needs captions of the Stage I images (tiny mode: the synthetic "
                            "world's); set zeroshot.soft_weight=0 for an image folder without captions")
    model.to(device)
    caption_emb = caption_embeddings(model, [captions[n] for n in names]) if cfg.soft_weight else None
    objective = MappingObjective(model, cfg)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)

    def batches(generator):
        order = torch.randperm(len(names), generator=generator).tolist()
        return [order[i:i + cfg.batch_size] for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size)]

    def inputs(batch, epoch):
        feats = store[[names[i] for i in batch]].to(device)
        return (feats,) if caption_emb is None else (feats, caption_emb[batch].to(device))

    return fit(objective, optimizer, Schedule(cfg.epochs, cfg.lr, "step"), batches, inputs, seed=seed, device=device,
               amp=False, log=log, log_every=200, desc="zero-shot stage I", progress=progress)


# ----------------------------------------------------------------------------- Stage II

def budget_queries(n_queries: int, budget: float, seed: int) -> list[int]:
    """A seeded subset of round(budget * n) training queries (at least 1), sorted."""
    if not 0 < budget <= 1:
        raise CirtutorError(f"zeroshot.budget={budget}; expected a share of the training triplets in (0, 1]")
    n = max(1, round(budget * n_queries))
    return sorted(torch.randperm(n_queries, generator=torch.Generator().manual_seed(seed))[:n].tolist())


@torch.no_grad()
def query_embeddings(model: ZeroShotEncoder, dataset, store: FeatureStore, indices, batch_size: int = 64,
                     device="cpu") -> torch.Tensor:
    """Eval-mode zero-shot query embeddings (N, e) of `dataset`'s queries `indices`."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        feats = store[[dataset.queries[i]["reference"] for i in idx]].to(device)
        out.append(model.query_embed([dataset.query_text(i) for i in idx], feats).cpu())
    return torch.cat(out)


@torch.no_grad()
def mine_hard_negatives(model: ZeroShotEncoder, dataset, store: FeatureStore, indices: list[int], h: int,
                        device="cpu") -> list[list[str]]:
    """For each query of `indices`: the `h` gallery images the model ranks highest, target excluded."""
    if h == 0:
        return [[] for _ in indices]
    ranked = rank_with_filter(model, dataset, store, dataset.gallery, indices=indices, remove_reference=False,
                              top_k=h + 1, device=device,
                              query_emb=query_embeddings(model, dataset, store, indices, device=device))
    return [[n for n in row if n != dataset.queries[i]["target"]][:h] for row, i in zip(ranked, indices)]


class ComposingObjective(nn.Module):
    """Stage II's loss (the module docstring's L_comp)."""

    def __init__(self, model: ZeroShotEncoder):
        super().__init__()
        self.model = model

    def forward(self, ids, mask, ref_feats, cand_feats, labels) -> torch.Tensor:
        q = self.model.prompt_embed(ids, mask, ref_feats)                                # (B, e)
        c = self.model.gallery_embed(cand_feats)                                        # (C, e), frozen
        return F.cross_entropy(self.model.logits(q, c), labels)


def train_composing(model: ZeroShotEncoder, dataset, store: FeatureStore, cfg: ZeroShotConfig, *, seed: int = 0,
                    device="cpu", log=print, progress=None):
    """Stage II: freeze Stage I, add the adapters, train them on `cfg.budget` of the triplets
    with mined hard negatives. Returns (history, the queries used)."""
    model.to(device)
    dataset.set_epoch(0)                         # Fashion-IQ: mine with the first epoch's texts, whatever ran before
    used = budget_queries(len(dataset.queries), cfg.budget, seed)
    negatives = dict(zip(used, mine_hard_negatives(model, dataset, store, used, cfg.hard_negatives, device)))
    model.add_adapters()
    optimizer = make_optimizer(model, cfg.stage2_lr, cfg.weight_decay)
    size = min(cfg.stage2_batch_size, len(used))

    def batches(generator):
        order = [used[i] for i in torch.randperm(len(used), generator=generator).tolist()]
        return [order[i:i + size] for i in range(0, len(order) - size + 1, size)]

    def inputs(batch, epoch):
        dataset.set_epoch(epoch)                 # Fashion-IQ: a caption composition drawn per epoch, as stages 1 and 2
        queries = [dataset.queries[i] for i in batch]
        ids, mask = tokenize_text_only(prompts([dataset.query_text(i) for i in batch], cfg.query_template, cfg.k), device)
        columns = list(dict.fromkeys([q["target"] for q in queries] + [n for i in batch for n in negatives[i]]))
        labels = torch.tensor([columns.index(q["target"]) for q in queries], device=device)
        return (ids, mask, store[[q["reference"] for q in queries]].to(device), store[columns].to(device), labels)

    history = fit(ComposingObjective(model), optimizer, Schedule(cfg.stage2_epochs, cfg.stage2_lr, "step"), batches,
                  inputs, seed=seed, device=device, amp=False, log=log, log_every=50, desc="zero-shot stage II",
                  progress=progress)
    return history, used


# ----------------------------------------------------------------------------- evaluation and runs

def evaluate_zeroshot(model: ZeroShotEncoder, dataset, store: FeatureStore, device="cpu") -> dict:
    """The filter's metrics (`evaluate_filter`: galleries and rules of docs/data_formats.md, 'Galleries', and docs/metrics.md) for
    zero-shot query embeddings."""
    return evaluate_filter(model, dataset, store, device=device,
                           embed=lambda idx: query_embeddings(model, dataset, store, list(idx), device=device))


@torch.no_grad()
def training_free_baselines(model: ZeroShotEncoder, dataset, store: FeatureStore, device="cpu") -> dict[str, dict]:
    """The usual reference rows of zero-shot CIR (as in Pic2Word's tables), with the frozen
    backbone alone: "image only" (the reference's ITC embedding as the query), "text only" (the
    modification text's) and "image + text" (their normalised sum)."""
    model.eval()
    image = model.gallery_embed(store[[q["reference"] for q in dataset.queries]].to(device)).cpu()   # (N, e)
    text = caption_embeddings(model, [dataset.query_text(i) for i in range(len(dataset.queries))])   # (N, e)
    queries = {"image only": image, "text only": text, "image + text": F.normalize(image + text, dim=-1)}
    return {name: evaluate_filter(model, dataset, store, device=device, embed=lambda idx, q=q: q[list(idx)])
            for name, q in queries.items()}


# ----------------------------------------------------------------------------- looking inside (notebook 09)

@torch.no_grad()
def nearest_words(model: ZeroShotEncoder, words: torch.Tensor, vocabulary: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """For each pseudo word (N, d): the k words of `vocabulary` whose (single WordPiece) word
    embeddings are closest by cosine, as (word, cosine). Where in the word space phi's output lands."""
    tok = blip_tokenizer()
    pieces = {w: tok.convert_tokens_to_ids(w) for w in dict.fromkeys(vocabulary) if tok.tokenize(w) == [w]}
    table = model.text_encoder.embeddings.word_embeddings.weight[list(pieces.values())]     # (V, d)
    cos = F.normalize(words.reshape(-1, words.shape[-1]).to(table), dim=-1) @ F.normalize(table, dim=-1).t()
    best = cos.topk(min(k, len(pieces)), dim=1)
    names = list(pieces)
    return [[(names[j], round(v, 3)) for v, j in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(*best)]


@torch.no_grad()
def image_prompt_recall(model: ZeroShotEncoder, store: FeatureStore, names: list[str], batch_size: int = 256,
                        device="cpu") -> float:
    """Stage I's own task on unseen images: the share (%) of `names` whose prompt "a photo of $"
    ranks its own image first among all of `names`."""
    model.eval()
    feats = [store[names[i:i + batch_size]].to(device) for i in range(0, len(names), batch_size)]
    q = torch.cat([model.image_prompt_embed(f) for f in feats])                               # (N, e)
    v = torch.cat([model.gallery_embed(f) for f in feats])                                    # (N, e)
    hits = (q @ v.t()).argmax(dim=1).cpu() == torch.arange(len(names))
    return 100.0 * hits.float().mean().item()


@torch.no_grad()
def query_alignment(model: ZeroShotEncoder, dataset, store: FeatureStore, device="cpu", indices=None) -> dict[str, float]:
    """Where the composed queries point (`dataset`'s queries `indices`, default all): the mean cosine of each
    query to its reference image and to its target, and the share (%) of queries closer to the
    target than to the reference. Composing means moving from the first to the second."""
    indices = list(range(len(dataset.queries))) if indices is None else list(indices)
    q = query_embeddings(model, dataset, store, indices, device=device)                       # (N, e)
    queries = [dataset.queries[i] for i in indices]
    ref = model.gallery_embed(store[[x["reference"] for x in queries]].to(device)).cpu()
    tgt = model.gallery_embed(store[[x["target"] for x in queries]].to(device)).cpu()
    to_ref, to_tgt = (q * ref).sum(1), (q * tgt).sum(1)
    return {"cos(q, reference)": to_ref.mean().item(), "cos(q, target)": to_tgt.mean().item(),
            "closer to target (%)": 100.0 * (to_tgt > to_ref).float().mean().item()}


def describe(cfg: ZeroShotConfig) -> str:
    """One line naming the variant: what is on besides the Pic2Word baseline."""
    parts = ["phi (Pic2Word)" if cfg.mapper == "mlp" else f"token learner k={cfg.k}"]
    if cfg.inject_layers:
        parts.append(f"injection (top {cfg.inject_layers})")
    if cfg.soft_weight:
        parts.append(f"soft alignment (w={cfg.soft_weight:g})")
    if cfg.budget:
        parts.append(f"Stage II ({cfg.budget:.0%} of triplets)")
    return " + ".join(parts)

