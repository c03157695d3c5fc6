"""The trained results behind the exercise solutions: one seeded command per exercise (solutions/).

Most exercises are answered live in their solutions notebook. Some ask for a model trained with a
changed recipe: 15 to 25 minutes each in tiny mode, beyond a notebook's time budget. For those, the
package ships the result as a small file, and the solution loads it and says how to remake it:

    cirtutor exercise 04.1          # trains what exercise 04.1 asks (seed 0), evaluates it,
                                    # and writes cirtutor/assets/exercises/04.1.json

Each exercise is a list of `ExerciseRun`s. A run is one model, trained with `cirtutor.trained` exactly as
its notebook's study trains the model it changes: the same base config (`study.variant_config`) plus the
exercise's overrides. The file records each run's overrides, the cache folder (whose name is a digest of
everything the model depends on), and its validation metrics, plus what the exercise asks to compare
(CaLa's logit breakdown, a zero-shot model's query alignment and Stage I loss per epoch).
A test checks that every file's digests still match the package's configs, so a changed preset makes
the shipped answers stale rather than silently wrong.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from cirtutor.config import apply_overrides
from cirtutor.engine.zeroshot import query_alignment
from cirtutor.errors import CirtutorError
from cirtutor.explore import logit_breakdown
from cirtutor.findings import epoch_means
from cirtutor.io import atomic_write_json
from cirtutor.engine.stage1 import CalaObjective, filter_topk
from cirtutor.engine.stage2 import evaluate_reranker
from cirtutor.evaluation.reliance import shifted_references
from cirtutor.pipeline import eval_speed
from cirtutor.study import variant_config
from cirtutor.trained import (filter_data, trained_cala, trained_filter, trained_filter_dir, trained_reranker, trained_reranker_dir,
                              trained_zeroshot, trained_zeroshot_dir, trained_zeroshot_history)

SHIPPED_EXERCISES = Path(__file__).resolve().parent / "assets" / "exercises"


@dataclasses.dataclass(frozen=True)
class ExerciseRun:
    label: str                          # the row's name in the solution's table
    kind: str                           # "reranker" | "cala" | "zeroshot" (train) | "evaluate" (the shipped models)
    overrides: tuple[str, ...] = ()     # on top of the base: the exercise's change
    ablation: str | None = None         # a re-ranker variant of config.ABLATIONS
    ks: tuple[int, ...] = ()            # "evaluate": the K to re-rank at (default: the preset's)
    batch_size: int | None = None       # "evaluate": queries per forward (default: the preset's)
    shift: int = 0                      # "evaluate": every reference image re-encoded shifted by this many pixels


# The base each kind is trained from: the study of the notebook the exercise belongs to, so that its rows and the
# run's are the same recipe (the findings study: R and every variant trained 10 epochs; CaLa and zero-shot: the
# 64-dim mini-BLIP they were measured on).
BASE = {"reranker": ("findings", "tiny"), "evaluate": ("findings", "tiny"), "cala": ("cala", "cala"),
        "zeroshot": ("zeroshot", "baseline")}
SHIFTS = (1, 2, 4, 8)

EXERCISES: dict[str, tuple[ExerciseRun, ...]] = {
    "04.1": (ExerciseRun("R, random batches", "reranker", ("stage2.batch_composition=random",)),),
    "04.3": (ExerciseRun("R, z_t recomputed with dropout", "reranker", ("stage2.z_t=recompute",)),),
    "05.1": (ExerciseRun("R, K up to 200", "evaluate", ks=(5, 10, 20, 50, 100, 200)),),
    "05.2": (ExerciseRun("batch_size = 1", "evaluate", batch_size=1), ExerciseRun("batch_size = 8", "evaluate", batch_size=8)),
    "07.1": (ExerciseRun("Ref_CLS", "reranker", ablation="ref_cls"),),
    "07.2": (ExerciseRun("Full MLP merge", "reranker", ablation="full_mlp"),
             ExerciseRun("Dual FFN", "reranker", ablation="dual_ffn")),
    "07.3": tuple(ExerciseRun(f"{name}, shifted {shift} px", "evaluate", ablation=ablation, shift=shift)
                  for shift in SHIFTS for name, ablation in (("R", None), ("Ref_CLS + spatial", "ref_cls_spatial"))),
    "08.1": (ExerciseRun("cala, the paper's additive form", "cala", ("stage1.cala.form=paper",)),),
    "08.2": (ExerciseRun("cala, TBIA only (w_c = 0)", "cala", ("stage1.cala.w_c=0",)),
             ExerciseRun("cala, CTR only (w_t = 0)", "cala", ("stage1.cala.w_t=0",))),
    "08.3": (ExerciseRun("cala, symmetric CE", "cala", ("stage1.cala.symmetric_ce=true",)),),
    "09.1": (ExerciseRun("injection (top 1) + Stage II 10 %", "zeroshot",
                         ("zeroshot.inject_layers=1", "zeroshot.budget=0.1")),),
    "09.2": (ExerciseRun("Pic2Word's prompt", "zeroshot", ("zeroshot.query_template=a photo of $ , {text}",)),),
    "09.3": (ExerciseRun("the backbone's ITC temperature", "zeroshot", ("zeroshot.temp=null",)),),
    "09.4": (ExerciseRun("Stage II 10 %, no hard negatives", "zeroshot",
                         ("zeroshot.budget=0.1", "zeroshot.hard_negatives=0")),),
    "09.5": (ExerciseRun("injection (top 2), 4 heads", "zeroshot", ("zeroshot.inject_layers=2", "zeroshot.heads=4")),),
}


def run_config(run: ExerciseRun, preset: str = "tiny"):
    """The config `run` trains with: its notebook's study base plus the exercise's overrides."""
    return apply_overrides(variant_config(*BASE[run.kind], preset), list(run.overrides))


def model_dir(run: ExerciseRun, preset: str = "tiny", seed: int = 0) -> Path:
    """The cache folder of `run`'s model; its name is a digest of everything the model depends on."""
    cfg = run_config(run, preset)
    if run.kind in ("reranker", "evaluate"):
        return trained_reranker_dir(cfg, seed, run.ablation)
    return (trained_filter_dir if run.kind == "cala" else trained_zeroshot_dir)(cfg, seed)


