"""The main job, `cirtutor reproduce`: every stage of `cirtutor.pipeline` for each seed in one run
folder (paper §3-§4; docs/authors_code.md, 'Training recipe'), then the analyses (`cirtutor.analysis`),
the findings scorecard (`cirtutor.findings`) and the report (`cirtutor.report`):

    RUN/config.json, RUN/seed{s}/...       what the stages write (`cirtutor.pipeline`, `cirtutor/layout.py`)
    RUN/report.md, metrics.json, figures/  the report
    RUN/results.json                       every number the report prints

With models="shipped" (the tiny preset's setting), seed 0's filter and re-ranker come from `cirtutor.trained`
(tiny: the package's shipped models) and are evaluated here; ablation_models="shipped" does the same for the variants.
"""
from __future__ import annotations

import contextlib
import io
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cirtutor import findings, trained
from cirtutor.analysis import coverage_curve, inference_times, qualitative_items, rank_analysis
from cirtutor.config import ABLATIONS, Config, validate
from cirtutor.data.registry import dataset_root
from cirtutor.engine.loop import world
from cirtutor.errors import CirtutorError
from cirtutor.features import datasets, feature_stores, init_weights, is_tiny, resolve_device
from cirtutor.io import atomic_write_bytes, atomic_write_json
from cirtutor.layout import stage_dir
from cirtutor.models import CandidateFilter
from cirtutor.pipeline import (ablation_budget, check_run_folder, extract_topk, new_run_folder, record_run, run_stage1,
                               run_stage2, run_topk, say, short, stage1_dir, usable_ks)
from cirtutor.report import write_report


# ----------------------------------------------------------------------------- timing

@contextmanager
def timed(times: dict, name: str):
    start = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages when the run ended (None where the OS has none):
    timings from a busy machine are not comparable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- shipped models

