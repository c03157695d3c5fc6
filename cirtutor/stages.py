"""The per-stage commands (`cirtutor train-stage1 | extract-topk | train-stage2 | evaluate |
submit | analyze`): each loads what the previous stage left in the run folder and runs one
step of `cirtutor.pipeline`. `reproduce` (`cirtutor.reproduce`) runs them all in one go."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cirtutor import pipeline as P
from cirtutor.config import Config, validate
from cirtutor.data.registry import dataset_class, open_dataset
from cirtutor.engine.stage1 import encode_queries
from cirtutor.engine.stage2 import check_same_vision, score_lists
from cirtutor.engine.zeroshot import describe
from cirtutor.errors import CirtutorError
from cirtutor.evaluation import (load_topk, rank_shift_by_initial, rank_table, recall_at_k, subset_ranking_by_scores,
                                 target_positions, validate_cirr_submission, write_cirr_submission)
from cirtutor.evaluation.rank_analysis import paired_positions
from cirtutor.evaluation.submission import LENGTHS
from cirtutor.evaluation.topk import _torch_load, authors_topk
from cirtutor.features import datasets, feature_store, feature_stores, init_weights, resolve_device
from cirtutor.io import atomic_write_json, plain_text
from cirtutor.layout import stage_dir
from cirtutor.models.loading import load_filter, load_reranker
from cirtutor.report import save_figure
from cirtutor.viz import plot_rank_shift


STARTS_AFRESH = ("train-stage1", "zeroshot")      # the commands that train from the initial weights


def context(cfg: Config, args, needs: tuple[str, ...] = (), data: bool = True) -> dict:
    """What a command works with (device, run folder, initial weights and, with `data`, the train and
    val datasets and their image features), after checking, before any work, the run folder and the
    files `needs` in it (relative paths); the run's config.json is written only once all of that holds."""
    validate(cfg)
    device = resolve_device(cfg)
    overwrite = getattr(args, "overwrite", False)
    if overwrite and getattr(args, "resume", False):
        raise CirtutorError("--resume continues the run folder's training and --overwrite removes it: pass one")
    retrain = "pass --overwrite" if args.command in STARTS_AFRESH else "start it again with `cirtutor train-stage1 --overwrite`"
    run = P.check_run_folder(cfg, Path(args.run), overwrite, retrain)
    check_needs(run, needs, args)
    ctx = dict(device=device, run=run, weights=init_weights(cfg))
    if data:
        ctx["train"], ctx["val"] = datasets(cfg)
        ctx["stores"] = feature_stores(cfg, ctx["train"], ctx["val"], ctx["weights"], device)
        if args.command in ("train-stage2", "evaluate"):
            P.usable_ks(cfg, ctx["val"])
    P.record_run(cfg, run, overwrite)
    return ctx


MAKERS = {"filter.pt": ("filter", "train-stage1"), "reranker.pt": ("re-ranker", "train-stage2")}


def check_needs(run: Path, needs: tuple[str, ...], args) -> None:
    """A one-line error naming the command that makes the first of the files `needs` missing from `run`."""
    ablation = f" --ablation {args.ablation}" if getattr(args, "ablation", None) else ""
    for need in needs:
        if not (run / need).is_file():
            what, command = MAKERS[Path(need).name]
            raise CirtutorError(f"no trained {what} at {run / need}: run `cirtutor {command} --run-dir {run}"
                                f"{ablation if command == 'train-stage2' else ''}` first")


def trained_filter(cfg: Config, ctx: dict, seed: int):
    path = P.stage1_dir(ctx["run"], seed) / "filter.pt"
    if not path.is_file():
        raise CirtutorError(f"no trained filter at {path}: run `cirtutor train-stage1 --run-dir {ctx['run']}` first")
    filt, _ = load_filter(ctx["weights"], cfg.model)
    return P.load_weights(filt, path).to(ctx["device"])


def filter_file(args) -> str:
    return (stage_dir("", args.seed, "stage1") / "filter.pt").as_posix()


def reranker_file(args) -> str:
    return (stage_dir("", args.seed, "stage2", args.ablation) / "reranker.pt").as_posix()


