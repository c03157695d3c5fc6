"""Training and running the dual-encoder re-ranker (paper §3.2, §4.2, Eq. 2; docs/authors_code.md, 'B×B training logits'; docs/metrics.md, 'Re-ranked evaluation').

Training: for a batch of B queries, score every query against every batch target in one
forward (B x B logits) and take the cross-entropy against the diagonal. z_t, the filter's
output sequence, is computed once per query (once per text: Fashion-IQ draws one of four per
epoch, `TrainingZt`) with the trained filter in eval mode and cached (the paper notes it can be
pre-computed; the authors recompute it every step with dropout on — a documented deviation). Image tokens come from the frozen-ViT feature store.

Evaluation: the filter's top-K list of every query is re-ordered by the re-ranker's scores;
one scoring pass over the largest K serves every smaller K. CIRR's subset metric scores the
5 subset members directly (docs/metrics.md, 'Re-ranked evaluation').
"""
from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch

from cirtutor.config import Stage2Config
from cirtutor.data.base import check_targets
from cirtutor.engine.features import FeatureStore
from cirtutor.engine.loop import History, distribute, fit, Schedule
from cirtutor.engine.optim import make_optimizer
from cirtutor.errors import CirtutorError
from cirtutor.engine.stage1 import batch_order as stage1_batch_order
from cirtutor.engine.stage1 import FILTER_LIST, encode_queries, rank_with_filter
from cirtutor.evaluation import (TopK, check_lists, labels_from_ranking, rank_decrease, rerank_labels_for_ks,
                                 subset_ranking_by_scores, summary)
from cirtutor.evaluation.metrics import recall_at_k
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize
from cirtutor.models.backbones import add_drop_path, stochastic_image_tokens


def pad_z_t(z_ts: list[torch.Tensor]) -> torch.Tensor:
    """Unpadded (L_i, d) sequences -> (B, L_w, d), zero-padded (padded positions are masked)."""
    return torch.nn.utils.rnn.pad_sequence(z_ts, batch_first=True)


class TrainingZt:
    """The cached z_t of the training queries, one per text a query can read in training (paper §3.2: z_t can
    be computed once per query): CIRR's one caption, or each of the four compositions of a Fashion-IQ
    triplet's two captions, one drawn per epoch (docs/data_formats.md, 'Fashion-IQ modification texts').
    Computed once, with the filter in eval mode, in batches of 32 in dataset order, so that a resumed run
    reads the same tensors. `z_ts[i, text]` -> (L, d)."""

    def __init__(self, filter_model: CandidateFilter, dataset, store: FeatureStore, device="cpu"):
        texts = [dataset.training_texts(i) for i in range(len(dataset.queries))]
        self.z_t: dict[tuple[int, str], torch.Tensor] = {}
        for j in range(max(map(len, texts), default=0)):           # the j-th text of every query that has one
            idx = [i for i, t in enumerate(texts) if len(t) > j]
            z_ts = encode_queries(filter_model, dataset, store, idx, device=device, texts=[texts[i][j] for i in idx])[1]
            self.z_t.update({(i, texts[i][j]): z for i, z in zip(idx, z_ts)})

    def __getitem__(self, key: tuple[int, str]) -> torch.Tensor:
        return self.z_t[key]


def varying_texts(dataset) -> bool:
    """Whether some query of `dataset` can read more than one text in training (Fashion-IQ's compositions)."""
    return any(len(dataset.training_texts(i)) > 1 for i in range(len(dataset.queries)))


