"""`cirtutor reproduce`: the main job for a preset.

This version runs the data stage of the pipeline: it resolves the preset's dataset (in tiny
mode, the seeded synthetic world, generated once into the cache), checks every split and
image, and prints the statistics. The two model stages (candidate filter, dual-encoder
re-ranker) and their evaluation are added by the models and engine work.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from cirtutor.config import Config
from cirtutor.data.registry import dataset_root
from cirtutor.data.stats import data_stats, format_report, report_ok


def reproduce(cfg: Config) -> int:
    start = time.perf_counter()
    mode = "paper" if cfg.data.root else "tiny"
    print(f"cirtutor reproduce: preset {cfg.name!r} ({mode} mode, {cfg.data.dataset} format, {cfg.data.resolution} px)")
    root = dataset_root(cfg.data)
    images = cfg.data.images or (root / "images" if cfg.data.dataset == "fashioniq" else root)
    report = data_stats(cfg.data.dataset, cfg.data.annotations or root, images, progress=sys.stderr.isatty())
    print(format_report(report).replace(str(Path.home()), "~"))
    print(f"data stage done in {time.perf_counter() - start:.1f} s. "
          "Stage 1 (filter) and stage 2 (re-ranker) are not part of this version yet.")
    return 0 if report_ok(report) else 1
