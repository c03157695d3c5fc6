"""The stages of a run, each into one run folder: what `cirtutor train-stage1 | extract-topk |
train-stage2 | evaluate | zeroshot` run, and `cirtutor reproduce` chains (`cirtutor.reproduce`;
paper §3-§4; docs/authors_code.md, 'Training recipe'; docs/metrics.md).

One run folder holds everything a run makes (`cirtutor/layout.py` names its folders):

    RUN/config.json                      the resolved configuration (`check_run_folder`, `record_run`)
    RUN/seed{s}/stage1/last.pt           training checkpoint (resumable), best.pt / final weights
    RUN/seed{s}/stage1/metrics.csv       loss per step; validation.csv per validation
    RUN/seed{s}/topk/                    stage-1 top-K lists of the validation split (our format)
    RUN/seed{s}/stage2[-ablation]/...    the same for the re-ranker and its ablations
    RUN/report.md, metrics.json, figures/   written by `reproduce`

Every stage loads what the previous one wrote, so a run can be continued command by command
and a killed training resumes with --resume. The inputs every stage starts from (device, initial
weights, datasets, cached image features) come from `cirtutor.features`. Tiny mode and paper mode
share every line here; only the preset differs (data root, weights, dims, schedule).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from cirtutor.config import ABLATIONS, Config, result_fields
from cirtutor.config import settings_diff as config_settings_diff
from cirtutor.data.registry import dataset_root
from cirtutor.engine.loop import world
from cirtutor.engine.stage1 import FILTER_LIST, evaluate_filter, filter_topk, train_stage1
from cirtutor.engine.stage2 import (check_same_vision, evaluate_reranker, filter_negatives, hard_pools, train_stage2,
                                    TrainingZt)
from cirtutor.engine.zeroshot import (ZEROSHOT_FILE, build_zeroshot, evaluate_zeroshot, load_zeroshot, save_zeroshot,
                                      synthetic_captions, train_composing, train_mapping)
from cirtutor.errors import CirtutorError
from cirtutor.evaluation import TopK, authors_filename, check_lists, load_topk, save_topk
from cirtutor.features import folder_store, is_tiny
from cirtutor.io import atomic_write_bytes, atomic_write_json, atomic_write_text, torch_load
from cirtutor.layout import stage_dir
from cirtutor.models import CandidateFilter, DualEncoderReranker
from cirtutor.models.loading import load_filter, load_reranker, reranker_from_filter
from cirtutor.models.zeroshot import ZeroShotEncoder


# ----------------------------------------------------------------------------- plumbing

def config_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def say(message: str) -> None:
    if world()[0] == 0:
        print(message, flush=True)


# ----------------------------------------------------------------------------- stage 1

def stage1_dir(run: Path, seed: int) -> Path:
    return stage_dir(run, seed, "stage1")


def run_stage1(cfg: Config, run: Path, seed: int, *, train, val, stores, weights: Path, device,
               resume: bool = False) -> tuple[CandidateFilter, dict]:
    """Train the candidate filter (Eq. 1), validate as configured, keep the selected weights."""
    out = stage1_dir(run, seed)
    final = out / "filter.pt"
    filt, report = load_filter(weights, cfg.model)
    if final.is_file() and not resume:
        load_weights(filt, final)
        say(f"stage 1 (seed {seed}): found trained filter {final}, loading…")
        return filt.to(device), json.loads((out / "metrics.json").read_text())
    say(f"stage 1 (seed {seed}): {report.summary()}")
    validate = validator(lambda: evaluate_filter(filt, val, stores["val"], device=device), cfg.stage1, filt, out,
                         f"stage 1 (seed {seed})", earlier_validations(out / "last.pt") if resume else [])
    meta = {"stage": 1, "seed": seed, "config": json.dumps(result_fields(cfg.stage1), sort_keys=True)}
    history = train_stage1(filt, train, stores["train"], cfg.stage1, seed=seed, device=device, log=say,
                           log_every=200, on_epoch_end=validate, checkpoint=out / "last.pt", resume=resume, meta=meta)
    finish_training(filt, history, cfg.stage1.select, out, final)
    save_training_only(out)
    metrics = evaluate_filter(filt, val, stores["val"], device=device)
    if world()[0] == 0:
        atomic_write_json(out / "metrics.json", metrics, indent=2)
    return filt, metrics


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Weights a run saved (state dict, loaded safely) into `model`, with a clear error when
    they belong to another architecture."""
    try:
        model.load_state_dict(torch_load(path))
    except RuntimeError as e:
        raise CirtutorError(f"{path} does not fit the preset's model ({str(e).splitlines()[0]}): "
                            "use the --preset and --set the run was trained with") from None
    return model