def measure(run: ExerciseRun, preset: str = "tiny", seed: int = 0, data=None) -> dict:
    """Train `run`'s model (or find it in the cache) and measure what its exercise compares."""
    cfg = run_config(run, preset)
    data = data or filter_data(cfg)
    if run.kind == "reranker":
        _, metrics = trained_reranker(cfg, seed, run.ablation, data=data)
        return {"metrics": metrics}
    if run.kind == "evaluate":
        return evaluated(run, cfg, seed, data)
    if run.kind == "cala":
        filt, cala, metrics = trained_cala(cfg, seed, data=data)
        with torch.no_grad():
            breakdown = logit_breakdown(CalaObjective(filt, cala).eval(), data.train, data.stores["train"], n_batches=8,
                                        batch_size=cfg.stage1.batch_size, device=data.device)
        return {"metrics": metrics, "logit_breakdown": breakdown}
    model, metrics = trained_zeroshot(cfg, seed, data=data)
    with torch.no_grad():
        alignment = query_alignment(model, data.val, data.stores["val"], device=data.device)
    return {"metrics": metrics, "query_alignment": alignment, "stage1_loss": epoch_means(trained_zeroshot_history(cfg, seed))}


def evaluated(run: ExerciseRun, cfg, seed: int, data) -> dict:
    """The shipped (or cached) filter and re-ranker evaluated as `run` says: its K, batch size and reference shift;
    with the wall time per query of the evaluation (the filter's ranking and the re-ranking)."""
    filt, _ = trained_filter(cfg, seed, data=data)
    model, _ = trained_reranker(cfg, seed, run.ablation, data=data)
    store = data.stores["val"]
    if run.shift:
        references = sorted({q["reference"] for q in data.val.queries})
        store = shifted_references(filt.visual_encoder, data.val, store, references, run.shift)
    start = time.perf_counter()
    with torch.no_grad():
        lists = filter_topk(filt, data.val, store, device=data.device)          # the top 200, as a run's top-K file
        speed = eval_speed(cfg) | ({"batch_size": run.batch_size} if run.batch_size else {})
        metrics = evaluate_reranker(filt, model, data.val, store, lists, run.ks or (cfg.stage2.k,), device=data.device,
                                    **speed)
    return {"metrics": metrics, "seconds_per_query": (time.perf_counter() - start) / len(data.val.queries)}


def make(exercise: str, preset: str = "tiny", seed: int = 0, out: Path | None = None) -> Path:
    """Train and measure every run of `exercise`; write the result file (default: the package's shipped copy)."""
    runs = exercise_runs(exercise)
    result = {"exercise": exercise, "preset": preset, "seed": seed, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "command": f"cirtutor exercise {exercise}" + (f" --preset {preset}" if preset != "tiny" else ""),
              "runs": {}}
    for run in runs:
        print(f"exercise {exercise}: {run.label}")
        result["runs"][run.label] = {"kind": run.kind, "overrides": list(run.overrides), "ablation": run.ablation,
                                     "model": model_dir(run, preset, seed).name, **measure(run, preset, seed)}
    path = Path(out) if out else SHIPPED_EXERCISES / f"{exercise}.json"
    atomic_write_json(path, result)
    return path


def exercise_runs(exercise: str) -> tuple[ExerciseRun, ...]:
    if exercise not in EXERCISES:
        raise CirtutorError(f"no trained result belongs to exercise {exercise!r}; the exercises with one: "
                            f"{', '.join(EXERCISES)} (the others are answered live in solutions/)")
    return EXERCISES[exercise]


def shipped_exercise(exercise: str) -> dict:
    """The shipped result of `exercise` (solutions notebooks), refused if its models are no longer what the
    package's configs would train (then `cirtutor exercise NN.k` makes it again)."""
    runs = exercise_runs(exercise)
    path = SHIPPED_EXERCISES / f"{exercise}.json"
    if not path.is_file():
        raise CirtutorError(f"{path} is missing: make it with `cirtutor exercise {exercise}`")
    result = json.loads(path.read_text())
    for run in runs:
        expected = model_dir(run, result["preset"], result["seed"]).name
        if result["runs"].get(run.label, {}).get("model") != expected:
            raise CirtutorError(f"{path.name} is stale: its row {run.label!r} is not the model {expected} the package "
                                f"trains now; make it again with `{result['command']}`")
    return result


def rows_table(rows: dict[str, dict], keys=("R@1", "R@5", "R@10", "R@50", "Rs@1")) -> str:
    """{row label: metrics} as a fixed-width table of `keys` (solutions notebooks; "—" where a row lacks a key)."""
    width = max(len(label) for label in rows) + 2
    lines = [" " * width + "".join(f"{k:>8s}" for k in keys)]
    for label, metrics in rows.items():
        lines.append(f"{label:{width}s}" + "".join(f"{metrics[k]:8.1f}" if k in metrics else f"{'—':>8s}" for k in keys))
    return "\n".join(lines)
