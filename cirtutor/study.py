"""Seeded comparisons of a preset's variants: the multi-seed tables of the extension notebooks.

A study is a named set of variants, each a list of `--set` overrides on one preset (`STUDIES`),
and a runner (`RUNNERS`) that trains and evaluates one variant for one seed:

* "reproduce" (the CaLa study): the main job (`reproduce.reproduce`, without the ablations) into
  root/<variant>/; each seed's "filter" and "rerank" metrics;
* "findings" (the findings study): the main job with the variants F4-F6 need trained as long as R
  for every seed; each seed's findings record (`findings.seed_records`) and the scorecard;
* "zeroshot" (the zero-shot study): `trained.trained_zeroshot`, into the cache; each seed's
  "zeroshot" metrics. The study also records the training-free reference rows
  (`engine.zeroshot.training_free_baselines`) under "references".

`run_study` runs every variant for seeds 0..n-1 and gathers the metrics and their mean ± std
(`report.mean_std`) into root/study.json:

    cirtutor study cala --preset tiny --seeds 3 --run-dir runs/study-cala     (tiny, as shipped: ~20 min per variant and seed)
    cirtutor study zeroshot --preset tiny --seeds 3                          (tiny: ~1-2 min per variant and seed)
    cirtutor study findings --preset tiny --seeds 3                          (every variant as long as R, every seed)

A variant whose models are already trained reloads them ("found trained …, loading…"), so a
study can be resumed or extended. Training a study is beyond a notebook's time budget, so the
package ships the tiny preset's results (assets/studies/<study>-<preset>.json, `ship_study`); a
notebook loads them with `shipped_study` and re-evaluates the seed-0 models it has itself, to
check the file against them (`check_seed0`).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from cirtutor import findings
from cirtutor.config import TINY_ABLATIONS, apply_overrides, get_preset
from cirtutor.engine.zeroshot import build_zeroshot, training_free_baselines
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_json
from cirtutor.layout import SHIPPED_STUDIES
from cirtutor.report import mean_std
from cirtutor.reproduce import reproduce
from cirtutor.trained import filter_data, trained_zeroshot

# The stage-2 recipe the shipped CaLa study ran with: the tiny preset's until the stage-2 speed work made it shorter (10 epochs
# at BLIP's dropout 0.1, now 6 without dropout). Pinned, so that the study's re-ranker rows stay reproducible.
CALA_STAGE2 = ("stage2.epochs=10", "stage2.dropout=0.1")
STUDIES = {
    "cala": {                                              # notebook 08: CaLa's training-only losses in stage 1
        "plain": CALA_STAGE2,
        "cala": ("stage1.aux=cala", *CALA_STAGE2),         # the authors' loss: raw x10 dot products
        "cala_normalized": ("stage1.aux=cala", "stage1.cala.normalize_aux=true", *CALA_STAGE2),
    },
    "zeroshot": {                                          # notebook 09: Pic2Word's phi and the two-stage framework
        "baseline": (),                                    # phi, "a photo of $ that {text}", images only
        "token_learner": ("zeroshot.mapper=tokens", "zeroshot.k=4"),
        "injection_1": ("zeroshot.inject_layers=1",),      # into the last text layer's input
        "injection": ("zeroshot.inject_layers=2",),
        "soft": ("zeroshot.soft_weight=1",),
        "stage2_1": ("zeroshot.budget=0.01",),             # + Stage II on 1 % of the training triplets
        "stage2_5": ("zeroshot.budget=0.05",),
        "stage2_10": ("zeroshot.budget=0.1",),
        "full": ("zeroshot.mapper=tokens", "zeroshot.k=4", "zeroshot.inject_layers=2", "zeroshot.soft_weight=1",
                 "zeroshot.budget=0.1"),
    },
    "findings": {                                          # notebook 07: the paper's findings over seeds
        "tiny": ("ablations=" + ",".join(TINY_ABLATIONS), "ablation_models=train", "ablation_epochs=None"),
    },
}
# Tiny mode's backbone before its projections were narrowed to BLIP's ratio: the CaLa and zero-shot studies (and the
# models the package ships for them) were measured on the 64-dim mini-BLIP, so in tiny mode they keep running on it.
TINY_PINS = {"cala": ("model.embed_dim=64",), "zeroshot": ("model.embed_dim=64",)}
RUNNERS = {"cala": "reproduce", "zeroshot": "zeroshot", "findings": "findings"}
KEEPS_ABLATIONS = {"findings"}                               # the other studies switch the re-ranker variants off
SHIPPED = SHIPPED_STUDIES                                    # assets/studies/<study>-<preset>.json (`ship_study`)


def variant_overrides(name: str) -> dict[str, tuple[str, ...]]:
    if name not in STUDIES:
        raise CirtutorError(f"unknown study {name!r}; expected one of {', '.join(STUDIES)}")
    return STUDIES[name]


def variant_config(name: str, variant: str, preset: str = "tiny"):
    """The preset with the variant's overrides, as the study runs it: every model trained in the run (never the
    shipped ones), the ablations switched off unless the study keeps them."""
    overrides = variant_overrides(name)
    if variant not in overrides:
        raise CirtutorError(f"study {name!r} has no variant {variant!r}; expected one of {', '.join(overrides)}")
    cfg = get_preset(preset)
    pins = list(TINY_PINS.get(name, ())) if cfg.weights is None else []      # tiny mode: no BLIP weights file
    return apply_overrides(cfg, ["models=train"] + pins + (["ablations=()"] if name not in KEEPS_ABLATIONS else [])
                           + list(overrides[variant]))


def collect(results: dict) -> list[dict]:
    """[{"seed", "filter", "rerank"}] from a reproduce run's results.json (one seed or several)."""
    if results.get("seed_runs"):
        return results["seed_runs"]
    return [{"seed": 0, "filter": results["filter"], "rerank": results["rerank"][f"K={results['k']}"]}]


