"""Stage-2 training logits: one batched B x B forward vs the authors' loop over queries.

The authors build the B x B score matrix with a Python loop: for each query i, one forward
of B pairs (query i repeated against all B targets). `DualEncoderReranker.bxb_logits` runs
all B^2 pairs in one forward. Both give the same numbers (checked here); this measures the
wall time of a forward pass (no grad) and of forward + backward, on this machine.

    python benchmarks/bench_bxb.py --preset tiny --batch 16
    python benchmarks/bench_bxb.py --preset paper --batch 4
"""
from __future__ import annotations

import argparse

import torch
from common import RESULTS, provenance, record, timed

from cirtutor.config import get_model_config
from cirtutor.models import DualEncoderReranker, tokenize

TEXTS = ["make the red circle blue", "add a small square at the top left", "remove the triangle", "make it bigger"]


def loop_logits(model, ids, mask, z_t, targets):
    B = len(ids)
    rows = [model(ids[i:i + 1].expand(B, -1), mask[i:i + 1].expand(B, -1), z_t[i:i + 1].expand(B, -1, -1), targets)
            for i in range(B)]
    return torch.stack(rows)



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_model_config(args.preset)
    model = DualEncoderReranker(cfg).train()
    B = args.batch
    ids, mask = tokenize([TEXTS[i % len(TEXTS)] for i in range(B)])
    z_t = torch.randn(B, ids.shape[1], cfg.text_width)
    L_v = (cfg.image_size // cfg.patch_size) ** 2 + 1
    targets = torch.randn(B, L_v, cfg.vision_width)

    model.eval()
    with torch.no_grad():
        diff = (model.bxb_logits(ids, mask, z_t, targets) - loop_logits(model, ids, mask, z_t, targets)).abs().max().item()
        fwd_loop = timed(lambda: loop_logits(model, ids, mask, z_t, targets), args.repeats)
        fwd_batched = timed(lambda: model.bxb_logits(ids, mask, z_t, targets), args.repeats)
    model.train()
    step = lambda f: lambda: model.loss(f()).backward()
    bwd_loop = timed(step(lambda: loop_logits(model, ids, mask, z_t, targets)), args.repeats)
    bwd_batched = timed(step(lambda: model.bxb_logits(ids, mask, z_t, targets)), args.repeats)

    rows = [("forward (no grad)", fwd_loop, fwd_batched), ("forward + backward", bwd_loop, bwd_batched)]
    lines = [f"### B x B logits, {args.preset} dims, B = {B} ({B * B} pairs, L_v = {L_v})",
             f"{provenance('bench_bxb.py', args.threads)} · max |loop - batched| = {diff:.2e}", "",
             "| pass | loop over queries (s) | one batched forward (s) | speed-up |", "|---|---|---|---|"]
    lines += [f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |" for name, a, b in rows]
    record(lines, args.results)


if __name__ == "__main__":
    main()
