"""The optimiser and schedule both stages share (paper §4.2; docs/authors_code.md, 'Training recipe')."""
from __future__ import annotations

import math
from typing import Callable

import torch


def cosine_lr(base_lr: float, progress: float) -> float:
    """lr at `progress` in [0, 1] of the horizon: base * (1 + cos(pi * progress)) / 2, down to 0.
    Past the horizon (progress > 1) it rises again, as in the authors' longer CIRR runs (docs/authors_code.md, 'Epochs and cosine horizons')."""
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   boosted: Callable[[str], bool] = lambda name: False, boost: float = 1.0) -> torch.optim.AdamW:
    """AdamW over every tensor that requires grad, weight decay on all of them (biases, LayerNorms,
    temperature: docs/authors_code.md, 'Weight decay on every tensor'). Parameters whose name satisfies `boosted` train at lr x `boost`.
    Fused (one kernel over all tensors, the same update) when they all live on one CPU or CUDA device."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not boosted(n)], "lr_mult": 1.0},
              {"params": [p for n, p in named if boosted(n)], "lr_mult": boost}]
    params = [p for _, p in named]
    fused = bool(params) and len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay,
                             betas=(0.9, 0.999), eps=1e-8, fused=fused or None)  # fused: same update, one kernel


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]


def autocast(device: str | torch.device, amp: bool, cpu_bf16: bool):
    """Mixed precision around the trainable forward and the loss (docs/authors_code.md, 'Mixed precision'): fp16 on CUDA when
    `amp` (the paper's AMP), bf16 on CPU when `cpu_bf16` (a tiny-mode speed option), else fp32."""
    kind = torch.device(device).type
    enabled = amp if kind == "cuda" else cpu_bf16 and kind == "cpu"
    return torch.autocast(kind, dtype=torch.float16 if kind == "cuda" else torch.bfloat16, enabled=enabled)


def grad_scaler(device: str | torch.device, amp: bool) -> torch.amp.GradScaler:
    """The paper's GradScaler (defaults) for fp16 on CUDA; a disabled no-op elsewhere."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=amp and kind == "cuda")

