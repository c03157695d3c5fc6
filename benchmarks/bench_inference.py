"""Inference time per query vs K (paper Fig. 7), at any model dims, on this machine.

Per query, as the authors' evaluation runs it (batch 1): the filter encodes the query
(text + reference tokens) and ranks the gallery by one matrix product; the re-ranker then
scores the top-K candidates in one forward of K pairs. Gallery image tokens are computed
once for the whole split, a fixed overhead the paper's timings include and this table
reports apart (per image), together with model construction. Weights are random: the
time of a forward does not depend on their values.

    python benchmarks/bench_inference.py --preset tiny --ks 10,20,50,100
    python benchmarks/bench_inference.py --preset paper --ks 10,50,100 --gallery 2000 --queries 3
"""
from __future__ import annotations

import argparse
import time

import torch
from common import parse, provenance, record, timed

from cirtutor.config import get_model_config
from cirtutor.models import CandidateFilter, DualEncoderReranker, tokenize

TEXT = "add a small blue square at the top left and remove the red circle"



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model dims: tiny | paper")
    p.add_argument("--ks", default="10,20,50,100")
    p.add_argument("--gallery", type=int, default=2000, help="gallery images ranked by the filter")
    p.add_argument("--queries", type=int, default=5, help="timed queries per measurement")
    args = parse(p, argv, device=False)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]
    cfg = get_model_config(args.preset)

    start = time.perf_counter()
    filt, reranker = CandidateFilter(cfg).eval(), DualEncoderReranker(cfg).eval()
    build_s = time.perf_counter() - start
    image = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        per_image_s = timed(lambda: filt.encode_images(image), 2)        # fixed: once per gallery image
        L_v = filt.encode_images(image).shape[1]
        gallery = torch.randn(max(ks), L_v, cfg.vision_width)              # top-K candidates' tokens
        gallery_emb = torch.nn.functional.normalize(torch.randn(args.gallery, cfg.embed_dim), dim=-1)
        ids, mask = tokenize([TEXT])
        ref = torch.randn(1, L_v, cfg.vision_width)

        def stage1():
            q, z_t = filt(ids, mask, ref)                                  # (1, e), (1, L_w, d)
            return (q @ gallery_emb.t()).topk(max(ks)).indices, z_t

        filter_s = timed(stage1, args.queries)
        _, z_t = stage1()
        rerank_s = {k: timed(lambda: reranker.score_candidates(ids, mask, z_t, gallery[None, :k]), args.queries)
                    for k in ks}

    lines = [f"### Inference time per query vs K (Fig. 7), {args.preset} dims, gallery {args.gallery}, L_v = {L_v}",
             provenance("bench_inference.py"),
             f"Fixed overheads: building both models {build_s:.2f} s; image tokens {per_image_s * 1000:.1f} ms per "
             f"gallery image (once per split, cached).", "",
             "| K | filter (ms/query) | re-rank top-K (ms/query) | total (ms/query) | × filter |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {filter_s * 1000:.1f} | {rerank_s[k] * 1000:.1f} | {(filter_s + rerank_s[k]) * 1000:.1f} | "
              f"{(filter_s + rerank_s[k]) / filter_s:.1f} |" for k in ks]
    record(lines, args.results)


if __name__ == "__main__":
    main()
