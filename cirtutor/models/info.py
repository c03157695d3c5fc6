"""`cirtutor model-info`: parameter counts of both stages for a preset (docs/authors_code.md, 'Parameter counts')."""
from __future__ import annotations

import torch

from cirtutor.config import ModelConfig
from cirtutor.models.filter import CandidateFilter
from cirtutor.models.reranker import DualEncoderReranker


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def model_info(cfg: ModelConfig) -> dict:
    """Total / trainable parameters per stage and per part. Built on the meta device: no memory, instant."""
    with torch.device("meta"):
        stage1, stage2 = CandidateFilter(cfg), DualEncoderReranker(cfg)
    info = {}
    for name, model in (("stage1", stage1), ("stage2", stage2)):
        parts = {child: count(module) for child, module in model.named_children()}
        parts.update({p: v.numel() for p, v in model.named_parameters(recurse=False)})
        info[name] = {"class": type(model).__name__, "total": count(model), "trainable": count(model, True),
                      "parts": parts}
    return info


def format_info(info: dict) -> str:
    lines = []
    for stage, row in info.items():
        lines.append(f"{stage} {row['class']}: {row['total']:,} parameters, {row['trainable']:,} trainable")
        lines += [f"  {part:<16}{n:>14,}" for part, n in row["parts"].items()]
    return "\n".join(lines)