def stats(runs: list[dict]) -> dict:
    """{stage: {metric: {"mean", "std"}}} over the runs (sample std, as the report's seed table;
    0 for a single run)."""
    out = {}
    for stage in (k for k, v in runs[0].items() if k != "seed" and isinstance(v, dict)):
        keys = [k for k, v in runs[0][stage].items() if isinstance(v, (int, float))]
        if not keys:
            continue
        out[stage] = {k: mean_std([r[stage][k] for r in runs]) if len(runs) > 1
                      else {"mean": float(runs[0][stage][k]), "std": 0.0} for k in keys}
    return out


def run_study(name: str, preset: str = "tiny", seeds: int = 3, root: str | Path | None = None,
              variants: list[str] | None = None) -> dict:
    """Run (or reload) every variant of study `name` for seeds 0..seeds-1 into root/<variant>/ and
    write root/study.json: {"study", "preset", "seeds", "k", "date", "machine", "command",
    "variants": {variant: {"overrides", "runs": [{"seed", stage: metrics}], "stats"}}}. With `variants`,
    only those run, and an existing root/study.json of the same study, preset and seeds keeps the others."""
    root = Path(root or f"runs/study-{name}-{preset}")
    chosen = variants or list(variant_overrides(name))
    unknown = [v for v in chosen if v not in variant_overrides(name)]
    if unknown:
        raise CirtutorError(f"study {name!r} has no variant {unknown[0]!r}; expected one of {', '.join(STUDIES[name])}")
    study = {"study": name, "preset": preset, "seeds": seeds, "date": time.strftime("%Y-%m-%d"),
             "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
             "command": f"cirtutor study {name} --preset {preset} --seeds {seeds}", "variants": {}}
    run_variant = {"reproduce": _run_reproduce, "findings": _run_findings}.get(RUNNERS[name]) \
        or _zeroshot_runner(study, preset)
    for variant in chosen:
        runs = run_variant(variant_config(name, variant, preset), seeds, root / variant, study)
        study["variants"][variant] = {"overrides": list(variant_overrides(name)[variant]), "runs": runs,
                                      "stats": stats(runs)}
    previous = root / "study.json"
    if variants and previous.is_file():                    # a subset run adds to (or redoes part of) the same study
        old = json.loads(previous.read_text())
        if (old["study"], old["preset"], old["seeds"]) == (name, preset, seeds):
            study["variants"] = {v: study["variants"].get(v) or old["variants"][v]
                                 for v in variant_overrides(name) if v in study["variants"] or v in old["variants"]}
            for key in ("k", "references", "dataset", "findings"):   # K, the zeroshot references, the scorecard
                if key in old:
                    study.setdefault(key, old[key])
    atomic_write_json(root / "study.json", study, indent=2)
    return study


def _run_reproduce(cfg, seeds: int, out: Path, study: dict) -> list[dict]:
    """The "reproduce" runner: the main job for `seeds` seeds into `out`."""
    reproduce(cfg, seeds=seeds, out=str(out))
    results = json.loads((out / "results.json").read_text())
    study["k"] = results["k"]
    return collect(results)


def _run_findings(cfg, seeds: int, out: Path, study: dict) -> list[dict]:
    """The "findings" runner: the main job with every variant trained as long as R for every seed,
    then each seed's findings record (`findings.seed_records`) and the scorecard in study["findings"]."""
    reproduce(cfg, seeds=seeds, out=str(out))
    records, dataset = findings.seed_records(out)
    study |= {"k": cfg.stage2.k, "dataset": dataset, "findings": findings.judge(records, dataset)}
    return records


def _zeroshot_runner(study: dict, preset: str):
    """The "zeroshot" runner (the models go to the cache, `trained_zeroshot`); it first records the
    training-free reference rows of the preset's frozen backbone in study["references"]."""
    cfg = variant_config("zeroshot", "baseline", preset)        # the study's backbone (pinned in tiny mode)
    data = filter_data(cfg)
    study["references"] = training_free_baselines(build_zeroshot(data.weights, cfg).to(data.device), data.val,
                                                  data.stores["val"], device=data.device)

    def run(cfg, seeds: int, out: Path, study: dict) -> list[dict]:
        return [{"seed": s, "zeroshot": trained_zeroshot(cfg, s, data=data)[1]} for s in range(seeds)]
    return run


