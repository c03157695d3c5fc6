"""The main job, stage by stage: what `cirtutor reproduce | train-stage1 | extract-topk |
train-stage2 | evaluate` run (paper §3-§4; docs/authors_code.md, 'Training recipe'; docs/metrics.md).

One run folder holds everything a run makes (`cirtutor/layout.py` names its folders):

    RUN/config.json                      the resolved configuration
    RUN/seed{s}/stage1/last.pt           training checkpoint (resumable), best.pt / final weights
    RUN/seed{s}/stage1/metrics.csv       loss per step; validation.csv per validation
    RUN/seed{s}/topk/                    stage-1 top-K lists of the validation split (our format)
    RUN/seed{s}/stage2[-ablation]/...    the same for the re-ranker and its ablations
    RUN/report.md, metrics.json, figures/   written by `reproduce`

Every stage loads what the previous one wrote, so a run can be continued command by command
and a killed training resumes with --resume. Tiny mode and paper mode share every line here;
only the preset differs (data root, weights, dims, schedule).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from cirtutor import findings
from cirtutor.cache import cache_dir
from cirtutor.config import ABLATIONS, Config, result_fields, validate
from cirtutor.config import settings_diff as config_settings_diff
from cirtutor.data.base import check_targets
from cirtutor.data.folder import ImageFolder
from cirtutor.data.preprocess import ImageTransform
from cirtutor.data.registry import dataset_root, open_dataset
from cirtutor.engine.features import FeatureStore, encode_gallery
from cirtutor.engine.loop import world
from cirtutor.engine.pretrain import mini_blip_folder
from cirtutor.engine.stage1 import FILTER_LIST, encode_queries, evaluate_filter, filter_topk, rank_with_filter, train_stage1
from cirtutor.engine.stage2 import check_same_vision, evaluate_reranker, filter_negatives, hard_pools, score_lists, train_stage2
from cirtutor.engine.zeroshot import (ZEROSHOT_FILE, build_zeroshot, evaluate_zeroshot, load_zeroshot, save_zeroshot,
                                      synthetic_captions, train_composing, train_mapping)
from cirtutor.errors import CirtutorError
from cirtutor.evaluation import TopK, authors_filename, check_lists, load_topk, rank_shift_by_initial, rank_table, save_topk
from cirtutor.io import atomic_write_bytes, atomic_write_json, atomic_write_text, torch_load
from cirtutor.layout import stage_dir
from cirtutor.models import CandidateFilter, DualEncoderReranker
from cirtutor.models.loading import load_filter, load_reranker, reranker_from_filter
from cirtutor.models.zeroshot import ZeroShotEncoder



# ----------------------------------------------------------------------------- plumbing

def resolve_device(cfg: Config) -> torch.device:
    """cfg.device -> a torch device, with a clear error for a GPU that is not there."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CirtutorError(f"device={cfg.device!r} but this machine has no CUDA GPU visible to torch; "
                            "use --set device=cpu (or auto)")
    return device


def is_tiny(cfg: Config) -> bool:
    return cfg.weights is None


def init_weights(cfg: Config, verbose: bool = True) -> Path:
    """The initial weights both stages start from: BLIP (paper) or the pretrained mini-BLIP (tiny)."""
    if is_tiny(cfg):
        return mini_blip_folder(cfg, verbose)
    path = Path(cfg.weights)
    if not path.exists():
        raise CirtutorError(f"initial weights {path} not found: download BLIP's model_base.pth with "
                            "`python data_scripts/download_blip.py --out models` or point --set weights=PATH at it")
    return path


def weights_key(weights: Path) -> str:
    """What identifies the initial weights for the caches: a SHA-256 of their files' contents
    (a file, or a model folder's files) up to 64 MB each, and path + size + modification time
    for larger files (hashing BLIP's 900 MB checkpoint on every run would cost seconds). A new
    mini-BLIP at the same path therefore never reuses features or filters cached for the old one.
    Files are hashed once per process while their size and modification time stay the same."""
    weights = Path(weights).resolve()
    files = sorted(p for p in weights.iterdir() if p.is_file()) if weights.is_dir() else [weights]
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=16)
def _hash_files(stamps: tuple[tuple[str, int, int], ...]) -> str:
    """`weights_key` of files given as (path, size, mtime_ns), memoised on exactly that."""
    h = hashlib.sha256()
    for path, size, mtime_ns in stamps:
        h.update(f"{Path(path).name}\0{size}\0".encode())
        h.update(Path(path).read_bytes() if size <= 64 * 2**20 else f"{path}\0{mtime_ns}".encode())
    return h.hexdigest()


def config_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


@contextmanager
def timed(times: dict, name: str):
    start = time.perf_counter()
    yield
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


def say(message: str) -> None:
    if world()[0] == 0:
        print(message, flush=True)


# ----------------------------------------------------------------------------- data and features

