"""One stage-2 training step (paper Eq. 2, B x B logits): time and peak memory of each path.

A step is the B x B logits, the loss, the backward pass and an AdamW update of the trainable
re-ranker (the ViT is frozen; image tokens come from the feature cache). Paths:

* loop: the authors' — for each query i, one forward of B pairs (query i against every target);
* batched: all B^2 pairs in one forward, each pair computing its own keys and values;
* batched + K/V sharing: each target's keys and values computed once for the B queries
  (`bxb_logits(share_kv=True)`, cirtutor's default);

each in fp32 and in bf16 autocast, with and without activation checkpointing. Every
configuration runs in its own process. "held" is the weights and Adam's moments; "step peak"
is what one step adds on top at its peak — activations, gradients, temporaries — (CUDA:
max_memory_allocated; CPU: the peak resident set size, after a warm-up step at B = 1, so it
also holds ~0.1 GB of allocator noise); the step's total is their sum. Texts: 8-20 tokens, mean 14, as the real captions.

    python benchmarks/bench_train_step.py --preset tiny --batch 16
    python benchmarks/bench_train_step.py --preset paper --batch 4 --repeats 1
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import subprocess
import sys

import torch
from common import parse, provenance, random_texts, record, save_results, sync, timed

from cirtutor.config import get_model_config
from cirtutor.models import DualEncoderReranker, tokenize

PATHS = {"loop": "loop over queries", "batched": "batched", "shared": "batched + K/V sharing"}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(preset: str, batch: int, path: str, precision: str, checkpointing: bool, repeats: int, device: str) -> dict:
    """Build the model and a batch; a warm-up step at B = 1 (lazy initialisations, Adam's moments);
    then one step at B, whose peak memory above what was held is measured, then `repeats` timed
    steps. -> {"step_s", "peak_gb", "held_gb"}."""
    torch.manual_seed(0)
    cfg = get_model_config(preset)
    model = DualEncoderReranker(cfg).to(device).train()
    model.text_encoder.checkpointing = checkpointing
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    L_v = cfg.image_tokens
    dev_type = torch.device(device).type
    autocast = torch.autocast(dev_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def make_step(B):
        ids, mask = tokenize(random_texts(B), device)
        z_t = torch.randn(B, ids.shape[1], cfg.text_width, device=device)
        targets = torch.randn(B, L_v, cfg.vision_width, device=device)

        def logits():
            if path == "loop":
                return torch.stack([model(ids[i:i + 1].expand(B, -1), mask[i:i + 1].expand(B, -1),
                                          z_t[i:i + 1].expand(B, -1, -1), targets) for i in range(B)])
            return model.bxb_logits(ids, mask, z_t, targets, share_kv=path == "shared")

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = model.loss(logits().float())
            loss.backward()
            opt.step()
        return step

    make_step(1)()
    step = make_step(batch)
    held = sum(t.numel() * t.element_size() for t in itertools.chain(
        model.parameters(), (v for st in opt.state.values() for v in st.values() if torch.is_tensor(v))))
    if dev_type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        base = rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"step_s": timed(step, repeats, device), "peak_gb": peak / 2 ** 30, "held_gb": held / 2 ** 30}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model dims: tiny | paper")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--paths", default="loop,batched,shared")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--checkpointing", default="off,on")
    p.add_argument("--one", help=argparse.SUPPRESS)             # path,precision,on|off: run one configuration here
    args = parse(p, argv)
    if args.one:
        path, precision, ckpt = args.one.split(",")
        print(json.dumps(one(args.preset, args.batch, path, precision, ckpt == "on", args.repeats, args.device)))
        return
    rows, held = [], float("nan")
    for path, precision, ckpt in itertools.product(args.paths.split(","), args.precisions.split(","),
                                                   args.checkpointing.split(",")):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--repeats",
               str(args.repeats), "--device", args.device, "--threads", str(args.threads), "--one", f"{path},{precision},{ckpt}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}; -9: killed, out of memory?"])[-1]
            print(f"{path} {precision} checkpointing {ckpt}: failed ({tail})", flush=True)
            rows.append((path, precision, ckpt, None, None))
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{path} {precision} checkpointing {ckpt}: {r['step_s']:.3f} s, {r['peak_gb']:.2f} GB", flush=True)
        rows.append((path, precision, ckpt, r["step_s"], r["peak_gb"]))
        held = r["held_gb"]

    where = "gpu" if torch.device(args.device).type == "cuda" else "cpu"
    cfg = get_model_config(args.preset)
    L_v = cfg.image_tokens
    lines = [f"### Stage-2 training step, {args.preset} dims, {where}, B = {args.batch} ({args.batch ** 2} pairs, L_v = {L_v})",
             provenance("bench_train_step.py", device=args.device),
             f"Held before a step (weights + Adam's moments): {held:.2f} GB.", "",
             "| path | precision | activation checkpointing | step (s) | step peak (GB) | total peak (GB) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {PATHS[p]} | {pr} | {c} | " + (f"{s:.3f} | {m:.2f} | {m + held:.2f} |" if s is not None else "failed | — | — |")
              for p, pr, c, s, m in rows]
    record(lines, args.results)
    measured = {(p, pr, c): (s, m) for p, pr, c, s, m in rows if s is not None}
    default = measured.get(("shared", "bf16" if where == "gpu" else "fp32", "off"))
    if default:
        tag = f"{where}_{args.preset}_b{args.batch}"
        save_results({f"train_step_s_{tag}": round(default[0], 4),
                      f"train_step_peak_mem_gb_{tag}": round(default[1] + held, 3)}, "bench_train_step.py", args.device,
                     path=args.results_json)
        if where == "gpu" and args.preset == "paper" and args.batch == 16:
            save_results({"train_step_peak_mem_gb_paper_b16": round(default[1] + held, 3)}, "bench_train_step.py",
                         args.device, path=args.results_json)


if __name__ == "__main__":
    main()