def query_inputs(dataset, indices, z_ts: list[torch.Tensor] | TrainingZt,
                 device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens, mask and padded z_t of the queries `indices` (same padding length for both, docs/data_formats.md,
    'Tokenisation'). `z_ts`: one z_t per query (`encode_queries`, for a split whose texts are fixed) or the
    training queries' `TrainingZt`, looked up by the text each query reads now."""
    texts = [dataset.query_text(i) for i in indices]
    ids, mask = tokenize(texts, device)
    by_text = isinstance(z_ts, TrainingZt)
    z_t = pad_z_t([z_ts[i, t] if by_text else z_ts[i] for i, t in zip(indices, texts)]).to(device)
    if z_t.shape[1] != ids.shape[1]:
        raise ValueError("z_t and the tokens disagree in length: was z_t computed for the same texts?")
    return ids, mask, z_t


# ----------------------------------------------------------------------------- batches

def train_ranking(filter_model: CandidateFilter, train_set, store: FeatureStore, top_k: int, device="cpu") -> np.ndarray:
    """Every training query's filter top-`top_k` on the training gallery (names (N, K); the reference
    removed where the dataset's protocol removes it, as at evaluation)."""
    drop = train_set.remove_reference
    return rank_with_filter(filter_model, train_set, store, train_set.gallery, remove_reference=drop,
                            top_k=min(top_k, len(train_set.gallery) - drop), device=device)


def hard_pools(filter_model: CandidateFilter, train_set, store: FeatureStore, pool: int, device="cpu") -> list[list[int]]:
    """For every training query, the queries whose targets lie in its filter top-`pool` on the
    training gallery: the negatives the re-ranker will meet in a top-K list."""
    ranked = train_ranking(filter_model, train_set, store, pool, device)
    by_target: dict[str, list[int]] = {}
    for i, q in enumerate(train_set.queries):
        by_target.setdefault(q["target"], []).append(i)
    return [[j for name in row for j in by_target.get(name, [])] for row in ranked]


def filter_negatives(filter_model: CandidateFilter, train_set, store: FeatureStore, pool: int,
                     device="cpu") -> list[list[str]]:
    """For every training query, its filter top-`pool` on the training gallery without its
    target: the candidates stage 2 must learn to rank below the target (negatives="filter_topk")."""
    ranked = train_ranking(filter_model, train_set, store, pool + 1, device)
    return [[n for n in row if n != q["target"]][:pool] for row, q in zip(ranked, train_set.queries)]


def sample_negatives(candidates: list[str], n: int, seed: int, epoch: int, query: int) -> list[str]:
    """`n` distinct names from `candidates`, the same for a given (seed, epoch, query) whatever the
    batch order (so a resumed run draws what an uninterrupted one does); with replacement if too few."""
    rng = random.Random(f"{seed}/{epoch}/{query}")
    if not candidates:
        raise ValueError(f"training query {query} has no filter candidates to draw negatives from")
    return rng.sample(candidates, n) if len(candidates) >= n else rng.choices(candidates, k=n)


def batch_order(queries: list[dict], batch_size: int, composition: str, generator: torch.Generator,
                pools: list[list[int]] | None = None) -> Iterator[list[int]]:
    """Query indices per batch, N // B batches per epoch, no target twice in a batch.

    "random": a shuffle (the paper). "hard" (tiny-mode option): each batch is a seed query,
    the other queries on its reference, then queries from the seed's filter pool, topped up
    at random — still the paper's B x B loss, with negatives that look like a top-K list."""
    n = len(queries)
    if composition == "random":
        yield from stage1_batch_order(queries, batch_size, "random", generator)
        return
    if composition != "hard" or pools is None:
        raise ValueError(f"stage2.batch_composition={composition!r}: expected 'random', or 'hard' with filter pools")
    by_reference: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_reference.setdefault(q["reference"], []).append(i)
    seeds = torch.randperm(n, generator=generator)[: n // batch_size].tolist()
    for seed in seeds:
        pool = [j for j in pools[seed] if j not in by_reference[queries[seed]["reference"]]]
        pool = [pool[k] for k in torch.randperm(len(pool), generator=generator).tolist()]
        fill = torch.randperm(n, generator=generator).tolist()
        batch, targets = [], set()
        for j in [seed, *by_reference[queries[seed]["reference"]], *pool, *fill]:
            if len(batch) == batch_size:
                break
            if j not in batch and queries[j]["target"] not in targets:
                batch.append(j)
                targets.add(queries[j]["target"])
        yield batch


# ----------------------------------------------------------------------------- training

def is_new_part(name: str) -> bool:
    """The re-ranker's parts that BLIP does not provide: merge layers and the score head."""
    return "merge_layer" in name or name.startswith("cls_head")


def make_stage2_optimizer(model: DualEncoderReranker, cfg: Stage2Config) -> torch.optim.AdamW:
    """AdamW over the trainable tensors; the new parts at lr x head_lr_mult (1 in the paper)."""
    return make_optimizer(model, cfg.lr, cfg.weight_decay, boosted=is_new_part, boost=cfg.head_lr_mult)


class BxBObjective(torch.nn.Module):
    """Eq. 2 as a module, so the loop (and DDP) can call it: one batch's tensors -> loss."""

    def __init__(self, model: DualEncoderReranker, share_kv: bool = True):
        super().__init__()
        self.model, self.share_kv = model, share_kv

    def forward(self, ids, mask, z_t, targets, refs=None, extra=None) -> torch.Tensor:
        """ids, mask (B, L_w), z_t (B, L_w, d), the batch's target tokens (B, L_v, d_v) -> Eq. 2's
        B x B logits -> scalar loss. `extra` (B, n, L_v, d_v) (negatives="filter_topk"): each
        query's own n filter candidates, appended to its row as n more negatives: (B, B + n)."""
        logits = self.model.bxb_logits(ids, mask, z_t, targets, refs, share_kv=self.share_kv)  # (B, B)
        if extra is not None:
            logits = torch.cat([logits, self.model.score_candidates(ids, mask, z_t, extra, refs)], dim=1)  # (B, B + n)
        return self.model.loss(logits.float())


def stage2_inputs(model: DualEncoderReranker, train_set, store: FeatureStore, z_ts, device,
                  filter_model: CandidateFilter | None = None, stochastic_vit: bool = False,
                  negatives: list[list[str]] | None = None, num_negatives: int = 0, seed: int = 0):
    """`inputs(batch, epoch)` for the loop. With `filter_model`, z_t is recomputed for every
    batch with the filter in train mode (dropout on, no gradient), as the authors' script
    does (docs/authors_code.md, 'Dropout in z_t'); otherwise it is read from the cache `z_ts`. With
    `stochastic_vit`, reference and target tokens come from the re-ranker's ViT in train mode
    (drop-path on) on the images, every step (docs/authors_code.md, 'Drop-path on the stage-2 image tokens'); otherwise from `store`.
    With `negatives` (per-query candidate names), each query also gets `num_negatives` of its
    own candidates as extra negatives (B, n, L_v, d_v)."""
    def image_feats(names):                                                  # (B, L_v, d_v)
        if not stochastic_vit:
            return store[names].to(device)
        images = torch.stack([train_set.load(n) for n in names]).to(device)
        return stochastic_image_tokens(model.visual_encoder, images)

    def inputs(batch, epoch):
        train_set.set_epoch(epoch)
        queries = [train_set.queries[i] for i in batch]
        targets = image_feats([q["target"] for q in queries])                    # (B, L_v, d_v)
        extra = None
        if negatives is not None:
            names = [n for i in batch for n in sample_negatives(negatives[i], num_negatives, seed, epoch, i)]
            extra = image_feats(names).unflatten(0, (len(batch), -1))             # (B, n, L_v, d_v)
        need_refs = model.cfg.zt_input != "z_t" or filter_model is not None
        refs = image_feats([q["reference"] for q in queries]) if need_refs else None
        if filter_model is None:
            ids, mask, z_t = query_inputs(train_set, batch, z_ts, device)    # z_t of each query's text this epoch
        else:
            ids, mask = tokenize([train_set.query_text(i) for i in batch], device)
            was_training = filter_model.training
            with torch.no_grad():
                z_t = filter_model.train()(ids, mask, refs)[1]               # (B, L_w, d), dropout on
            filter_model.train(was_training)
        return ids, mask, z_t, targets, refs if model.cfg.zt_input != "z_t" else None, extra
    return inputs


def train_stage2(model: DualEncoderReranker, train_set, z_ts: TrainingZt | list[torch.Tensor] | None,
                 store: FeatureStore, cfg: Stage2Config, *, pools=None, negatives: list[list[str]] | None = None,
                 seed: int = 0, device="cpu", filter_model: CandidateFilter | None = None,
                 log: Callable[[str], None] = print, log_every: int = 50,
                 on_epoch_end: Callable[[int], dict | None] | None = None, checkpoint=None, resume: bool = False,
                 meta: dict | None = None, stop_after: int | None = None, progress: bool | None = None) -> History:
    """Train the re-ranker on a queries-mode dataset with the shared loop (checkpoints, exact
    resume, DDP). z_t comes from the cache `z_ts` (cfg.z_t="cached": a `TrainingZt`, a z_t for every text a
    query reads in training, or one per query where each query has one text), or is recomputed every step by
    `filter_model` in train mode (cfg.z_t="recompute"). cfg.negatives="filter_topk" needs `negatives` (from
    `filter_negatives`); "hard" batches need `pools` (`hard_pools`). Returns the history."""
    if cfg.z_t == "recompute" and filter_model is None:
        raise ValueError("stage2.z_t='recompute' needs the trained filter (filter_model)")
    if cfg.z_t not in ("cached", "recompute"):
        raise ValueError(f"stage2.z_t={cfg.z_t!r}; expected 'cached' or 'recompute'")
    if cfg.z_t == "cached" and not isinstance(z_ts, TrainingZt) and varying_texts(train_set):
        raise ValueError("this training set draws a new text per query each epoch: cache z_t with "
                         "TrainingZt(filter, train_set, store), one per text, not one per query")
    if not 0 <= cfg.drop_path < 1:
        raise ValueError(f"stage2.drop_path={cfg.drop_path}; expected a rate in [0, 1)")
    if cfg.negatives not in ("in_batch", "filter_topk"):
        raise ValueError(f"stage2.negatives={cfg.negatives!r}; expected 'in_batch' or 'filter_topk'")
    if cfg.negatives == "filter_topk" and (negatives is None or cfg.num_negatives < 1):
        raise ValueError("stage2.negatives='filter_topk' needs per-query filter candidates and num_negatives >= 1")
    model.to(device)
    model.text_encoder.checkpointing = cfg.checkpointing
    objective = distribute(BxBObjective(model, cfg.share_kv), device)
    optimizer = make_stage2_optimizer(model, cfg)
    batches = lambda gen: list(batch_order(train_set.queries, cfg.batch_size, cfg.batch_composition, gen, pools))
    inputs = stage2_inputs(model, train_set, store, z_ts, device, filter_model if cfg.z_t == "recompute" else None,
                           stochastic_vit=cfg.drop_path > 0,
                           negatives=negatives if cfg.negatives == "filter_topk" else None,
                           num_negatives=cfg.num_negatives, seed=seed)
    hooks = add_drop_path(model.visual_encoder, cfg.drop_path) if cfg.drop_path > 0 else []
    try:
        return fit(objective, optimizer, Schedule(cfg.epochs, cfg.lr, cfg.schedule, cfg.horizon), batches, inputs,
                   seed=seed, device=device, amp=cfg.amp, cpu_bf16=cfg.cpu_bf16, grad_accum=cfg.grad_accum,
                   checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every, resume=resume, meta=meta,
                   on_epoch_end=on_epoch_end, log=log, log_every=log_every, desc="stage 2", progress=progress,
                   stop_after=stop_after)
    finally:
        for h in hooks:
            h.remove()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def score_lists(model: DualEncoderReranker, dataset, z_ts, store: FeatureStore, candidates: np.ndarray,
                batch_size: int = 8, device="cpu", indices=None, share_kv: bool = True, pair_batch: int = 256,
                kv_budget_mb: float = 4096, bf16: bool = False) -> np.ndarray:
    """Re-ranker scores (N, K) of the queries `indices` (default 0..N-1) against their K
    candidate names (N, K), eval mode, fp32.

    `share_kv` (default, the fast path): every (query, candidate) pair of the split is grouped
    by candidate; each candidate's cross-attention keys and values are computed once and
    reused by every query that ranks it (`score_by_candidate`). Exact: the same scores as
    one forward of K pairs per query (False; `batch_size` queries per forward).

    `bf16`: bf16 autocast (GPUs' fast path; scores then differ from fp32 by ~1e-2, so off by default)."""
    model.eval()
    indices = list(range(len(candidates)) if indices is None else indices)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        if share_kv and len(indices):
            return score_by_candidate(model, dataset, z_ts, store, np.asarray(candidates), indices, device,
                                      pair_batch, kv_budget_mb)
        return score_per_query(model, dataset, z_ts, store, candidates, indices, batch_size, device)


def score_per_query(model: DualEncoderReranker, dataset, z_ts, store: FeatureStore, candidates: np.ndarray,
                    indices: list[int], batch_size: int = 8, device="cpu") -> np.ndarray:
    """The authors' way of `score_lists`: one forward of `batch_size` queries x their K candidates."""
    out = []
    for start in range(0, len(indices), batch_size):
        rows = list(range(start, min(start + batch_size, len(indices))))
        idx = [indices[r] for r in rows]
        ids, mask, z_t = query_inputs(dataset, idx, z_ts, device)
        cands = torch.stack([store[list(candidates[r])] for r in rows]).to(device)  # (b, K, L_v, d_v)
        refs = store[[dataset.queries[i]["reference"] for i in idx]].to(device) if model.cfg.zt_input != "z_t" else None
        out.append(model.score_candidates(ids, mask, z_t, cands, refs).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, candidates.shape[1] if np.ndim(candidates) == 2 else 0))


def kv_bytes_per_candidate(model: DualEncoderReranker, n_tokens: int) -> int:
    """fp32 bytes of one candidate's keys and values over every cross-attention layer and stream."""
    streams = 2 if model.cfg.streams == "both" else 1
    return 4 * 2 * streams * model.cfg.text_layers * n_tokens * model.cfg.text_width


def equal_length_batches(lengths: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Positions of `lengths` in batches of one length each, at most `size` long, shortest first."""
    order = np.argsort(lengths, kind="stable")
    runs = np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1)
    for run in runs:
        yield from (run[s:s + size] for s in range(0, len(run), size))


def score_by_candidate(model: DualEncoderReranker, dataset, z_ts, store: FeatureStore, names: np.ndarray,
                       indices: list[int], device, pair_batch: int = 256, kv_budget_mb: float = 4096) -> np.ndarray:
    """The fast path of `score_lists`: the N x K pairs grouped by candidate.

    The split's distinct candidates are taken in blocks that fit `kv_budget_mb`; for each block,
    `candidate_kv` computes its keys and values once, then every pair whose candidate is in the
    block is scored, pairs of equal text length together (no padding), at most `pair_batch`
    per forward. Exact: a pair's score does not depend on the pairs it is batched with."""
    N, K = names.shape
    uniq, inverse = np.unique(names, return_inverse=True)
    inverse = inverse.reshape(N, K)                                       # (N, K) -> row of `uniq`
    ids_all, mask_all = tokenize([dataset.query_text(i) for i in indices])
    lengths = mask_all.sum(1).numpy()                                     # (N,) real tokens per query
    refs_needed = model.cfg.zt_input != "z_t"
    per_cand = kv_bytes_per_candidate(model, store[[uniq[0]]].shape[1])
    block = max(1, int(kv_budget_mb * 2 ** 20 // per_cand))
    out = np.zeros((N, K), dtype=np.float32)
    for b0 in range(0, len(uniq), block):
        rows, cols = np.nonzero((inverse >= b0) & (inverse < b0 + block))  # the pairs of this block
        kv = model.candidate_kv(store[list(uniq[b0:b0 + block])].to(device))
        by_candidate = np.argsort(inverse[rows, cols], kind="stable")     # within a length, pairs of a candidate together
        rows, cols = rows[by_candidate], cols[by_candidate]
        for batch in equal_length_batches(lengths[rows], pair_batch):
            r, c = rows[batch], cols[batch]
            L = int(lengths[r].max())
            ids, mask = ids_all[r, :L].to(device), mask_all[r, :L].to(device)          # (P, L)
            z_t = pad_z_t([z_ts[indices[i]] for i in r]).to(device)                   # (P, L, d)
            if z_t.shape[1] != L:
                raise ValueError("z_t and the tokens disagree in length: was z_t computed for the same texts?")
            refs = store[[dataset.queries[indices[i]]["reference"] for i in r]].to(device) if refs_needed else None
            index = torch.as_tensor(inverse[r, c] - b0, device=device)              # (P,) row of the block
            out[r, c] = model(ids, mask, z_t, kv, refs, index=index).float().cpu().numpy()
    return out


def check_same_vision(filter_model: CandidateFilter, model: DualEncoderReranker) -> None:
    """One feature store serves both stages (the filter's frozen-ViT image tokens): refuse a re-ranker
    whose frozen ViT is another (e.g. a stage-2 checkpoint trained from other weights)."""
    ours, theirs = filter_model.visual_encoder.state_dict(), model.visual_encoder.state_dict()
    differ = [k for k in ours if k not in theirs or ours[k].shape != theirs[k].shape
              or not torch.equal(ours[k].cpu(), theirs[k].cpu())]
    if differ:
        raise CirtutorError(f"the re-ranker's frozen ViT differs from the filter's ({len(differ)} tensors, e.g. "
                            f"{differ[0]}): the image features, computed with the filter's ViT, would be wrong for "
                            "it; load both stages from the same initial weights")


def evaluate_reranker(filter_model: CandidateFilter, model: DualEncoderReranker, dataset, store: FeatureStore,
                      lists: list[TopK], ks, *, batch_size: int = 8, device="cpu", details: dict | None = None,
                      share_kv: bool = True) -> dict:
    """The filter (F) and the re-ranker at each K (R_K) on a validation split, re-ranking stage 1's lists
    (paper §4.2, Tables 5-6): {"filter": ..., "K=k": ... + "coverage" and "rank_decrease" (Table 7's %
    decrease of the covered targets' mean rank in the top-k lists)}.

    `lists`: stage 1's top-K lists of the split, one per retrieval group (`filter_topk`, or a run's top-K
    files), checked first against the split (`check_lists`: split, length, gallery, queries, targets). One
    scoring pass over the first max(ks) candidates of every list serves every K; the filter's numbers come
    from the lists as they are. Per group (docs/data_formats.md, 'Galleries'): CIRR's one gallery, its 5
    subset members scored directly; Fashion-IQ's categories, averaged, Table 7's decrease pooling their
    queries. The filter only gives z_t here (and its ViT must be the re-ranker's). Pass a dict as `details`
    to receive the label arrays ("stage1" (N, K_max), "stage2" (N, K_max)), the ranked names and the scores
    (per category for Fashion-IQ), for Table 7 / Fig. 8 and the figures."""
    check_targets(dataset)
    check_same_vision(filter_model, model)
    k_max = max(ks)
    lists = check_lists(lists, dataset, max(k_max, FILTER_LIST))
    z_ts = encode_queries(filter_model, dataset, store, device=device)[1]
    score = lambda names, g: score_lists(model, dataset, z_ts, store, names, batch_size, device,  # noqa: E731
                                         indices=g.indices, share_kv=share_kv)
    stage1, stage2, subset_labels = {}, {k: {} for k in ks}, None
    for g, topk in zip(dataset.retrieval_groups(), lists):
        scores = score(topk.sorted_index_names[:, :k_max], g)                   # (N_g, K_max)
        stage1[g.category] = topk.labels                                         # (N_g, K_file)
        for k, labels in rerank_labels_for_ks(topk.labels[:, :k_max], scores, ks).items():
            stage2[k][g.category] = labels                                       # (N_g, k)
        if g.subsets:
            subsets = [dataset.queries[i]["subset"] for i in g.indices]
            subset_labels = labels_from_ranking(subset_ranking_by_scores(subsets, score(np.asarray(subsets), g)),
                                                topk.target_names)
        if details is not None:
            part = details if g.category is None else details.setdefault(g.category, {})
            part.update(stage1=topk.labels[:, :k_max], stage2=stage2[k_max][g.category],
                        ranked=topk.sorted_index_names[:, :k_max], scores=scores, indices=g.indices)
    results = {"filter": summary(stage1, lists[0].group_labels if subset_labels is not None else None)}
    for k in ks:
        pooled = [np.concatenate([stage1[c][:, :k] for c in stage1]), np.concatenate(list(stage2[k].values()))]
        results[f"K={k}"] = {**summary(stage2[k], subset_labels),
                             "coverage": float(np.mean([recall_at_k(stage1[c], k) for c in stage1])),
                             "rank_decrease": rank_decrease(*pooled)}
    return results