def datasets(cfg: Config):
    """(train queries, validation queries) for the preset, subsampled when cfg.subsample says so."""
    train = open_dataset(cfg.data, "train", load_images=False)
    val = open_dataset(cfg.data, "val", load_images=False)
    if cfg.subsample:
        from cirtutor.data.subsample import subsample
        train, val = subsample(train, val, cfg.subsample, seed=cfg.data.seed)
    check_targets(val)                                       # a target that can never be found is no miss to count
    return train, val


def image_files_key(images, names: list[str] | None = None) -> str:
    """What identifies the image files a feature store encodes: each one's name, size and modification
    time (a missing file is named as such), so a changed, replaced or removed image is noticed."""
    h = hashlib.sha256()
    for name in images.gallery if names is None else names:
        try:
            stat = Path(images.image_path(name)).stat()
            h.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except (OSError, CirtutorError):
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()


def feature_store(cfg: Config, split: str, weights: Path, device, names: list[str] | None = None) -> FeatureStore:
    """Frozen-ViT image tokens of every image of `split` (or only `names`, for a subsample),
    computed once and cached on disk (safetensors, keyed by the weights' contents (`weights_key`)
    + data + resolution + names + the image files themselves (`image_files_key`)); later runs load them."""
    images = open_dataset(cfg.data, split, "gallery")
    if names is not None:
        images.gallery = list(names)
    key = config_digest(weights_key(weights), result_fields(cfg.data), cfg.model.image_size, cfg.model.patch_size,
                        names, image_files_key(images))
    path = cache_dir() / "features" / f"{cfg.data.dataset}-{split}-{key}.safetensors"
    return cached_features(cfg, path, lambda: images, weights, device)


def cached_features(cfg: Config, path: Path, gallery: Callable[[], object], weights: Path, device) -> FeatureStore:
    """The feature store at `path`, or the frozen ViT of `weights` run over `gallery()` (a
    gallery-mode dataset) and saved there first (by rank 0 only under DDP)."""
    if path.is_file():
        return FeatureStore.load(path, mmap=not is_tiny(cfg))               # paper dims: mapped, rows read on demand
    filt, _ = load_filter(weights, cfg.model)
    filt.to(device)
    dtype = torch.float32 if is_tiny(cfg) else torch.float16   # paper dims: 577 x 768 per image, halved on disk
    gallery = gallery()
    store = encode_gallery(filt.encode_images, gallery, batch_size=16 if not is_tiny(cfg) else 64,
                           device=device, dtype=dtype, progress=sys.stderr.isatty())
    if world()[0] == 0:
        store.save(path)
    return store


def feature_stores(cfg: Config, train, val, weights: Path, device) -> dict[str, FeatureStore]:
    """Image tokens of the train and val splits (only the subsample's images when subsampled)."""
    names = (lambda ds: sorted(set(ds.gallery) | {n for q in ds.queries for n in (q["reference"], q.get("target")) if n})
             ) if cfg.subsample else (lambda ds: None)
    return {"train": feature_store(cfg, "train", weights, device, names(train)),
            "val": feature_store(cfg, "val", weights, device, names(val))}


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
    if cfg.stage2.z_t == "cached" and "z_ts" not in shared:
        shared["z_ts"] = encode_queries(filt, train, stores["train"], device=device)[1]
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

def folder_store(cfg: Config, weights: Path, device) -> FeatureStore:
    """Frozen-ViT image tokens of every image under `zeroshot.images`, computed once and cached
    (keyed by the weights' contents, the folder's files (names, sizes, modification times) and the resolution)."""
    folder = ImageFolder(cfg.zeroshot.images, ImageTransform(cfg.data.resolution))
    key = config_digest(weights_key(weights), str(folder.root.resolve()), image_files_key(folder), cfg.data.resolution,
                        cfg.model.image_size, cfg.model.patch_size)
    path = cache_dir() / "features" / f"folder-{folder.root.name}-{key}.safetensors"
    return cached_features(cfg, path, lambda: folder, weights, device)


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


def place_shipped(cfg: Config, run: Path, seed: int) -> bool:
    """models="shipped", seed 0: copy `trained.trained_filter`'s and `trained_reranker`'s weights (tiny: the package's
    shipped models) into the run's stage folders, where `run_stage1` and `run_stage2` find them ("found trained …") and
    the run evaluates them. False (they are then trained in the run) for other seeds or when either is missing."""
    if cfg.models not in ("train", "shipped"):
        raise CirtutorError(f"models={cfg.models!r}; expected 'train' or 'shipped'")
    from cirtutor import trained                                  # trained.py builds on this module

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
    from cirtutor.trained import has_trained_reranker, trained_reranker   # trained.py builds on this module

    if (cfg.ablation_models == "train" or seed != 0
            or not (has_trained_reranker(cfg, 0, ablation) and has_trained_reranker(cfg, 0, None))):
        return run_stage2(cfg, run, seed, filt, ablation=ablation, **inputs)[1], "trained"

    with contextlib.redirect_stdout(io.StringIO()):
        _, metrics = trained_reranker(cfg, 0, ablation, verbose=False)
        _, full = trained_reranker(cfg, 0, None, verbose=False)   # its full model, on the same filter
    out = stage_dir(run, seed, "stage2", ablation)
    k = f"K={cfg.stage2.k}"
    metrics = {**metrics, "source": SHIPPED_SOURCE, "full_model": {k: full[k]}}
    if world()[0] == 0:
        atomic_write_json(out / "metrics.json", metrics, indent=2)
    return metrics, SHIPPED_SOURCE


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages when the run ended (None where the OS has none):
    timings from a busy machine are not comparable."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------- analysis