def train_stage1(cfg: Config, args) -> int:
    ctx = context(cfg, args)
    _, metrics = P.run_stage1(cfg, ctx["run"], args.seed, train=ctx["train"], val=ctx["val"], stores=ctx["stores"],
                              weights=ctx["weights"], device=ctx["device"], resume=args.resume)
    P.say(f"F: {P.short(metrics)}  ({P.stage1_dir(ctx['run'], args.seed)})")
    return 0


def zeroshot(cfg: Config, args) -> int:
    """Zero-shot CIR (`cirtutor.engine.zeroshot`): Stage I on the training images, Stage II when
    zeroshot.budget > 0, evaluated on the validation split."""
    ctx = context(cfg, args)
    P.say(f"zero-shot (seed {args.seed}): {describe(cfg.zeroshot)}")
    _, metrics = P.run_zeroshot(cfg, ctx["run"], args.seed, train=ctx["train"], val=ctx["val"], stores=ctx["stores"],
                              weights=ctx["weights"], device=ctx["device"], log=P.say)
    P.say(f"zero-shot: {P.short(metrics)}  ({P.zeroshot_dir(ctx['run'], args.seed)})")
    return 0


def extract_topk(cfg: Config, args) -> int:
    """Stage 1's top-K lists of --split (default val; test1 for the CIRR submission), one file per retrieval group."""
    ctx = context(cfg, args, (filter_file(args),), data=args.split == "val")
    if args.split == "val":
        dataset, store = ctx["val"], ctx["stores"]["val"]
    else:                                                   # a test split alone: no training captions needed
        dataset = open_dataset(cfg.data, args.split, load_images=False)
        store = feature_store(cfg, args.split, ctx["weights"], ctx["device"])
    filt = trained_filter(cfg, ctx, args.seed)
    for path in P.extract_topk(ctx["run"], args.seed, filt, dataset, store, ctx["device"], k=args.k):
        P.say(f"wrote {path}")
    return 0


def train_stage2(cfg: Config, args) -> int:
    ctx = context(cfg, args, (filter_file(args),))
    filt = trained_filter(cfg, ctx, args.seed)
    _, metrics = P.run_stage2(cfg, ctx["run"], args.seed, filt, train=ctx["train"], val=ctx["val"], stores=ctx["stores"],
                              weights=ctx["weights"], device=ctx["device"], ablation=args.ablation, resume=args.resume)
    print_table(metrics)
    return 0


def evaluate(cfg: Config, args) -> int:
    ctx = context(cfg, args, (filter_file(args), reranker_file(args)))
    filt = trained_filter(cfg, ctx, args.seed)
    _, metrics = P.run_stage2(cfg, ctx["run"], args.seed, filt, train=ctx["train"], val=ctx["val"], stores=ctx["stores"],
                              weights=ctx["weights"], device=ctx["device"], ablation=args.ablation)
    print_table(metrics)
    return 0


def print_table(metrics: dict) -> None:
    for name, m in metrics.items():
        P.say(f"{name:8s} {P.short(m)}")


def submit(cfg: Config, args) -> int:
    """The evaluation server's split (CIRR test1): the re-ranker re-orders stage 1's top-K lists of that split
    (`cirtutor extract-topk --split test1`) and scores each query's 5 subset members; the server files of both
    stages are written and validated."""
    server = dataset_class(cfg.data).server_split
    if server is None:
        raise CirtutorError(f"{dataset_class(cfg.data).dataset_name} has no test server (use evaluate)")
    ctx = context(cfg, args, (filter_file(args), reranker_file(args)), data=False)    # test1 alone: no train captions
    test = open_dataset(cfg.data, server, load_images=False)
    k = cfg.stage2.k
    topk = P.run_topk(ctx["run"], args.seed, test, max(k, LENGTHS["recall"]))[0]
    if topk.subset_names is None:
        raise CirtutorError(f"the top-K list of {server} has no subset order: write it again with "
                            f"`cirtutor extract-topk --run-dir {ctx['run']} --split {server}`")
    filt = trained_filter(cfg, ctx, args.seed)
    store = feature_store(cfg, server, ctx["weights"], ctx["device"])
    model, _ = load_reranker(ctx["weights"], P.variant_config(cfg, args.ablation).model)
    P.load_weights(model, ctx["run"] / reranker_file(args)).to(ctx["device"])
    check_same_vision(filt, model)
    paths = server_files(filt, model, test, store, topk, k, ctx["run"] / "submission", args.seed, ctx["device"])
    return report_submission(paths, test)


