"""A trained stage-1 filter for the notebooks, kept in the cache (paper §3.1, Eq. 1).

Notebooks should not make a reader wait for training they have already seen explained, so
`trained_filter(cfg, seed)` trains the candidate filter once with the package's own stage 1
(`cirtutor.pipeline.run_stage1`, what `cirtutor train-stage1` runs) into a run folder in the
cache, and every later call loads it ("found trained tiny filter (tiny), loading…"):

    cache_dir()/trained/{preset}-{digest}/config.json
                                         /seed{s}/stage1/filter.pt       the trained weights
                                         /seed{s}/stage1/metrics.json    its validation metrics
                                         /seed{s}/stage1/metrics.csv     loss and lr per step

The digest covers everything the weights depend on: the data, model and stage-1 sections of
the config, the initial weights' contents (`weights_key`), the subsample and the seed. The folder appears only when the
training has finished (`cirtutor.cache.cached` builds it under a temporary name).

`trained_reranker(cfg, seed, ablation)` does the same for stage 2 (`run_stage2` on the cached
filter), for the main re-ranker and each ablation, under cache_dir()/trained/{preset}-reranker-{digest}/,
and `trained_zeroshot(cfg, seed)` for the zero-shot models (`pipeline.run_zeroshot`: the
data, model and zeroshot sections) under cache_dir()/trained/{preset}-zeroshot-{digest}/.

Also here: `filter_data` (what stage 1 trains and evaluates on, in one object) and
`batch_breakdown` (Eq. 1 on batches of one composition, and where each query's softmax goes:
its own target, its same-reference siblings, other scenes; notebook 02's hard-negative test).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from cirtutor.cache import cache_dir, cached
from cirtutor.compact import pack, unpack
from cirtutor.config import ABLATIONS, Config, result_fields, settings_diff
from cirtutor.data.registry import dataset_root
from cirtutor.engine.features import FeatureStore
from cirtutor.engine.stage1 import first_batches
from cirtutor.engine.zeroshot import ZEROSHOT_FILE, build_zeroshot, describe, load_zeroshot
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_write_bytes, atomic_write_json
from cirtutor.layout import stage_dir
from cirtutor.models import CandidateFilter, DualEncoderReranker
from cirtutor.models.cala import CaLa
from cirtutor.models.zeroshot import ZeroShotEncoder
from cirtutor.models.loading import load_filter, load_reranker, reranker_from_filter
from cirtutor.features import config_digest, datasets, feature_stores, init_weights, is_tiny, resolve_device, weights_key
from cirtutor.pipeline import (AUX_MODULES, config_dict, extract_topk, load_weights, run_stage1, run_stage2, run_zeroshot,
                               stage1_dir, state_bytes, variant_config, zeroshot_dir)

SHIPPED = Path(__file__).resolve().parent / "assets" / "trained"   # compact copies of the tiny models (`ship`)
COMPACT = "model.compact.safetensors"


@dataclasses.dataclass
class FilterData:
    """What stage 1 trains and evaluates on, for one preset."""
    train: object                       # training queries (queries-mode dataset)
    val: object                         # validation queries, with the split's gallery
    stores: dict[str, FeatureStore]     # "train" / "val": frozen-ViT image tokens (N, L_v, d_v) by image name
    weights: Path                       # the initial weights (BLIP, or the pretrained mini-BLIP)
    device: torch.device


def filter_data(cfg: Config, verbose: bool = True) -> FilterData:
    """The preset's datasets, initial weights and cached image features, as `reproduce` opens them."""
    dataset_root(cfg.data, verbose=verbose)          # tiny mode: the synthetic world, built once into the cache
    train, val = datasets(cfg)
    weights = init_weights(cfg)
    device = resolve_device(cfg)
    return FilterData(train, val, feature_stores(cfg, train, val, weights, device), weights, device)


