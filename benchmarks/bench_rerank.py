"""Re-ranking inference, seconds per query vs K: a reference-style baseline vs cirtutor's fast path.

The split: N queries whose top-K lists are drawn from a gallery of N / `--queries-per-image`
images (Fashion-IQ val has 6016 queries over 15,536 gallery images, 0.39; CIRR val 4181 over
2297, 1.82), so each candidate sits in N·K / gallery ≈ 0.39·K lists: ~39 at K = 100 (the
column "shared by"). Texts have 8 to 20 tokens, mean 14, as the real captions (Fashion-IQ and
CIRR val: 14.2 and 14.0 tokens measured with the BLIP tokenizer). Weights and image tokens
are random (a forward's time does not depend on their values); both paths use the same ones.

* baseline (written here, as the authors' evaluation runs it): per query, batch 1, fp32;
  z_t recomputed by the filter on the query's text and reference tokens; the K candidates'
  tokens looked up; one forward of K pairs, each computing its own keys and values.
* fast (`cirtutor.engine.stage2.score_lists`, the default in evaluation): z_t cached from the
  filter's pass; the split's N·K pairs grouped by candidate, each candidate's keys/values
  computed once for every query that ranks it; length-sorted batches.

Stage 1 (the filter's ranking pass) is the same for both and not timed here (see
bench_inference.py). "max |Δ score|" compares the two paths' scores on the baseline's queries.

    python benchmarks/bench_rerank.py --preset tiny --ks 10,25,50,100,200 --queries 400
    python benchmarks/bench_rerank.py --preset paper --ks 10,50,100 --queries 40 --baseline-queries 2
    python benchmarks/bench_rerank.py --preset paper --device cuda --ks 10,25,50,100,200 --queries 520 [--bf16]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import parse, provenance, random_texts, record, save_results, sync

from cirtutor.config import get_model_config
from cirtutor.engine.stage2 import score_lists
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize


class Split:
    """The two things `score_lists` reads from a dataset: a query's text and its reference's name."""

    def __init__(self, texts: list[str], references: list[int]):
        self.texts = texts
        self.queries = [{"reference": r} for r in references]

    def query_text(self, i: int) -> str:
        return self.texts[i]


class Store:
    """Image tokens by name (here: the gallery index), as a `FeatureStore`."""

    def __init__(self, feats: torch.Tensor):
        self.feats = feats

    def __getitem__(self, names) -> torch.Tensor:
        return self.feats[torch.as_tensor(np.asarray(names, dtype=np.int64))]


def make_split(n: int, k: int, queries_per_image: float, L_v: int, width: int, seed: int = 0):
    """Texts, references, top-k lists (n, k) and gallery tokens (G, L_v, width), G = max(k, n / queries_per_image)."""
    rng = np.random.default_rng(seed)
    G = max(k, math.ceil(n / queries_per_image))
    texts = random_texts(n, seed)
    refs = rng.integers(0, G, size=n).tolist()
    lists = np.stack([rng.choice(G, size=k, replace=False) for _ in range(n)])          # (n, k) gallery indices
    feats = torch.randn(G, L_v, width, generator=torch.Generator().manual_seed(seed))
    return Split(texts, refs), Store(feats), lists


def baseline_query(filt, reranker, split, store, lists, i, device):
    """The authors' per-query re-ranking: recompute z_t, look the K candidates up, one K-pair forward."""
    ids, mask = tokenize([split.query_text(i)], device)                               # (1, L), no padding
    ref = store[[split.queries[i]["reference"]]].to(device)                          # (1, L_v, d_v)
    z_t = filt(ids, mask, ref)[1]                                                     # (1, L, d)
    cands = store[lists[i]].to(device)                                                # (K, L_v, d_v)
    K = len(cands)
    return reranker(ids.expand(K, -1), mask.expand(K, -1), z_t.expand(K, -1, -1), cands)  # (K,)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model dims: tiny | paper")
    p.add_argument("--ks", default="10,25,50,100,200")
    p.add_argument("--queries", type=int, default=400, help="queries in the split the fast path scores")
    p.add_argument("--baseline-queries", type=int, default=5, help="queries the baseline is timed on")
    p.add_argument("--queries-per-image", type=float, default=0.39, help="split size / gallery size (Fashion-IQ val)")
    p.add_argument("--pair-batch", type=int, default=256, help="pairs per forward on the fast path")
    p.add_argument("--bf16", action="store_true", help="fast path in bf16 autocast (GPUs; not exact)")
    args = parse(p, argv)
    torch.manual_seed(0)
    ks, dev = [int(k) for k in args.ks.split(",")], args.device
    cfg = get_model_config(args.preset)
    filt, reranker = CandidateFilter(cfg).to(dev).eval(), DualEncoderReranker(cfg).to(dev).eval()
    L_v = cfg.image_tokens

    rows, headline = [], {}
    for k in ks:
        split, store, lists = make_split(args.queries, k, args.queries_per_image, L_v, cfg.vision_width)
        shared_by = args.queries * k / len(store.feats)
        with torch.no_grad():
            z_ts = [filt(*tokenize([split.query_text(i)], dev), store[[split.queries[i]["reference"]]].to(dev))[1][0]
                    for i in range(args.queries)]                                     # the filter pass's z_t, cached
            nb = min(args.baseline_queries, args.queries)
            baseline_query(filt, reranker, split, store, lists, 0, dev)                # warm-up
            sync(dev)
            start = time.perf_counter()
            base_scores = [baseline_query(filt, reranker, split, store, lists, i, dev).cpu() for i in range(nb)]
            base_s = (time.perf_counter() - start) / nb
            sync(dev)
            start = time.perf_counter()
            fast = score_lists(reranker, split, z_ts, store, lists, device=dev, pair_batch=args.pair_batch, bf16=args.bf16)
            sync(dev)
            fast_s = (time.perf_counter() - start) / args.queries
        diff = float(max((torch.as_tensor(fast[i]) - base_scores[i]).abs().max() for i in range(nb)))
        rows.append((k, shared_by, base_s, fast_s, diff))
        print(f"K={k}: baseline {base_s:.4f} s/query, fast {fast_s:.4f} s/query, x{base_s / fast_s:.2f}, "
              f"max diff {diff:.1e}", flush=True)

    where = "gpu" if torch.device(dev).type == "cuda" else "cpu"
    fast_name = "fast path (bf16)" if args.bf16 else "fast path"
    lines = [f"### Re-ranking inference per query vs K, {args.preset} dims, {where}, L_v = {L_v}: baseline vs {fast_name}",
             provenance("bench_rerank.py", device=dev),
             f"Split of {args.queries} queries (baseline timed on {min(args.baseline_queries, args.queries)}), "
             f"{args.queries_per_image} queries per gallery image; stage 1 not included.", "",
             "| K | shared by (lists per candidate) | baseline (s/query) | fast (s/query) | speed-up | max abs score diff |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {m:.1f} | {b:.4f} | {f:.4f} | {b / f:.2f}x | {d:.1e} |" for k, m, b, f, d in rows]
    record(lines, args.results)
    for k, m, b, f, d in rows:
        if k == 100 and not args.bf16:
            headline[f"rerank_speedup_{where}_{args.preset}_k100"] = round(b / f, 3)
            headline[f"rerank_s_per_query_{where}_{args.preset}_k100"] = round(f, 5)
            headline[f"rerank_baseline_s_per_query_{where}_{args.preset}_k100"] = round(b, 5)
        if k == 100 and args.bf16:
            headline[f"rerank_s_per_query_{where}_{args.preset}_k100_bf16"] = round(f, 5)
    if not args.bf16:
        headline[f"rerank_max_abs_score_diff_{args.preset}"] = max(d for *_, d in rows)
        if args.preset == "paper":
            headline["rerank_max_abs_score_diff"] = headline["rerank_max_abs_score_diff_paper"]
    save_results(headline, "bench_rerank.py", dev, path=args.results_json)


if __name__ == "__main__":
    main()