def inference_times(filt, model, val, stores, device, ks, lists: list[TopK], n: int = 64) -> dict:
    """Fig. 7: wall time per query of the filter (encode the query, rank the gallery) and of
    re-ranking its top-K for each K, on the first `n` queries of the validation split's first retrieval
    group, batch 1 as the authors' evaluation (no keys/values shared across queries: a single query's
    latency). The filter is timed on its own row; the re-ranker re-orders stage 1's `lists` (the run's top-K
    files). Fixed overheads (model loading, image features) are reported apart."""
    group, topk = val.retrieval_groups()[0], check_lists(lists, val, max(ks))[0]
    idx = group.indices[:n]
    start = time.perf_counter()
    rank_with_filter(filt, val, stores["val"], group.gallery, indices=idx, remove_reference=group.remove_reference,
                     top_k=max(ks), device=device)
    filter_s = (time.perf_counter() - start) / len(idx)
    _, z_ts = encode_queries(filt, val, stores["val"], indices=idx, device=device)
    z_all = [None] * len(val.queries)
    for i, z in zip(idx, z_ts):
        z_all[i] = z
    per_query = {}
    for k in ks:
        start = time.perf_counter()
        score_lists(model, val, z_all, stores["val"], topk.sorted_index_names[:len(idx), :k], batch_size=1,
                    device=device, indices=idx, share_kv=False)
        per_query[str(k)] = filter_s + (time.perf_counter() - start) / len(idx)
    return {"filter_per_query_s": filter_s, "per_query_s": per_query, "queries_timed": len(idx)}


def query_item(val, details: dict, row: int, n: int = 6, k: int | None = None) -> dict:
    """Row `row` of an evaluation's `details` as one qualitative item: the reference and text,
    the filter's top `n` and the re-ranked top `n` (names and image paths), the target's name.
    `k`: re-rank only the filter's first k candidates, as R_k does (default: the whole list)."""
    q = val.queries[details["indices"][row]]
    k = len(details["ranked"][row]) if k is None else k
    order = np.argsort(-details["scores"][row][:k], kind="stable")
    names_f = list(details["ranked"][row][:min(n, k)])
    names_r = [details["ranked"][row][j] for j in order[:n]]
    return {"reference": str(val.image_path(q["reference"])), "caption": val.query_text(details["indices"][row]),
            "target": q["target"], "filtered": [(n_, str(val.image_path(n_))) for n_ in names_f],
            "reranked": [(n_, str(val.image_path(n_))) for n_ in names_r]}


def target_gain(details: dict) -> np.ndarray:
    """Per row: how many places re-ranking moved the target up (negative: down; 0 where it is not in the list)."""
    pos = lambda lab: np.where(lab.any(1), lab.argmax(1), 10**6)
    return pos(details["stage1"]) - pos(details["stage2"])


def qualitative_items(val, details: dict, n: int = 4) -> list[dict]:
    """A few validation queries whose target the re-ranker moved up: reference, caption,
    top-6 filtered and top-6 re-ranked (names and image paths) for the qualitative figure."""
    if "stage1" not in details:                               # Fashion-IQ: the first category's lists
        details = next(iter(details.values()))
    gain = target_gain(details)
    rows = [r for r in np.argsort(-gain, kind="stable")[:n] if gain[r] > 0] or list(range(min(n, len(gain))))
    return [query_item(val, details, r) for r in rows]


def rank_analysis(details: dict) -> dict:
    """Table 7 and Fig. 8 over the largest evaluated K (docs/metrics.md, 'Rank analysis')."""
    if "stage1" not in details:                               # Fashion-IQ: pool the categories
        parts = list(details.values())
        s1 = np.concatenate([p["stage1"] for p in parts])
        s2 = np.concatenate([p["stage2"] for p in parts])
    else:
        s1, s2 = details["stage1"], details["stage2"]
    shift = rank_shift_by_initial(s1, s2)
    return {"k": int(s1.shape[1]), "table": rank_table(s1, s2),
            "shift": {key: np.asarray(v).tolist() for key, v in shift.items()}}


def coverage_curve(filter_metrics_labels: np.ndarray, ks=(1, 5, 10, 20, 50, 100, 200)) -> dict:
    from cirtutor.evaluation import coverage_at_k
    width = filter_metrics_labels.shape[1]
    return {str(k): coverage_at_k(filter_metrics_labels, k) for k in ks if k <= width}


# ----------------------------------------------------------------------------- the main job

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
        from cirtutor.report import write_report
        path = write_report(results, run, qualitative)
        atomic_write_json(run / "results.json", results, indent=2)
        say(f"done in {results['wall_time_s']:.0f} s: {path} and {run / 'metrics.json'}")
    return 0