def _digest(cfg: Config, seed: int, reranker: bool = False, ablation: str | None = None) -> str:
    """A digest of what a trained model depends on: the data, model and stage-1 config (and
    stage 2's for a re-ranker), the initial weights' contents, the subsample, the seed (and the ablation)."""
    sections = [cfg.data, cfg.model, cfg.stage1] + ([cfg.stage2] if reranker else [])
    return config_digest(*map(result_fields, sections), weights_key(init_weights(cfg, verbose=False)),
                         cfg.subsample, seed, *([ablation] if reranker else []))


def trained_filter_dir(cfg: Config, seed: int = 0) -> Path:
    """The cache folder of the filter `trained_filter(cfg, seed)` returns (it may not exist yet)."""
    return cache_dir() / "trained" / f"{cfg.name}-{_digest(cfg, seed)}"


def trained_filter(cfg: Config, seed: int = 0, verbose: bool = True,
                   data: FilterData | None = None) -> tuple[CandidateFilter, dict]:
    """(the trained candidate filter in eval mode on the preset's device, its validation
    metrics): loaded from the cache, or trained there first with `run_stage1` (tiny mode:
    about 4 minutes on 2 CPU cores). Pass `data` to reuse already opened datasets and
    features. The caller's random-number state is left as it was."""
    folder = trained_filter_dir(cfg, seed)
    cost = "about 4 minutes on 2 CPU cores" if is_tiny(cfg) else "hours on one large GPU"
    _ensure(cfg, folder, "filter", f"stage 1, {cost}", verbose, kind="filter", seed=seed, ablation=None, data=data)
    return _load(cfg, folder, "filter", lambda: CandidateFilter(cfg.model), seed, None)


def has_trained_filter(cfg: Config, seed: int = 0) -> bool:
    """Whether `trained_filter(cfg, seed)` would load rather than train: its model is in the cache or shipped."""
    return _available(trained_filter_dir(cfg, seed))


def _available(folder: Path) -> bool:
    """A trained model's cache folder exists, or the package ships it."""
    return folder.exists() or (SHIPPED / folder.name).is_dir()


def _ensure(cfg: Config, folder: Path, name: str, how: str, verbose: bool, *, kind: str, seed: int,
            ablation: str | None, data: FilterData | None) -> None:
    """Make the cache folder of a trained model of `kind` ("filter" | "reranker") exist: already there
    ("found …"), unpacked from a shipped compact copy ("found shipped …"), or trained ("no trained … training one")."""
    what = f"trained {'tiny ' if is_tiny(cfg) else ''}{name} ({cfg.name})"
    rel = str(folder.relative_to(cache_dir()))
    if folder.exists():
        if verbose:
            print(f"found {what}, loading…")
    elif (SHIPPED / folder.name).is_dir():
        if verbose:
            print(f"found shipped {what}, loading…")
        cached(rel, lambda tmp: _unship(cfg, seed, ablation, kind, folder.name, tmp), what, verbose=False)
    else:
        if verbose:
            print(f"no trained {name} in the cache: training one ({how})…", flush=True)
        cached(rel, lambda tmp: _train(cfg, seed, ablation, kind, tmp, data, verbose), what, verbose=False)


def _load(cfg: Config, folder: Path, kind: str, build, seed: int, ablation: str | None) -> tuple[torch.nn.Module, dict]:
    """(the finished model of `kind` in `folder`, built by `build()` and loaded, in eval mode on the
    preset's device; its validation metrics). The caller's random-number state is left as it was."""
    out = _run_dir(folder, seed, ablation, kind)
    if not (out / f"{kind}.pt").is_file() or not (out / "metrics.json").is_file():
        label = "filter" if kind == "filter" else "re-ranker"
        raise CirtutorError(f"{folder} holds no finished {label}: delete the folder and it is trained again")
    with torch.random.fork_rng():                      # building the module draws random weights: not the caller's
        model = build()
    load_weights(model, out / f"{kind}.pt")
    return model.to(resolve_device(cfg)).eval(), json.loads((out / "metrics.json").read_text())


