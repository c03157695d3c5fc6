"""A run folder's layout: one function, `stage_dir`, names every stage's folder.

    RUN/config.json                    the settings that trained the run (`pipeline.check_run_folder`)
    RUN/seed{s}/stage1/                the filter: last.pt (resumable), filter.pt, metrics.json, metrics.csv
    RUN/seed{s}/topk/                  stage 1's top-K lists of the validation split (`evaluation.topk`)
    RUN/seed{s}/stage2[-ablation]/     the re-ranker, or one of its variants: last.pt, reranker.pt, metrics.*
    RUN/seed{s}/zeroshot/              a zero-shot model: zeroshot.safetensors, metrics.json, stage1.csv, stage2.csv

The cache's trained models (`cirtutor.trained`) are run folders of one seed with the same layout.
The package's shipped study results lie in SHIPPED_STUDIES/<study>-<preset>.json (`cirtutor.study`).
"""
from __future__ import annotations

from pathlib import Path

STAGES = ("stage1", "topk", "stage2", "zeroshot")
SHIPPED_STUDIES = Path(__file__).resolve().parent / "assets" / "studies"   # `cirtutor study`'s results, as shipped


def stage_dir(run: str | Path, seed: int, stage: str, ablation: str | None = None) -> Path:
    """RUN/seed{seed}/{stage}, and RUN/seed{seed}/stage2-{ablation} for a re-ranker variant."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if ablation and stage != "stage2":
        raise ValueError(f"only stage 2 has variants, not {stage!r}")
    return Path(run) / f"seed{seed}" / (stage + (f"-{ablation}" if ablation else ""))


def seed_dirs(run: str | Path) -> list[Path]:
    """RUN's seed{s} folders in the order of s."""
    found = [d for d in Path(run).glob("seed*") if d.is_dir() and d.name[4:].isdigit()]
    return sorted(found, key=lambda d: int(d.name[4:]))


def variant_dirs(run: str | Path, seed: int) -> dict[str, Path]:
    """{ablation: RUN/seed{seed}/stage2-{ablation}} for every re-ranker variant the seed holds."""
    main = stage_dir(run, seed, "stage2")
    return {d.name[len(main.name) + 1:]: d for d in sorted(main.parent.glob(main.name + "-*")) if d.is_dir()}