def earlier_validations(checkpoint: Path) -> list[dict]:
    """The validation rows in a resumable checkpoint's history ([] without a readable one: the
    training loop then says what is wrong with it)."""
    if not Path(checkpoint).is_file():
        return []
    try:
        blob = torch_load(checkpoint)
    except CirtutorError:
        return []
    return list(blob.get("history", {}).get("val", [])) if isinstance(blob, dict) else []


def validator(evaluate, stage_cfg, model: torch.nn.Module, out: Path, label: str, earlier: list[dict] = ()):
    """The `on_epoch_end` callback of a training: every `validate_every` epochs (and after the
    last) evaluate, keep the best weights by the authors' selection score in out/best.pt.
    `earlier`: the validations a resumed run already made, so best.pt is replaced only by a better one."""
    best = {"score": max((float(row["avg"]) for row in earlier if "avg" in row), default=-1.0)}

    def validate(epoch: int) -> dict | None:
        every = stage_cfg.validate_every
        if not every or (epoch + 1) % every and epoch + 1 != stage_cfg.epochs:
            return None
        metrics = evaluate()
        if selection_score(metrics) > best["score"] and world()[0] == 0:
            best["score"] = selection_score(metrics)
            atomic_write_bytes(out / "best.pt", state_bytes(model))
        say(f"{label} epoch {epoch}: {short(metrics)}")
        return flatten(metrics)
    return validate


def finish_training(model: torch.nn.Module, history, select: str, out: Path, final: Path) -> None:
    """Keep the selected weights ("best" on validation, or "last"), write the logs and the weights."""
    if select == "best" and (out / "best.pt").is_file():
        load_weights(model, out / "best.pt")
    if world()[0] == 0:
        write_csv(out / "metrics.csv", history.train)
        write_csv(out / "validation.csv", history.val)
        atomic_write_bytes(final, state_bytes(model))


AUX_MODULES = "aux_modules.safetensors"    # stage 1's training-only modules (CaLa), for inspection


def save_training_only(out: Path) -> None:
    """Keep the training-only modules of a stage-1 run (CaLa's HCA and TAC; none for the plain
    filter) next to filter.pt, as they were at the last checkpoint (the end of training): the filter
    never needs them, notebook 08 looks inside them. The resumable last.pt may be deleted later."""
    last = out / "last.pt"
    if world()[0] != 0 or not last.is_file():
        return
    extra = torch_load(last).get("extra", {})
    if extra:
        atomic_write_bytes(out / AUX_MODULES, save_safetensors({k: v.contiguous() for k, v in extra.items()}))


def state_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def selection_score(metrics: dict) -> float:
    """The authors' model selection (docs/metrics.md, 'Model selection'): CIRR (R@5 + Rs@1) / 2, Fashion-IQ (avg R@10 + avg R@50) / 2."""
    return float(metrics["avg"])