def _train(cfg: Config, seed: int, ablation: str | None, kind: str, run: Path, data: FilterData | None,
           verbose: bool) -> None:
    """Stage 1 (kind "filter"), or stage 2 on the cached trained filter (kind "reranker"), into the
    run folder `run` (a temporary folder that `cached` renames when done)."""
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with torch.random.fork_rng(), torch.enable_grad(), quiet:        # a caller may have switched gradients off
        data = data or filter_data(cfg, verbose)
        atomic_write_json(run / "config.json", config_dict(cfg), indent=2)
        inputs = dict(train=data.train, val=data.val, stores=data.stores, weights=data.weights, device=data.device)
        if kind == "filter":
            run_stage1(cfg, run, seed, **inputs)
        elif kind == "zeroshot":
            run_zeroshot(cfg, run, seed, log=print, **inputs)
        else:
            filt = trained_filter(cfg, seed, verbose, data)[0]
            extract_topk(run, seed, filt, data.val, data.stores["val"], data.device)     # stage 2's input
            run_stage2(cfg, run, seed, filt, ablation=ablation, **inputs)
    for spare in ("last.pt", "best.pt"):     # the resumable checkpoint and the best-so-far copy: <kind>.pt has the result
        (_run_dir(run, seed, ablation, kind) / spare).unlink(missing_ok=True)


def trained_cala(cfg: Config, seed: int = 0, verbose: bool = True, data: FilterData | None = None) -> tuple[CandidateFilter, CaLa, dict]:
    """(the CaLa-trained filter, its training-only CaLa modules (HCA, TAC) in eval mode, the
    filter's validation metrics) for a preset with stage1.aux="cala": `trained_filter`'s cache,
    plus the modules its stage 1 kept beside the filter (`pipeline.save_training_only`)."""
    if cfg.stage1.aux != "cala":
        raise CirtutorError(f"trained_cala needs stage1.aux='cala' (this config has {cfg.stage1.aux!r}): "
                            "apply_overrides(cfg, ['stage1.aux=cala'])")
    filt, metrics = trained_filter(cfg, seed, verbose, data)
    path = stage1_dir(trained_filter_dir(cfg, seed), seed) / AUX_MODULES
    if not path.is_file():
        raise CirtutorError(f"{path} is missing: this filter was trained before its CaLa modules were kept; "
                            f"delete {trained_filter_dir(cfg, seed)} and it is trained again")
    with torch.random.fork_rng():
        cala = CaLa(cfg.model.text_width, cfg.model.vision_width, cfg.stage1.cala)
    cala.load_state_dict({k.removeprefix("cala."): v for k, v in load_file(path).items()})
    return filt, cala.to(resolve_device(cfg)).eval(), metrics


def trained_reranker_dir(cfg: Config, seed: int = 0, ablation: str | None = None) -> Path:
    """The cache folder of the re-ranker `trained_reranker(cfg, seed, ablation)` returns (it may not exist yet)."""
    return cache_dir() / "trained" / f"{cfg.name}-reranker-{_digest(cfg, seed, reranker=True, ablation=ablation)}"


def has_trained_reranker(cfg: Config, seed: int = 0, ablation: str | None = None) -> bool:
    """Whether `trained_reranker(cfg, seed, ablation)` would load rather than train: its model is in the
    cache or shipped with the package."""
    return _available(trained_reranker_dir(cfg, seed, ablation))


