"""Stage-1 gallery search: exact top-K by cosine similarity over 10k to 1M gallery embeddings.

The filter ranks the gallery by q · g over L2-normalised 256-d embeddings (paper Eq. 1).
Two exact ways to get each query's top-K (`cirtutor.evaluation.search.top_k`):

* torch: one matrix product per gallery chunk of 100k, `topk` per chunk, then a `topk` over
  the chunks' winners (what fits in memory at any gallery size);
* FAISS (`pip install cirtutor[search]`, faiss-cpu): `IndexFlatIP`, its exact inner-product search.

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
from common import parse, provenance, record, save_results

from cirtutor.evaluation.search import faiss_available, top_k


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--dim", type=int, default=256)
    args = parse(p, argv, device=False)
    faiss = None
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(args.threads)
    else:
        print("faiss-cpu is not installed: timing torch only (pip install 'cirtutor[search]')")
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(args.queries, args.dim, generator=g), dim=-1)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        gallery = F.normalize(torch.randn(n, args.dim, generator=g), dim=-1)
        top_k(q[:8], gallery, args.k, backend="torch")                      # warm-up
        start = time.perf_counter()
        ours = top_k(q, gallery, args.k, backend="torch")[1]
        torch_s = (time.perf_counter() - start) / args.queries
        faiss_s = build_s = agree = None
        if faiss is not None:
            start = time.perf_counter()
            index = faiss.IndexFlatIP(args.dim)                               # what top_k(backend="faiss") builds
            index.add(gallery.numpy())
            build_s = time.perf_counter() - start
            top_k(q[:8], gallery, args.k, backend="faiss")                   # warm-up
            start = time.perf_counter()
            theirs = top_k(q, gallery, args.k, backend="faiss")[1]
            faiss_s = (time.perf_counter() - start) / args.queries - build_s / args.queries
            agree = (theirs.sort(1).values == ours.sort(1).values).float().mean().item()
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
    values = {f"search_ms_per_query_torch_{n}": round(t * 1e3, 4) for n, t, *_ in rows}
    values |= {f"search_ms_per_query_faiss_{n}": round(f * 1e3, 4) for n, _, f, *_ in rows if f}
    save_results(values, "bench_search.py", path=args.results_json)


if __name__ == "__main__":
    main()