def flatten(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key} {k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def short(metrics: dict) -> str:
    keys = ["R@1", "R@5", "R@10", "R@50", "Rs@1"] if "Rs@1" in metrics else ["R@10", "R@50", "avg"]
    return "  ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)


# ----------------------------------------------------------------------------- top-K

def extract_topk(run: Path, seed: int, filt: CandidateFilter, dataset, store, device, k: int = 200) -> list[Path]:
    """Stage 1's top-K lists of `dataset`'s split, one file per retrieval group, in our pickle-free format
    (docs/data_formats.md, 'Top-K files'): the input of stage 2's evaluation, the rank analysis, the
    timing and the CIRR submission. A longer list of the same split and group is left in place."""
    out, paths = stage_dir(run, seed, "topk"), []
    for topk in filter_topk(filt, dataset, store, k, device):
        if world()[0] == 0:
            paths.append(save_topk(out / authors_filename(topk.k, topk.split, topk.category, ".safetensors"), topk))
    return paths


def _list_k(path: Path) -> int:
    return int(path.name.split("_")[2])                     # cirr_top_{K}_... / fiq_top_{K}_...


def run_topk(run: Path, seed: int, dataset, k: int) -> list[TopK]:
    """The top-K lists `extract_topk` wrote for `dataset`'s split (the longest of each retrieval group),
    checked against the split and cut to nothing: stage 2 reads these, never the filter's ranking."""
    folder, lists = stage_dir(run, seed, "topk"), []
    for g in dataset.retrieval_groups():
        found = sorted(folder.glob(authors_filename("*", dataset.split, g.category, ".safetensors")), key=_list_k)
        if not found:
            split = "" if dataset.split == "val" else f" --split {dataset.split}"
            raise CirtutorError(f"no top-K list of the {dataset.split} split{f' ({g.category})' if g.category else ''} "
                                f"in {folder}: run `cirtutor extract-topk --run-dir {run} --seed {seed}{split}` first")
        lists.append(load_topk(found[-1]))
    return check_lists(lists, dataset, k)


# ----------------------------------------------------------------------------- stage 2

def variant_config(cfg: Config, ablation: str | None) -> Config:
    """The config a re-ranker variant trains with: the ablation's model switches, and the
    re-ranker's own dropout (stage2.dropout) when the preset sets one."""
    cfg = copy.deepcopy(cfg)
    if cfg.stage2.dropout is not None:
        cfg.model.dropout = cfg.stage2.dropout
    if ablation:
        if ablation not in ABLATIONS:
            raise CirtutorError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
        for key, value in ABLATIONS[ablation][1].items():
            setattr(cfg.model, key, value)
    return cfg


def ablation_budget(cfg: Config) -> Config:
    """The config `reproduce` trains the ablations with: stage 2 for `ablation_epochs` (at most
    stage2.epochs) when set, otherwise the full model's recipe unchanged."""
    if cfg.ablation_epochs is not None and cfg.ablation_epochs < 1:
        raise CirtutorError(f"ablation_epochs={cfg.ablation_epochs}: expected at least 1 (or None: stage2.epochs)")
    if cfg.ablation_epochs is None or cfg.ablation_epochs >= cfg.stage2.epochs:
        return cfg
    return dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, epochs=cfg.ablation_epochs))


def stage2_training_inputs(cfg: Config, filt, train, stores, device, shared: dict | None = None):
    """(cached z_t of the training queries, hard-batch pools, filter top-K negatives), each computed
    only when the config needs it, and once per filter when `shared` is passed (the ablations reuse them)."""
    shared = {} if shared is None else shared
    train.set_epoch(0)                  # rank every training query by its first epoch's text, whatever ran before
    if cfg.stage2.z_t == "cached" and "z_ts" not in shared:
        shared["z_ts"] = TrainingZt(filt, train, stores["train"], device=device)
    if cfg.stage2.batch_composition == "hard" and "pools" not in shared:
        shared["pools"] = hard_pools(filt, train, stores["train"], cfg.stage2.hard_pool, device=device)
    if cfg.stage2.negatives == "filter_topk" and "negatives" not in shared:
        shared["negatives"] = filter_negatives(filt, train, stores["train"], cfg.stage2.topk_pool, device=device)
    return shared.get("z_ts"), shared.get("pools"), shared.get("negatives")