def trained_reranker(cfg: Config, seed: int = 0, ablation: str | None = None, verbose: bool = True,
                     data: FilterData | None = None) -> tuple[DualEncoderReranker, dict]:
    """(the trained re-ranker in eval mode on the preset's device, its validation metrics: "filter"
    and "K=k" for each evaluated K): loaded from the cache, or trained there first with
    `run_stage2` on `trained_filter(cfg, seed)` (tiny mode, measured at one thread: 23 minutes for the
    full model or Ref_CLS + spatial, 15 for w/o Encoder-t or w/o Encoder-z_t, plus the filter's 4).
    `ablation`: a variant of `ABLATIONS` ("no_text", "no_zt", ...). The caller's random-number
    state is left as it was."""
    if ablation is not None and ablation not in ABLATIONS:
        raise CirtutorError(f"unknown ablation {ablation!r}; expected one of {', '.join(ABLATIONS)}")
    folder = trained_reranker_dir(cfg, seed, ablation)
    name = f"re-ranker{' (' + ABLATIONS[ablation][0] + ')' if ablation else ''}"
    cost = "15 to 25 minutes on 2 CPU cores" if is_tiny(cfg) else "hours on one large GPU"
    _ensure(cfg, folder, name, f"stage 2, {cost}", verbose, kind="reranker", seed=seed, ablation=ablation, data=data)
    return _load(cfg, folder, "reranker", lambda: DualEncoderReranker(variant_config(cfg, ablation).model), seed,
                 ablation)


def trained_zeroshot_dir(cfg: Config, seed: int = 0) -> Path:
    """The cache folder of the zero-shot model `trained_zeroshot(cfg, seed)` returns (it may not exist yet)."""
    digest = config_digest(*map(result_fields, (cfg.data, cfg.model, cfg.zeroshot)),
                           weights_key(init_weights(cfg, verbose=False)), cfg.subsample, seed)
    return cache_dir() / "trained" / f"{cfg.name}-zeroshot-{digest}"


def trained_zeroshot(cfg: Config, seed: int = 0, verbose: bool = True,
                     data: FilterData | None = None) -> tuple[ZeroShotEncoder, dict]:
    """(the zero-shot model of `cfg.zeroshot` in eval mode on the preset's device, its zero-shot
    validation metrics): loaded from the cache, or trained there first with `run_zeroshot`
    (tiny mode, 2 CPU cores: about 1 minute for Stage I, 1 more for Stage II at a 10 % budget)."""
    folder = trained_zeroshot_dir(cfg, seed)
    cost = "about 1 to 2 minutes on 2 CPU cores" if is_tiny(cfg) else "hours on one large GPU"
    _ensure(cfg, folder, f"zero-shot model [{describe(cfg.zeroshot)}]", cost, verbose, kind="zeroshot",
            seed=seed, ablation=None, data=data)
    out = zeroshot_dir(folder, seed)
    if not (out / ZEROSHOT_FILE).is_file() or not (out / "metrics.json").is_file():
        raise CirtutorError(f"{folder} holds no finished zero-shot model: delete the folder and it is trained again")
    with contextlib.redirect_stdout(io.StringIO()):
        model = load_zeroshot(build_zeroshot(init_weights(cfg, verbose=False), cfg, seed), out / ZEROSHOT_FILE)
    return model.to(resolve_device(cfg)).eval(), json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------------- shipped copies

def _start(cfg: Config, seed: int, ablation: str | None, kind: str) -> torch.nn.Module:
    """The module a model of `kind` ("filter" | "reranker") starts training from, as the stages build it."""
    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):
        weights = init_weights(cfg, verbose=False)
        if kind == "filter":
            return load_filter(weights, cfg.model)[0]
        vcfg = variant_config(cfg, ablation)
        if cfg.stage2.init == "stage1":
            return reranker_from_filter(trained_filter(cfg, seed, verbose=False)[0].cpu(), vcfg.model)[0]
        return load_reranker(weights, vcfg.model)[0]


STAGE_OF = {"filter": "stage1", "reranker": "stage2", "zeroshot": "zeroshot"}    # a model kind's stage folder


def _run_dir(run: Path, seed: int, ablation: str | None, kind: str) -> Path:
    return stage_dir(run, seed, STAGE_OF[kind], ablation)


def _model_dir(cfg: Config, seed: int, ablation: str | None, kind: str) -> Path:
    if kind == "zeroshot":
        return trained_zeroshot_dir(cfg, seed)
    return trained_filter_dir(cfg, seed) if kind == "filter" else trained_reranker_dir(cfg, seed, ablation)


