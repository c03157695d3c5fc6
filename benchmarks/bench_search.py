"""Stage-1 gallery search: exact top-K by cosine similarity over 10k to 1M gallery embeddings.

The filter ranks the gallery by q · g over L2-normalised 256-d embeddings (paper Eq. 1).
Two exact ways to get each query's top-K:

* torch: one matrix product per gallery chunk of 100k, `topk` per chunk, then a `topk` over
  the chunks' winners (what fits in memory at any gallery size);
* FAISS (`faiss-cpu`, optional): `IndexFlatIP`, its exact inner-product search.

Both return the same indices (checked, up to ties); times are per query for a batch of
queries, after building the index (reported apart). Random embeddings: the arithmetic does
not depend on the values.

    python benchmarks/bench_search.py --sizes 10000,100000,1000000 --queries 1000 --k 100
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import RESULTS, provenance, record, save_results


def torch_topk(q: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 100_000) -> torch.Tensor:
    """Exact top-k indices (Q, k) of q (Q, e) against gallery (N, e), chunk by chunk."""
    vals, idx = [], []
    for start in range(0, len(gallery), chunk):
        s = q @ gallery[start:start + chunk].t()                          # (Q, chunk)
        v, i = s.topk(min(k, s.shape[1]), dim=1)
        vals.append(v)
        idx.append(i + start)
    v, i = torch.cat(vals, 1), torch.cat(idx, 1)
    best = v.topk(k, dim=1).indices
    return i.gather(1, best)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed: timing torch only (pip install faiss-cpu)")
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(args.queries, args.dim, generator=g), dim=-1)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        gallery = F.normalize(torch.randn(n, args.dim, generator=g), dim=-1)
        torch_topk(q[:8], gallery, args.k)                                 # warm-up
        start = time.perf_counter()
        ours = torch_topk(q, gallery, args.k)
        torch_s = (time.perf_counter() - start) / args.queries
        faiss_s = build_s = agree = None
        if faiss is not None:
            start = time.perf_counter()
            index = faiss.IndexFlatIP(args.dim)
            index.add(gallery.numpy())
            build_s = time.perf_counter() - start
            index.search(q[:8].numpy(), args.k)                             # warm-up
            start = time.perf_counter()
            _, theirs = index.search(q.numpy(), args.k)
            faiss_s = (time.perf_counter() - start) / args.queries
            agree = (torch.as_tensor(theirs).sort(1).values == ours.sort(1).values).float().mean().item()
            del index
        rows.append((n, torch_s, faiss_s, build_s, agree))
        print(n, rows[-1], flush=True)
        del gallery

    lines = [f"### Stage-1 gallery search, exact top-{args.k}, {args.dim}-d embeddings, {args.queries} queries per batch",
             provenance("bench_search.py"), "",
             "| gallery | torch matmul + topk (ms/query) | FAISS IndexFlatIP (ms/query) | FAISS index build (s) | torch / FAISS | same top-K |",
             "|---|---|---|---|---|---|"]
    for n, t, f, b, a in rows:
        lines.append(f"| {n:,} | {t * 1e3:.3f} | " + (f"{f * 1e3:.3f} | {b:.2f} | {t / f:.2f}x | {a:.4f} |" if f else "— | — | — | — |"))
    record(lines, args.results)
    save_results({f"search_ms_per_query_torch_{n}": round(t * 1e3, 4) for n, t, *_ in rows}
                 | {f"search_ms_per_query_faiss_{n}": round(f * 1e3, 4) for n, _, f, *_ in rows if f}, "bench_search.py")


if __name__ == "__main__":
    main()