def usable_ks(cfg: Config, val) -> tuple[int, ...]:
    """The K values to evaluate (stage2.eval_ks and stage2.k) that fit the validation gallery."""
    longest = min(g.list_length for g in val.retrieval_groups())
    ks = tuple(k for k in sorted(set(cfg.stage2.eval_ks) | {cfg.stage2.k}) if k <= longest)
    if cfg.stage2.k > longest:
        raise CirtutorError(f"stage2.k={cfg.stage2.k} exceeds the validation gallery ({longest} candidates per query)")
    return ks


def eval_speed(cfg: Config) -> dict:
    """How stage-2 evaluation runs (never what it computes): the fast path or one forward per batch of queries."""
    return {"share_kv": cfg.stage2.fast_eval, "batch_size": cfg.stage2.eval_batch_size}


def run_stage2(cfg: Config, run: Path, seed: int, filt: CandidateFilter, *, train, val, stores, weights: Path,
               device, ablation: str | None = None, resume: bool = False, details: dict | None = None,
               shared: dict | None = None) -> tuple[DualEncoderReranker, dict]:
    """Train the re-ranker (Eq. 2) on the filter's z_t, then evaluate F and R_K for every K on stage 1's
    top-K lists of the validation split (`extract_topk`; read and checked before any training).
    `shared` (a dict) keeps the training z_t and hard pools for the next variant of the same filter."""
    cfg = variant_config(cfg, ablation)
    out = stage_dir(run, seed, "stage2", ablation)
    ks = usable_ks(cfg, val) if ablation is None else (cfg.stage2.k,)   # ablation tables report R_K at the main K
    lists = run_topk(run, seed, val, max(*ks, FILTER_LIST))
    torch.manual_seed(seed)                                   # the new head's initialisation
    if cfg.stage2.init == "stage1":
        model, report = reranker_from_filter(filt.cpu(), cfg.model)
        filt.to(device)
    elif cfg.stage2.init == "blip":
        model, report = load_reranker(weights, cfg.model)
    else:
        raise CirtutorError(f"stage2.init={cfg.stage2.init!r}; expected 'blip' or 'stage1'")
    check_same_vision(filt, model)                            # one feature store serves both stages
    final = out / "reranker.pt"
    label = f"stage 2{' (' + ABLATIONS[ablation][0] + ')' if ablation else ''} (seed {seed})"
    if final.is_file() and not resume:
        say(f"{label}: found trained re-ranker {final}, loading…")
        load_weights(model, final)
    else:
        say(f"{label}: {report.summary()}")
        z_ts_train, pools, negatives = stage2_training_inputs(cfg, filt, train, stores, device, shared)
        k = cfg.stage2.k
        validate = validator(lambda: evaluate_reranker(filt, model, val, stores["val"], lists, (k,), device=device,
                                                       **eval_speed(cfg))[f"K={k}"],
                             cfg.stage2, model, out, f"{label} R_{k}",
                             earlier_validations(out / "last.pt") if resume else [])
        meta = {"stage": 2, "seed": seed, "ablation": ablation or "",
                "config": json.dumps([result_fields(cfg.stage2), result_fields(cfg.model)], sort_keys=True)}
        history = train_stage2(model, train, z_ts_train, stores["train"], cfg.stage2, pools=pools, negatives=negatives,
                               seed=seed, device=device, filter_model=filt, log=say, log_every=200, on_epoch_end=validate,
                               checkpoint=out / "last.pt", resume=resume, meta=meta)
        finish_training(model, history, cfg.stage2.select, out, final)
    model.to(device)
    metrics = evaluate_reranker(filt, model, val, stores["val"], lists, ks, device=device, details=details,
                                **eval_speed(cfg))
    if world()[0] == 0:
        atomic_write_json(out / "metrics.json", metrics, indent=2)
    return model, metrics


# ----------------------------------------------------------------------------- zero-shot (notebook 09)