def place_shipped(cfg: Config, run: Path, seed: int) -> bool:
    """models="shipped", seed 0: copy `trained.trained_filter`'s and `trained_reranker`'s weights (tiny: the package's
    shipped models) into the run's stage folders, where `run_stage1` and `run_stage2` find them ("found trained …") and
    the run evaluates them. False (they are then trained in the run) for other seeds or when either is missing."""
    if cfg.models not in ("train", "shipped"):
        raise CirtutorError(f"models={cfg.models!r}; expected 'train' or 'shipped'")
    if cfg.models == "train" or seed != 0 or not (trained.has_trained_filter(cfg, 0)
                                                 and trained.has_trained_reranker(cfg, 0, None)):
        return False
    with contextlib.redirect_stdout(io.StringIO()):
        trained.trained_reranker(cfg, 0, verbose=False)           # unpacks both into the cache
    for src, dst, name in ((stage1_dir(trained.trained_filter_dir(cfg, 0), 0), stage1_dir(run, 0), "filter.pt"),
                           (stage_dir(trained.trained_reranker_dir(cfg, 0), 0, "stage2"),
                            stage_dir(run, 0, "stage2"), "reranker.pt")):
        if not (dst / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            for f in (name, "metrics.json"):
                atomic_write_bytes(dst / f, (src / f).read_bytes())
    return True


SHIPPED_SOURCE = "shipped seed-0 model, trained as long as R on the shipped seed-0 filter and evaluated with it"


def run_ablation(cfg: Config, run: Path, seed: int, filt: CandidateFilter, ablation: str, **inputs) -> tuple[dict, str]:
    """(the metrics of re-ranker variant `ablation` for `seed`, where they come from). Trained in the run
    (`run_stage2`); or, with ablation_models="shipped", for seed 0, `trained.trained_reranker`'s model when it
    and its full model are shipped with the package or cached (otherwise it is trained in the run), with the
    metrics they were evaluated with on their own filter. Those go into the run's
    seed0/stage2-<ablation>/metrics.json with the full model's ("full_model"): the scorecard pairs them."""
    if cfg.ablation_models not in ("train", "shipped"):
        raise CirtutorError(f"ablation_models={cfg.ablation_models!r}; expected 'train' or 'shipped'")
    if (cfg.ablation_models == "train" or seed != 0
            or not (trained.has_trained_reranker(cfg, 0, ablation) and trained.has_trained_reranker(cfg, 0, None))):
        return run_stage2(cfg, run, seed, filt, ablation=ablation, **inputs)[1], "trained"

    with contextlib.redirect_stdout(io.StringIO()):
        _, metrics = trained.trained_reranker(cfg, 0, ablation, verbose=False)
        _, full = trained.trained_reranker(cfg, 0, None, verbose=False)   # its full model, on the same filter
    out = stage_dir(run, seed, "stage2", ablation)
    k = f"K={cfg.stage2.k}"
    metrics = {**metrics, "source": SHIPPED_SOURCE, "full_model": {k: full[k]}}
    if world()[0] == 0:
        atomic_write_json(out / "metrics.json", metrics, indent=2)
    return metrics, SHIPPED_SOURCE


# ----------------------------------------------------------------------------- the main job

def seed0_analysis(cfg: Config, run: Path, results: dict, details: dict, filt, model, val, stores, device,
                   times: dict) -> list:
    """Seed 0's rank analysis (Table 7, Fig. 8), coverage curve and inference timing (Fig. 7, on the run's
    top-K lists), into `results`; returns the qualitative figure's items."""
    results["rank_analysis"] = rank_analysis(details)
    s1 = details["stage1"] if "stage1" in details else np.concatenate([d["stage1"] for d in details.values()])
    results["coverage"] = coverage_curve(s1)
    ks = usable_ks(cfg, val)
    results["timing"] = inference_times(filt, model, val, stores, device, ks, run_topk(run, 0, val, max(ks)))
    results["timing"]["fixed_s"] = {k: round(times[k], 2) for k in ("data", "image features") if k in times}
    return qualitative_items(val, details)


def run_ablations(cfg: Config, run: Path, seed: int, filt, results: dict, times: dict, **inputs) -> None:
    """Every variant of `cfg.ablations` for one seed (the scorecard's F4-F6 pair them per seed); seed 0's
    metrics and where each model came from go into `results`."""
    acfg = ablation_budget(cfg)
    results["epochs"] = {"stage2": cfg.stage2.epochs, "ablations": acfg.stage2.epochs}
    for ablation in cfg.ablations:
        label = ABLATIONS[ablation][0]
        with timed(times, f"ablation {ablation}"):
            a_metrics, source = run_ablation(acfg, run, seed, filt, ablation, **inputs)
        if seed == 0:
            results["ablations"][label] = a_metrics[f"K={cfg.stage2.k}"]
            results.setdefault("ablation_sources", {})[label] = source
            if "full_model" in a_metrics:
                results["ablation_reference"] = a_metrics["full_model"][f"K={cfg.stage2.k}"]
        say(f"{label} (seed {seed}{', ' + source if source != 'trained' else ''}): {short(a_metrics[f'K={cfg.stage2.k}'])}")


def reproduce_seed(cfg: Config, run: Path, seed: int, results: dict, times: dict, **inputs) -> tuple[dict, list | None]:
    """One seed of `reproduce`: stage 1, its top-K lists, stage 2 and the variants, and for seed 0 the analyses.
    `inputs`: train, val, stores, weights, device, resume. Returns the seed's findings record and (seed 0) the
    qualitative figure's items."""
    qualitative, val, stores, device = None, inputs["val"], inputs["stores"], inputs["device"]
    if place_shipped(cfg, run, seed):
        results["model_source"] = "shipped"
        say("seed 0: the shipped filter and re-ranker of this recipe, evaluated here "
            "(--set models=train trains them in the run)")
    with timed(times, "stage 1"):
        filt, f_metrics = run_stage1(cfg, run, seed, **inputs)
    say(f"F (seed {seed}): {short(f_metrics)}")
    with timed(times, "top-K"):
        extract_topk(run, seed, filt, val, stores["val"], device)
    with timed(times, "stage 2"):
        details, shared = {}, {}
        model, metrics = run_stage2(cfg, run, seed, filt, **inputs, details=details, shared=shared)
    main = metrics[f"K={cfg.stage2.k}"]
    say(f"R_{cfg.stage2.k} (seed {seed}): {short(main)}")
    results["seed_runs"].append({"seed": seed, "filter": metrics["filter"], "rerank": main})
    if seed == 0:
        results["filter"] = metrics["filter"]
        results["rerank"] = {k: v for k, v in metrics.items() if k.startswith("K=")}
        with timed(times, "analysis"):
            qualitative = seed0_analysis(cfg, run, results, details, filt, model, val, stores, device, times)
    run_ablations(cfg, run, seed, filt, results, times, **inputs, shared=shared)
    record = findings.seed_record(run, seed, cfg.stage2.k, max(usable_ks(cfg, val)))
    return record, qualitative


def reproduce(cfg: Config, *, seeds: int = 1, out: str | None = None, resume: bool = False,
              overwrite: bool = False) -> int:
    """The whole pipeline for a preset: data, features, stage 1, top-K, stage 2 (+ ablations),
    evaluation of F and R_K for several K, rank analysis, timing, report.md + metrics.json.
    A run folder holding models of other settings is refused unless `overwrite` (they are removed)."""
    t0, times = time.perf_counter(), {}
    validate(cfg)
    if seeds < 1:
        raise CirtutorError(f"--seeds {seeds}: expected at least 1")
    if resume and overwrite:
        raise CirtutorError("--resume continues a run folder's trainings and --overwrite removes them: pass one")
    device = resolve_device(cfg)
    run = check_run_folder(cfg, new_run_folder(cfg, out), overwrite, "pass --overwrite")
    mode = "tiny" if is_tiny(cfg) else "paper"
    say(f"cirtutor reproduce: preset {cfg.name!r} ({mode} mode, {cfg.data.dataset} format), device {device}, run {run}")
    with timed(times, "data"):
        dataset_root(cfg.data, verbose=True)
        train, val = datasets(cfg)
        weights = init_weights(cfg)
    with timed(times, "image features"):
        stores = feature_stores(cfg, train, val, weights, device)
    usable_ks(cfg, val)                                      # stage2.k must fit the gallery: known before training
    record_run(cfg, run, overwrite)
    results = {"preset": cfg.name, "dataset": cfg.data.dataset, "mode": mode, "subsample": cfg.subsample,
               "seeds": list(range(seeds)), "k": cfg.stage2.k, "ablations": {}, "seed_runs": [],
               "device": f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "platform": platform.platform()}
    records, qualitative = [], None                          # each seed's findings record (`findings.seed_record`)
    inputs = dict(train=train, val=val, stores=stores, weights=weights, device=device, resume=resume)
    for seed in range(seeds):
        record, items = reproduce_seed(cfg, run, seed, results, times, **inputs)
        records.append(record)
        if seed == 0:
            qualitative = items
    results["findings"] = findings.judge(records, cfg.data.dataset)      # the scorecard, from the run folder
    if seeds == 1:
        results.pop("seed_runs")
    results["stage_times_s"] = {k: round(v, 1) for k, v in times.items()}
    results["wall_time_s"] = round(time.perf_counter() - t0, 1)
    results["load_average"] = load_average()
    if world()[0] == 0:
        path = write_report(results, run, qualitative)
        atomic_write_json(run / "results.json", results, indent=2)
        say(f"done in {results['wall_time_s']:.0f} s: {path} and {run / 'metrics.json'}")
    return 0