def adopt(cfg: Config, run: str | Path, seed: int = 0, ablation: str | None = None, kind: str = "reranker") -> Path:
    """Make a model a run folder trained (`cirtutor reproduce`, a study's seed) the cache's trained model of `kind`
    ("filter" | "reranker") for `cfg`, so that `trained_filter` / `trained_reranker` load it and `ship` can ship it.
    The run's config.json must agree with `cfg` on everything the model depends on (data, model, subsample, weights,
    stage 1, and stage 2 for a re-ranker). Returns the cache folder; one already there is left as it is."""
    run = Path(run)
    source = _run_dir(run, seed, ablation, kind)
    if not (source / f"{kind}.pt").is_file() or not (run / "config.json").is_file():
        raise CirtutorError(f"{source} holds no finished {kind} (and {run} a config.json): train it first")
    sections = ("data.", "model.", "stage1.", "subsample", "weights") + (("stage2.",) if kind == "reranker" else ())
    diff = [line for line in settings_diff(json.loads((run / "config.json").read_text()), cfg)
            if line.startswith(sections)]
    if diff:
        raise CirtutorError(f"{run} was trained with other settings than this config ({'; '.join(diff[:4])})")
    folder = _model_dir(cfg, seed, ablation, kind)

    def copy(tmp: Path) -> None:
        out = _run_dir(tmp, seed, ablation, kind)
        for f in (f"{kind}.pt", *RECORDS[kind][0], *RECORDS[kind][1]):
            if (source / f).is_file():
                atomic_write_bytes(out / f, (source / f).read_bytes())
        atomic_write_json(tmp / "config.json", config_dict(cfg), indent=2)
    if not folder.exists():
        cached(str(folder.relative_to(cache_dir())), copy, f"trained {kind} from {run}", verbose=False)
    return folder


def ship(cfg: Config, seed: int = 0, ablation: str | None = None, kind: str = "reranker", to: Path | None = None) -> Path:
    """Copy the cached trained model of `kind` ("filter" | "reranker", with `ablation` | "zeroshot")
    into the package's shipped folder (`to`, default SHIPPED), with its metrics and loss logs, so
    that a fresh clone loads it instead of training it: a filter or re-ranker in compact form
    (`cirtutor.compact`), a zero-shot model's trained parts as they are (under 1 MB). Returns the folder."""
    folder = _model_dir(cfg, seed, ablation, kind)
    source = _run_dir(folder, seed, ablation, kind)
    weights = ZEROSHOT_FILE if kind == "zeroshot" else f"{kind}.pt"
    if not (source / weights).is_file():
        raise CirtutorError(f"no trained {kind} in the cache at {source}: build it first (trained_{kind}(cfg, seed))")
    target = Path(to or SHIPPED) / folder.name
    out = _run_dir(target, seed, ablation, kind)
    if kind != "zeroshot":
        model = _start(cfg, seed, ablation, kind)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        load_weights(model, source / f"{kind}.pt")
        packed = pack(model.state_dict(), start, trainable)
        atomic_write_bytes(out / COMPACT, save({k: v.contiguous() for k, v in packed.items()}))
    _copy_records(source, out, kind)
    atomic_write_bytes(target / "config.json", (folder / "config.json").read_bytes())
    return target


RECORDS = {"filter": (("metrics.json", "metrics.csv"), (AUX_MODULES,)),      # (always, when present)
           "reranker": (("metrics.json", "metrics.csv"), ()),
           "zeroshot": ((ZEROSHOT_FILE, "metrics.json", "stage1.csv"), ("stage2.csv", "stage2_queries.json"))}


def _copy_records(source: Path, out: Path, kind: str) -> None:
    """What travels with a model besides its compact weights: its metrics, its loss logs and, for
    a CaLa filter, its training-only modules (a zero-shot model: all of it, weights included)."""
    always, optional = RECORDS[kind]
    for name in always + tuple(n for n in optional if (source / n).is_file()):
        atomic_write_bytes(out / name, (source / name).read_bytes())