def shipped_study(name: str, preset: str = "tiny") -> dict:
    """The study results the package ships (measured by `run_study`; see the file's "command")."""
    variant_overrides(name)
    path = SHIPPED / f"{name}-{preset}.json"
    if not path.is_file():
        raise CirtutorError(f"no shipped results for study {name!r} on preset {preset!r} ({path}): "
                            f"run `cirtutor study {name} --preset {preset}` and read its study.json")
    return json.loads(path.read_text())


def ship_study(study_json: str | Path, to: Path | None = None) -> Path:
    """Copy a finished study.json into the package's shipped folder."""
    study = json.loads(Path(study_json).read_text())
    path = Path(to or SHIPPED) / f"{study['study']}-{study['preset']}.json"
    return atomic_write_json(path, study, indent=2)


def check_seed0(study: dict, variant: str, stage: str, measured: dict, keys=("R@1", "R@5", "R@10", "R@50", "Rs@1"),
                tol: float = 1e-6) -> None:
    """Raise unless the study's seed-0 `stage` ("filter" | "rerank") metrics of `variant` equal
    `measured` (what the caller just evaluated from the same seed-0 model)."""
    run = next((r for r in study["variants"][variant]["runs"] if r["seed"] == 0), None)
    if run is None:
        raise CirtutorError(f"the study has no seed-0 run of {variant!r}")
    off = {k: (run[stage][k], measured[k]) for k in keys if abs(run[stage][k] - measured[k]) > tol}
    if off:
        raise CirtutorError(f"the shipped study's seed-0 {stage} of {variant!r} differs from the model evaluated "
                            f"here (study, measured): {off}; re-run the study or re-ship the models")


def check_findings_seed0(study: dict, measured: dict, tol: float = 1e-6) -> None:
    """Raise unless the findings study's seed-0 record equals `measured` (`findings.make_record` of the same
    seed-0 models evaluated again, as notebook 07 does): F, R_K, R_K_max, every variant and the rank decrease."""
    run = next((r for r in study["variants"][next(iter(study["variants"]))]["runs"] if r["seed"] == 0), None)
    if run is None:
        raise CirtutorError("the findings study has no seed-0 run")
    pairs = {m: (run[m], measured[m]) for m in ("filter", "rerank", "rerank_max")}
    pairs |= {f"w. {a}": (run["ablations"].get(a), measured["ablations"].get(a))
              for a in set(run["ablations"]) | set(measured["ablations"])}
    off = {name: (a, b) for name, (a, b) in pairs.items()
           if a is None or b is None or set(a) != set(b) or any(abs(a[k] - b[k]) > tol for k in a)}
    if run.get("rank_decrease") is not None and abs(run["rank_decrease"] - measured["rank_decrease"]) > tol:
        off["rank_decrease"] = (run["rank_decrease"], measured["rank_decrease"])
    if off:
        raise CirtutorError(f"the shipped findings study's seed 0 differs from the models evaluated here "
                            f"(study, measured): {off}; re-run the study or re-ship its seed-0 models")


def markdown(rows: dict[str, dict], keys=("R@1", "R@5", "R@10", "R@50", "Rs@1")) -> str:
    """A markdown table of {label: {metric: {"mean", "std"}}}."""
    head = "| " + " | ".join(["variant", *keys]) + " |\n|" + "---|" * (len(keys) + 1) + "\n"
    return head + "\n".join("| " + " | ".join([label, *(f"{stats[k]['mean']:.1f} ± {stats[k]['std']:.1f}" for k in keys)])
                             + " |" for label, stats in rows.items())


def table(study: dict, stage: str, keys=("R@1", "R@5", "R@10", "R@50", "Rs@1"), labels: dict | None = None) -> str:
    """A markdown table of mean ± std over seeds of `stage` ("filter" | "rerank" | "zeroshot") per variant."""
    return markdown({(labels or {}).get(v, v): e["stats"][stage] for v, e in study["variants"].items()}, keys)


def zeroshot_rows(study: dict, supervised: dict | None = None, labels: dict | None = None) -> dict[str, dict]:
    """The rows of the zero-shot comparison, {label: {metric: {"mean", "std"}}}: the training-free
    references of the frozen backbone (deterministic: std 0), every variant of the zero-shot
    study (mean ± std over its seeds) and, given a study with a "plain" variant (the shipped CaLa
    study: the same preset and seeds), the supervised filter F and re-ranker R_K trained on all
    the triplets."""
    fixed = lambda m: {k: {"mean": float(v), "std": 0.0} for k, v in m.items() if isinstance(v, (int, float))}
    rows = {f"{name} (no training)": fixed(m) for name, m in study.get("references", {}).items()}
    rows |= {(labels or {}).get(v, v): e["stats"]["zeroshot"] for v, e in study["variants"].items()}
    if supervised:
        plain = supervised["variants"]["plain"]["stats"]
        rows |= {"supervised filter F": plain["filter"], f"supervised re-ranker R_{supervised['k']}": plain["rerank"]}
    return rows