def server_files(filt, model, test, store, topk, k: int, out: Path, seed: int = 0, device="cpu") -> dict:
    """Both stages' CIRR server files of the test split (notebook 04): the filter's order of `topk` (stage 1's list
    of the split, with its subset order), and the re-ranker's order of its first `k` candidates, the rest kept
    behind them, with its own order of each query's subset. {"stage1": {metric: path}, "stage2": {...}}."""
    z_ts = encode_queries(filt, test, store, device=device)[1]
    ranked = topk.sorted_index_names                                           # (N, K_file), best first
    scores = score_lists(model, test, z_ts, store, ranked[:, :k], device=device)
    order = np.argsort(-scores, axis=1, kind="stable")
    reranked = np.concatenate([np.take_along_axis(ranked[:, :k], order, 1), ranked[:, k:]], axis=1)
    subsets = [q["subset"] for q in test.queries]
    subset_ranked = subset_ranking_by_scores(subsets, score_lists(model, test, z_ts, store, np.asarray(subsets),
                                                                  device=device))
    pairids = [q["pairid"] for q in test.queries]
    return {"stage1": write_cirr_submission(out, f"stage1_seed{seed}", pairids, ranked, topk.subset_names),
            "stage2": write_cirr_submission(out, f"stage2_seed{seed}", pairids, reranked, subset_ranked)}


def report_submission(paths: dict, test) -> int:
    """Validate every written server file against the split; 1 when any has a problem."""
    bad = 0
    for stage, files in paths.items():
        for metric, path in files.items():
            problems = validate_cirr_submission(path, test.queries, test.gallery)
            bad += bool(problems)
            P.say(f"{path}: " + ("ok, ready to upload" if not problems else "; ".join(problems[:5])))
    return 1 if bad else 0


def _read_array(p: Path, trust: bool):
    """The object a label file holds: a .npy array, a top-K file's labels, or what a torch file holds
    (read safely: tensors, plain containers and the numpy arrays of the authors' top-K files)."""
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CirtutorError(f"{p} is not a readable .npy array ({plain(e)}): was it truncated? "
                                "Write it again with numpy.save") from None
    if p.suffix in (".safetensors", ".json"):
        return load_topk(p).labels
    obj = _torch_load(p, trust)
    if isinstance(obj, dict) and "sorted_index_names" in obj:          # the authors' top-K file
        return authors_topk(obj, p).labels
    return obj.get("labels") if isinstance(obj, dict) else obj


def _labels(path: str, trust: bool) -> np.ndarray:
    """(N, K) bool from .npy, a torch file holding a bool tensor, or a top-K file (its labels);
    a one-line error for anything else (another shape, other values, no labels, an unreadable file)."""
    p = Path(path)
    if not p.is_file():
        raise CirtutorError(f"{p} not found")
    obj = _read_array(p, trust)
    if obj is None:
        raise CirtutorError(f"{p} holds no labels (a test split's list has no targets)")
    try:
        array = np.asarray(obj.numpy() if torch.is_tensor(obj) else obj)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CirtutorError(f"{p} does not hold a label array ({plain(e)})") from None
    if array.ndim != 2 or 0 in array.shape:
        raise CirtutorError(f"{p} holds an array of shape {array.shape}: expected (N, K) labels, True where the "
                            "target sits in each query's list")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise CirtutorError(f"{p} holds {array.dtype} values other than 0 and 1: expected bool labels, not scores")
    array = array.astype(bool)
    if (array.sum(1) > 1).any():
        raise CirtutorError(f"{p}: {(array.sum(1) > 1).sum()} row(s) mark more than one target; expected at most one")
    return array


