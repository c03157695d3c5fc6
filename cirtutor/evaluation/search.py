"""Exact top-K gallery search by inner product, for galleries far larger than the datasets'.

Stage 1 ranks a gallery by cosine similarity of L2-normalised embeddings (paper Eq. 1).
Evaluation keeps `rank_gallery`'s full stable sort (docs/metrics.md, 'Ranking the gallery': ties keep gallery order, and
the datasets' galleries hold a few thousand images). For a retrieval service over 10k to 1M
images, `top_k` returns only the best K per query:

* "torch": a matrix product per gallery chunk, `topk` per chunk, then over the chunks' winners;
* "faiss": FAISS's exact `IndexFlatIP` (`pip install cirtutor[search]`), 1.5-1.8x faster on
  this project's 2-core CPU from 10k to 1M 256-d embeddings (benchmarks/bench_search.py);
* "auto": FAISS when it is installed, else torch.

Both are exact; on equal scores they may order ties differently.
"""
from __future__ import annotations

import importlib.util

import torch


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def top_k(query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int, backend: str = "auto",
          chunk: int = 100_000) -> tuple[torch.Tensor, torch.Tensor]:
    """query_emb (Q, e), gallery_emb (N, e) -> (scores, indices), each (Q, k), best first."""
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend={backend!r}; expected 'auto', 'torch' or 'faiss'")
    q, g = torch.as_tensor(query_emb).float(), torch.as_tensor(gallery_emb).float()
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (Q, e) queries and (N, e) gallery embeddings, got {tuple(q.shape)} and {tuple(g.shape)}")
    if not 1 <= k <= len(g):
        raise ValueError(f"k={k} must be between 1 and the gallery size {len(g)}")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        return _faiss_top_k(q, g, k)
    best_s, best_i = [], []
    for start in range(0, len(g), chunk):
        s = q @ g[start:start + chunk].T                                     # (Q, chunk)
        v, i = s.topk(min(k, s.shape[1]), dim=1)
        best_s.append(v)
        best_i.append(i + start)
    s, i = torch.cat(best_s, 1), torch.cat(best_i, 1)                       # (Q, chunks * k)
    v, pick = s.topk(k, dim=1)
    return v, i.gather(1, pick)


def _faiss_top_k(q: torch.Tensor, g: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError as e:
        raise ImportError("backend='faiss' needs FAISS: pip install 'cirtutor[search]' (faiss-cpu)") from e
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g.detach().cpu().contiguous().numpy())
    scores, indices = index.search(q.detach().cpu().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices)
