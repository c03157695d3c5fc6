"""A FLOP model of the dual encoder per (query, candidate) pair, and the fraction of peak achieved.

`cirtutor.models.flops.pair_flops` counts one pair's forward by part (tests check it against
torch's own FLOP counter). Here it is evaluated at the given dims for a 14-token text (the
real captions' mean), per pair as the authors' evaluation computes it (keys/values of the
candidate per pair) and with the candidate's keys/values shared by `--shared-by` pairs (the
fast path; ~39 at K = 100 on Fashion-IQ val). Both forwards are then timed on this machine,
P pairs each, and their achieved GFLOP/s are set against this machine's measured peak: the
best of large fp32 matrix products measured before and after the forwards (the arithmetic
the model is made of; a shared machine's speed drifts by ~30% over minutes).

    python benchmarks/bench_flops.py --preset tiny --pairs 512
    python benchmarks/bench_flops.py --preset paper --pairs 32 --repeats 1
"""
from __future__ import annotations

import argparse

import torch
from common import parse, provenance, record, save_results, timed

from cirtutor.config import get_model_config
from cirtutor.models import DualEncoderReranker, tokenize
from cirtutor.models.flops import pair_flops


def matmul_peak(device="cpu", n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product throughput (FLOP/s): the best of square n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return max(2 * n ** 3 / timed(lambda: a @ b, 2, device) for _ in range(repeats))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model dims: tiny | paper")
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--shared-by", type=int, default=39, help="pairs that share one candidate's keys/values")
    p.add_argument("--repeats", type=int, default=3)
    args = parse(p, argv)
    torch.manual_seed(0)
    cfg, dev, P, m = get_model_config(args.preset), args.device, args.pairs, args.shared_by
    L_v = cfg.image_tokens
    model = DualEncoderReranker(cfg).to(dev).eval()
    ids, mask = tokenize([" ".join(["red"] * 12)] * P, dev)                            # 14 tokens, no padding
    L = ids.shape[1]
    z_t = torch.randn(P, L, cfg.text_width, device=dev)
    n_cand = max(1, P // m)
    cands = torch.randn(n_cand, L_v, cfg.vision_width, device=dev)
    index = torch.arange(P, device=dev) % n_cand                                       # each candidate in m pairs
    peak = matmul_peak(dev)
    with torch.no_grad():
        per_pair_s = timed(lambda: model(ids, mask, z_t, cands[index]), args.repeats, dev) / P
        shared_s = timed(lambda: model(ids, mask, z_t, model.candidate_kv(cands), index=index), args.repeats, dev) / P
    peak = max(peak, matmul_peak(dev))             # before and after: this machine's speed drifts
    rows = []
    for name, shared_by, seconds in (("per pair (authors)", 1, per_pair_s), (f"K/V shared by {m} pairs (fast)", m, shared_s)):
        f = pair_flops(cfg, L, L_v, shared_by)
        rows.append((name, f, seconds, f["total"] / seconds))
    lines = [f"### FLOPs per (query, candidate) pair, {args.preset} dims, L = {L} text tokens, L_v = {L_v}",
             provenance("bench_flops.py", device=dev),
             f"Measured peak: {peak / 1e9:.0f} GFLOP/s (best fp32 2048^3 matrix product on this machine).", "",
             "| forward | text (GFLOP) | candidate K/V (GFLOP) | attention (GFLOP) | total (GFLOP) | time per pair (ms) | "
             "achieved (GFLOP/s) | of peak |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {f['text'] / 1e9:.3f} | {f['candidate_kv'] / 1e9:.3f} | {f['attention'] / 1e9:.3f} | "
              f"{f['total'] / 1e9:.3f} | {s * 1e3:.2f} | {a / 1e9:.1f} | {a / peak:.0%} |" for n, f, s, a in rows]
    record(lines, args.results)
    where = "gpu" if torch.device(dev).type == "cuda" else "cpu"
    save_results({f"pair_gflop_{args.preset}_per_pair": round(rows[0][1]["total"] / 1e9, 4),
                  f"pair_gflop_{args.preset}_shared": round(rows[1][1]["total"] / 1e9, 4),
                  f"fraction_of_peak_{where}_{args.preset}_per_pair": round(rows[0][3] / peak, 3),
                  f"fraction_of_peak_{where}_{args.preset}_shared": round(rows[1][3] / peak, 3),
                  f"matmul_peak_gflops_{where}": round(peak / 1e9, 1)}, "bench_flops.py", dev, path=args.results_json)


if __name__ == "__main__":
    main()