def plain(error) -> str:
    """An error's first line without terminal escape codes (torch colours some of its messages)."""
    return plain_text(str(error)).splitlines()[0] if str(error) else type(error).__name__


RECALL_KS = (1, 5, 10, 20, 50, 100, 200)


def recall_rows(labels: dict[str, np.ndarray]) -> list[str]:
    """Tables 5/6's recall rows: R@k of each label array (columns) for the k its lists are long enough for."""
    width = min(a.shape[1] for a in labels.values())
    rows = [f"  {'':6}" + "".join(f"{name:>12}" for name in labels)]
    rows += [f"  R@{k:<4}" + "".join(f"{recall_at_k(a, k):12.2f}" for a in labels.values())
             for k in RECALL_KS if k <= width]
    return rows


def mean_rank_line(labels: np.ndarray, name: str) -> str:
    found = target_positions(labels)
    found = found[found >= 0]
    if not len(found):
        return f"{name}: no query has its target in the top-{labels.shape[1]}"
    return f"{name}: mean 0-based target rank {found.mean():.2f} over the {len(found)}/{len(labels)} queries that have it"


def table7_line(table: dict) -> str:
    decrease = "n/a (every target is already first)" if table["percent_decrease"] is None else \
        f"{table['percent_decrease']:.2f} %"
    return (f"  initial {table['initial']:.2f}   re-ranked {table['reranked']:.2f}   "
            f"difference {table['difference']:.2f}   decrease {decrease}")


def analyze(args) -> int:
    """Table 7 and Figure 8 from both stages' label arrays; from the stage-2 array alone (the authors'
    released files), its recall rows and the re-ranked mean rank."""
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CirtutorError(f"--out {args.out} is a file, not a folder: choose a folder for the figure and the table")
    if not (args.stage1 or args.stage2):
        raise CirtutorError("pass --stage2 FILE (re-ranked labels), with --stage1 FILE for Table 7 and Figure 8")
    arrays = {name: _labels(path, args.trust) for name, path in (("stage 1", args.stage1), ("stage 2", args.stage2))
              if path}
    print("recall (%, over all queries)\n" + "\n".join(recall_rows(arrays)))
    if len(arrays) == 1:
        print(mean_rank_line(*arrays.values(), "re-ranked" if args.stage2 else "initial"))
        return 0
    s1, s2 = arrays["stage 1"], arrays["stage 2"]
    if len(s1) != len(s2):
        raise CirtutorError(f"--stage1 has {len(s1)} queries and --stage2 {len(s2)}: expected the same lists")
    k = min(s1.shape[1], s2.shape[1])
    table = safe_rank_table(rank_table, s1[:, :k], s2[:, :k])
    print(f"Table 7 (0-based target rank within the top-{k}; {table['queries']}/{table['total']} queries have it)")
    print(table7_line(table))
    if args.out:
        write_rank_analysis(Path(args.out), table, rank_shift_by_initial(s1[:, :k], s2[:, :k]))
    return 0


def safe_rank_table(rank_table, s1: np.ndarray, s2: np.ndarray) -> dict:
    """Table 7's row; its % decrease is None when every target is already first (no rank to decrease)."""
    initial, reranked = paired_positions(s1, s2)
    if not len(initial):
        raise CirtutorError("no query has its target in the stage-1 lists: Table 7 is undefined")
    if round(float(initial.mean()), 2) == 0:
        i, r = float(initial.mean()), float(reranked.mean())
        return {"queries": len(initial), "total": len(s1), "initial": i, "reranked": r, "difference": i - r,
                "percent_decrease": None}
    return rank_table(s1, s2)


def write_rank_analysis(out: Path, table: dict, shift: dict) -> None:
    shift = {key: np.asarray(v).tolist() for key, v in shift.items()}
    save_figure(plot_rank_shift(shift), out / "rank_shift.png")
    atomic_write_json(out / "rank_analysis.json", {"table": table, "shift": shift}, indent=2)
    print(f"wrote {out / 'rank_shift.png'} and {out / 'rank_analysis.json'}")