def zeroshot_dir(run: Path, seed: int) -> Path:
    return stage_dir(run, seed, "zeroshot")


def run_zeroshot(cfg: Config, run: Path, seed: int, *, train, val, stores, weights: Path, device,
                 log=print) -> tuple[ZeroShotEncoder, dict]:
    """Stage I on the training split's images (tiny mode: with the synthetic captions) or on the
    folder `zeroshot.images`, Stage II when `zeroshot.budget` > 0, then zero-shot evaluation on
    the validation split. Writes
    run/seed{s}/zeroshot/{zeroshot.safetensors, metrics.json, stage1.csv[, stage2.csv]}."""
    z, out = cfg.zeroshot, zeroshot_dir(run, seed)
    model = build_zeroshot(weights, cfg, seed)
    final = out / ZEROSHOT_FILE
    if final.is_file():
        log(f"zero-shot (seed {seed}): found trained model {final}, loading…")
        load_zeroshot(model, final).to(device)
    else:
        if z.images:                                         # a plain folder has no captions: soft_weight is refused
            store, captions = folder_store(cfg, weights, device), None
            names = list(store.names)
        else:
            store, names = stores["train"], list(train.gallery)
            captions = synthetic_captions(dataset_root(cfg.data, verbose=False), "train") if is_tiny(cfg) and z.soft_weight else None
        history = train_mapping(model, store, names, z, captions=captions, seed=seed, device=device, log=log)
        write_csv(out / "stage1.csv", history.train)
        if z.budget:
            history, used = train_composing(model, train, stores["train"], z, seed=seed, device=device, log=log)
            write_csv(out / "stage2.csv", history.train)
            atomic_write_json(out / "stage2_queries.json", used)
        save_zeroshot(model, final)
    metrics = evaluate_zeroshot(model.eval(), val, stores["val"], device=device)
    atomic_write_json(out / "metrics.json", metrics, indent=2)
    return model, metrics


# ----------------------------------------------------------------------------- run folders

def new_run_folder(cfg: Config, out: str | None) -> Path:
    if out:
        return Path(out)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path(cfg.out_dir) / f"{cfg.name}-{stamp}"


RUN_CONFIG = "config.json"        # the settings a run folder's models were trained with
RUN_OUTPUTS = ("seed*", "submission", "figures", "report.md", "metrics.json", "results.json", RUN_CONFIG)


def check_run_folder(cfg: Config, run: Path, overwrite: bool = False, retrain: str = "--overwrite") -> Path:
    """Refuse, before any work, a run folder that is a file, or that holds models trained with other
    result-changing settings (speed-only switches and the device never count) unless `overwrite`
    (they are removed by `record_run`). `retrain` says how to start the folder afresh."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise CirtutorError(f"--run-dir {run} is a file, not a folder: choose a new folder or an earlier run's")
    saved = run / RUN_CONFIG
    if overwrite or not saved.is_file():
        return run
    try:
        before = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        raise CirtutorError(f"{saved} is unreadable ({e}): use a new --run-dir, or {retrain}") from None
    diff = config_settings_diff(before, cfg)
    if diff:
        raise CirtutorError(f"{run} holds a run with other settings ({'; '.join(diff[:6])}"
                            f"{'; …' if len(diff) > 6 else ''}): use a new --run-dir, or {retrain} "
                            "to replace its models")
    return run


def record_run(cfg: Config, run: Path, overwrite: bool = False) -> None:
    """Write the run's settings into `run`, once a command has checked everything it needs;
    with `overwrite`, first remove what an earlier run left there (models, lists, reports)."""
    rank, size = world()
    if rank == 0:
        if overwrite and run.is_dir():
            for pattern in RUN_OUTPUTS:
                for path in run.glob(pattern):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / RUN_CONFIG, config_dict(cfg), indent=2)
    if size > 1:                                             # no rank looks into the folder before it is ready
        torch.distributed.barrier()