def _unship(cfg: Config, seed: int, ablation: str | None, kind: str, name: str, run: Path) -> None:
    """Rebuild a shipped compact model into the run folder `run` (renamed into the cache by `cached`)."""
    source, out = _run_dir(SHIPPED / name, seed, ablation, kind), _run_dir(run, seed, ablation, kind)
    if kind != "zeroshot":
        model = _start(cfg, seed, ablation, kind)
        model.load_state_dict(unpack(load_file(source / COMPACT), model.state_dict()))
        atomic_write_bytes(out / f"{kind}.pt", state_bytes(model))
    _copy_records(source, out, kind)
    atomic_write_bytes(run / "config.json", (SHIPPED / name / "config.json").read_bytes())


def trained_filter_history(cfg: Config, seed: int = 0) -> list[dict]:
    """The training loss of the cached filter, one row per step: {"step", "epoch", "loss", "lr"}."""
    path = stage1_dir(trained_filter_dir(cfg, seed), seed) / "metrics.csv"
    return _history(path, f"no trained filter for preset {cfg.name!r}, seed {seed} in the cache: "
                          "call trained_filter(cfg, seed) first")


def trained_zeroshot_history(cfg: Config, seed: int = 0, stage: int = 1) -> list[dict]:
    """The training loss of the cached zero-shot model's Stage I (stage=1) or II, one row per step."""
    path = zeroshot_dir(trained_zeroshot_dir(cfg, seed), seed) / f"stage{stage}.csv"
    return _history(path, f"no Stage {'I' * stage} log for this zero-shot config, seed {seed}, in the cache: call "
                          f"trained_zeroshot(cfg, seed) first{' (Stage II needs zeroshot.budget > 0)' if stage == 2 else ''}")


def _history(path: Path, missing: str) -> list[dict]:
    if not path.is_file():
        raise CirtutorError(missing)
    with path.open(newline="") as f:
        return [{k: int(v) if k in ("step", "epoch") else float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@torch.no_grad()
def batch_breakdown(model: CandidateFilter, dataset, store: FeatureStore, composition: str, batch_size: int,
                    n_batches: int, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Eq. 1 on the first `n_batches` batches that `batch_order` makes with `composition`
    ("random" or "reference_groups") from a generator seeded by `seed`, the model in eval mode
    (dropout off) at its own temperature. Per batch, (n,) each:

    * "loss": Eq. 1;
    * "p target": the softmax probability a query gives its own target, mean over the batch;
    * "p same reference": the probability it gives the targets of the batch's other queries
      with the same reference (its siblings: other edits of the same image), summed, mean;
    * "p other references": the probability it gives all remaining targets, summed, mean;
    * "siblings": how many same-reference queries each query has in the batch, mean."""
    model.eval()
    rows = []
    for batch, (ids, text_mask, ref_feats, target_feats) in first_batches(dataset, store, batch_size, composition,
                                                                         n_batches, seed, device):
        query_emb, _ = model(ids, text_mask, ref_feats)                       # (B, e)
        target_emb = model.gallery_embed(target_feats)                        # (B, e)
        p = model.logits(query_emb, target_emb).float().softmax(dim=1).cpu()  # (B, B): row = query
        refs = [dataset.queries[i]["reference"] for i in batch]
        own = torch.eye(len(batch), dtype=torch.bool)
        sibling = torch.tensor([[a == b for b in refs] for a in refs]) & ~own  # (B, B) same reference, not itself
        rows.append([model.loss(query_emb.float(), target_emb.float()).item(), p[own].mean().item(),
                     (p * sibling).sum(1).mean().item(), (p * ~(sibling | own)).sum(1).mean().item(),
                     sibling.sum(1).float().mean().item()])
    keys = ("loss", "p target", "p same reference", "p other references", "siblings")
    return dict(zip(keys, torch.tensor(rows).T))
