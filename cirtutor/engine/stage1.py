"""Training and running the candidate filter (paper §3.1 and §4.2; docs/authors_code.md, 'Training recipe'; docs/metrics.md, 'Ranking the gallery').

One optimisation step: look up the reference and target image tokens (frozen ViT, cached),
encode the queries with the multimodal text encoder, embed the targets with the frozen
`vision_proj`, and minimise Eq. 1 over the batch. AdamW at the paper's settings; the cosine
learning rate is set once per epoch as the authors do (or per step, a tiny-mode option).
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterator

import numpy as np
import torch

from cirtutor.config import Stage1Config
from cirtutor.data.base import check_targets
from cirtutor.engine.features import FeatureStore
from cirtutor.engine.loop import History, Schedule, distribute, fit
from cirtutor.engine.optim import make_optimizer
from cirtutor.errors import CirtutorError
from cirtutor.evaluation import TopK, rank_gallery, subset_ranking, summary
from cirtutor.models import CandidateFilter, tokenize
from cirtutor.models.backbones import text_states
from cirtutor.models.cala import CaLa
from cirtutor.models.tokenizer import cls_token_id


def batch_order(queries: list[dict], batch_size: int, composition: str, generator: torch.Generator) -> Iterator[list[int]]:
    """Query indices per batch for one epoch (drop_last, as the authors' loader).

    "random": a shuffle of all queries (the paper). "reference_groups": whole groups of
    queries that share a reference, in shuffled group order, so a batch's other targets are
    that reference's other edits — the hard negatives of a CIRR img_set (a tiny-mode option)."""
    if composition == "random":
        order = torch.randperm(len(queries), generator=generator).tolist()
    elif composition == "reference_groups":
        groups: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            groups.setdefault(q["reference"], []).append(i)
        groups_list = list(groups.values())
        order = [i for g in torch.randperm(len(groups_list), generator=generator).tolist() for i in groups_list[g]]
    else:
        raise ValueError(f"stage1.batch_composition={composition!r}; expected 'random' or 'reference_groups'")
    for start in range(0, len(order) - batch_size + 1, batch_size):
        yield order[start:start + batch_size]


class FilterObjective(torch.nn.Module):
    """Eq. 1 as a module, so the loop (and DDP) can call it: one batch's tensors -> loss."""

    def __init__(self, model: CandidateFilter):
        super().__init__()
        self.model = model

    def forward(self, ids, mask, ref_feats, target_feats) -> torch.Tensor:
        """ids, mask (B, L_w); reference and target image tokens (B, L_v, d_v) -> scalar loss."""
        query_emb, _ = self.model(ids, mask, ref_feats)                   # (B, e)
        target_emb = self.model.gallery_embed(target_feats)               # (B, e), frozen vision_proj
        return self.model.loss(query_emb.float(), target_emb.float())

    def logits(self, ids, mask, ref_feats, target_feats) -> dict[str, torch.Tensor]:
        """One batch's logits {"S_f": (B, B)}, as `CalaObjective.logits` names them."""
        query_emb, _ = self.model(ids, mask, ref_feats)
        return {"S_f": self.model.logits(query_emb.float(), self.model.gallery_embed(target_feats).float())}


class CalaObjective(torch.nn.Module):
    """Eq. 1 plus CaLa's training-only associations (docs/extensions.md, 'The CaLa loss as coded', 'CaLa on a BLIP filter'): the filter's
    logits S_f, the composed query's states H_mm (the filter's own multimodal pass, z_t), the
    caption's states H_txt (a text-only pass of the same text encoder, [CLS] at position 0) and
    the images' ViT tokens feed `CaLa.loss`. The filter itself is unchanged."""

    def __init__(self, model: CandidateFilter, cala: CaLa):
        super().__init__()
        self.model, self.cala = model, cala

    def states(self, ids, mask, ref_feats, target_feats):
        """What the loss reads: S_f (B, B), H_mm (B, L_w, d), H_txt (B, L_w, d) or None when CaLa
        is inactive, and the reference and target image tokens (B, L_v, d_v), all float32."""
        query_emb, H_mm = self.model(ids, mask, ref_feats)                  # (B, e), (B, L_w, d)
        target_emb = self.model.gallery_embed(target_feats)               # (B, e), frozen vision_proj
        S_f = self.model.logits(query_emb.float(), target_emb.float())    # (B, B)
        H_txt = None
        if self.cala.active:                                              # both weights 0: the plain filter, exactly
            text_ids = ids.clone()
            text_ids[:, 0] = cls_token_id()                               # unimodal mode: [CLS], no image
            H_txt = text_states(self.model.text_encoder, text_ids, mask).float()  # (B, L_w, d)
        return S_f, H_mm.float(), H_txt, ref_feats.float(), target_feats.float()

    def forward(self, ids, mask, ref_feats, target_feats) -> torch.Tensor:
        return self.cala.loss(*self.states(ids, mask, ref_feats, target_feats), mask)

    def logits(self, ids, mask, ref_feats, target_feats) -> dict[str, torch.Tensor]:
        """One batch's logit matrices, by name (`CaLa.logits`): for looking inside the loss."""
        S_f, H_mm, H_txt, V_ref, V_tgt = self.states(ids, mask, ref_feats, target_feats)
        if H_txt is None:
            raise ValueError("CaLa is inactive (w_c = w_t = 0): its logits are never computed")
        return self.cala.logits(S_f, H_mm, H_txt, V_ref, V_tgt, mask)


def stage1_objective(model: CandidateFilter, cfg: Stage1Config, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The objective for `cfg.aux` and its optimiser (CaLa's modules, initialised from `seed`
    whatever the caller's random state, at lr x cala.lr_mult)."""
    if cfg.aux == "none":
        return FilterObjective(model), make_optimizer(model, cfg.lr, cfg.weight_decay)
    if cfg.aux != "cala":
        raise ValueError(f"stage1.aux={cfg.aux!r}; expected 'none' or 'cala'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cala = CaLa(model.cfg.text_width, model.cfg.vision_width, cfg.cala).to(model.temp.device)
    objective = CalaObjective(model, cala)
    return objective, make_optimizer(objective, cfg.lr, cfg.weight_decay, boosted=lambda n: n.startswith("cala."),
                                     boost=cfg.cala.lr_mult)


def stage1_inputs(train_set, store: FeatureStore, device):
    """`inputs(batch, epoch)` for the loop: tokens and cached image tokens of a batch of queries."""
    def inputs(batch, epoch):
        train_set.set_epoch(epoch)                                         # Fashion-IQ: caption composition per epoch
        ids, mask = tokenize([train_set.query_text(i) for i in batch], device)
        queries = [train_set.queries[i] for i in batch]
        ref_feats = store[[q["reference"] for q in queries]].to(device)     # (B, L_v, d_v)
        target_feats = store[[q["target"] for q in queries]].to(device)    # (B, L_v, d_v)
        return ids, mask, ref_feats, target_feats
    return inputs


def first_batches(dataset, store: FeatureStore, batch_size: int, composition: str, n_batches: int, seed: int = 0,
                  device="cpu") -> Iterator[tuple[list[int], tuple]]:
    """The first `n_batches` training batches `batch_order` makes with `composition` (generator
    seeded by `seed`), each as (query indices, the loop's input tensors); an error up front when
    the split has fewer. For looking at batches as training sees them (notebooks 02 and 08)."""
    order = list(itertools.islice(batch_order(dataset.queries, batch_size, composition,
                                              torch.Generator().manual_seed(seed)), n_batches))
    if len(order) < n_batches:
        raise CirtutorError(f"only {len(order)} batches of {batch_size} in {len(dataset.queries)} queries; "
                            f"asked for {n_batches}")
    inputs = stage1_inputs(dataset, store, device)
    return ((batch, inputs(batch, 0)) for batch in order)


def train_stage1(model: CandidateFilter, train_set, store: FeatureStore, cfg: Stage1Config, *, seed: int = 0,
                 device: str | torch.device = "cpu", log: Callable[[str], None] = print, log_every: int = 50,
                 on_epoch_end: Callable[[int], dict | None] | None = None, checkpoint=None, resume: bool = False,
                 meta: dict | None = None, stop_after: int | None = None, progress: bool | None = None) -> History:
    """Train `model` on a queries-mode dataset (Fashion-IQ or CIRR) with the shared loop
    (`cirtutor.engine.loop.fit`): checkpoints every `cfg.checkpoint_every` steps and at each
    epoch's end to `checkpoint`, exact `resume`, DDP under torchrun. Returns the history."""
    if cfg.init_temp is not None and not resume:
        with torch.no_grad():
            model.temp.fill_(cfg.init_temp)
    model.to(device)
    objective, optimizer = stage1_objective(model, cfg, seed)
    objective = distribute(objective, device)
    batches = lambda gen: batch_order(train_set.queries, cfg.batch_size, cfg.batch_composition, gen)
    return fit(objective, optimizer, Schedule(cfg.epochs, cfg.lr, cfg.schedule, cfg.horizon), batches,
               stage1_inputs(train_set, store, device), seed=seed, device=device, amp=cfg.amp,
               cpu_bf16=cfg.cpu_bf16, grad_accum=cfg.grad_accum, checkpoint=checkpoint,
               checkpoint_every=cfg.checkpoint_every, resume=resume, meta=meta, on_epoch_end=on_epoch_end, log=log,
               log_every=log_every, desc="stage 1", progress=progress, stop_after=stop_after)


@torch.no_grad()
def encode_queries(model: CandidateFilter, dataset, store: FeatureStore, indices=None, batch_size: int = 32,
                   device: str | torch.device = "cpu",
                   texts: list[str] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eval-mode query embeddings (N, e) and each query's z_t, unpadded (L_i, d), for a
    queries-mode dataset (or its `indices`), in order; texts padded per batch of 32 as the
    authors do (docs/metrics.md, 'Ranking the gallery'). Padding never changes the unpadded positions (it is masked).
    `texts` (one per index) replaces the queries' own texts."""
    model.eval()
    indices = list(range(len(dataset.queries)) if indices is None else indices)
    texts = [dataset.query_text(i) for i in indices] if texts is None else list(texts)
    embs, z_ts = [], []
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        ids, mask = tokenize(texts[start:start + batch_size], device)
        ref_feats = store[[dataset.queries[i]["reference"] for i in idx]].to(device)
        query_emb, z_t = model(ids, mask, ref_feats)
        embs.append(query_emb.cpu())
        z_ts += [z[: int(m.sum())].cpu() for z, m in zip(z_t, mask)]
    return torch.cat(embs), z_ts


def embed_queries(model: CandidateFilter, dataset, store: FeatureStore, indices=None, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Query embeddings (N, e) only (see `encode_queries`)."""
    return encode_queries(model, dataset, store, indices, batch_size, device)[0]


@torch.no_grad()
def rank_with_filter(model: CandidateFilter, dataset, store: FeatureStore, gallery: list[str], *,
                     indices=None, remove_reference: bool, top_k: int | None = None, device="cpu",
                     query_emb: torch.Tensor | None = None) -> np.ndarray:
    """Stage-1 ranking of `gallery` for the queries `indices` (default all): (N, K) names, best
    first (docs/metrics.md, 'Ranking the gallery'). CIRR removes each query's reference from its list; Fashion-IQ keeps it.
    Pass `query_emb` when the queries are already encoded."""
    indices = range(len(dataset.queries)) if indices is None else indices
    feats = store[gallery]
    gallery_emb = torch.cat([model.gallery_embed(feats[i:i + 256].to(device)).cpu() for i in range(0, len(feats), 256)])
    if query_emb is None:
        query_emb = embed_queries(model, dataset, store, indices, device=device)
    refs = [dataset.queries[i]["reference"] for i in indices]
    return rank_gallery(query_emb, gallery_emb, gallery, refs, remove_reference=remove_reference, top_k=top_k)


# The filter's own numbers reach R@50 (paper Tables 1-2): its lists must be at least this long to give them.
FILTER_LIST = 50


@torch.no_grad()
def filter_topk(model: CandidateFilter, dataset, store: FeatureStore, k: int = 200, device="cpu",
                embed=None) -> list[TopK]:
    """Stage 1's output and stage 2's input (paper §3.1; docs/data_formats.md, 'Top-K files'): for each
    retrieval group of `dataset` (`dataset.retrieval_groups()`), every query's `k` best gallery names (the
    whole list when it is shorter), its target where the split has them and, on CIRR, its 5 subset members
    in the filter's order (ranked on the whole gallery). `embed(indices)` -> (N, e) replaces the filter's
    query embeddings (the zero-shot models)."""
    lists = []
    for g in dataset.retrieval_groups():
        ranked = rank_with_filter(model, dataset, store, g.gallery, indices=g.indices, device=device,
                                  remove_reference=g.remove_reference, top_k=None if g.subsets else min(k, g.list_length),
                                  query_emb=embed(g.indices) if embed else None)         # (N_g, K) names
        queries = [dataset.queries[i] for i in g.indices]
        subsets = subset_ranking(ranked, [q["subset"] for q in queries]) if g.subsets else None   # (N_g, 5)
        targets = [q["target"] for q in queries] if all("target" in q for q in queries) else None
        lists.append(TopK(ranked[:, :k], g.gallery, dataset.split, targets, category=g.category,
                          subset_names=subsets))
    return lists


def evaluate_filter(model: CandidateFilter, dataset, store: FeatureStore, device="cpu", embed=None) -> dict:
    """The paper's stage-1 numbers for a validation split, from the filter's own top-50 lists (`filter_topk`):
    CIRR R@1/5/10/50 + Rs@1/2/3 over the split's gallery minus the reference, or Fashion-IQ R@10/R@50 per
    category, each category ranking its own gallery with the reference kept (docs/data_formats.md, 'Galleries';
    docs/metrics.md, 'Averages'). `embed(indices)` -> (N, e) replaces the filter's query embeddings (the
    zero-shot models); `model.gallery_embed` embeds the gallery either way."""
    check_targets(dataset)
    lists = filter_topk(model, dataset, store, FILTER_LIST, device, embed)
    return summary({t.category: t.labels for t in lists}, lists[0].group_labels)
