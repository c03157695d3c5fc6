"""The one command line: `cirtutor <command> ...`.

    cirtutor reproduce --preset tiny [--seeds 3]  the main job (tiny mode: synthetic data, CPU), report.md
    cirtutor study cala --preset tiny [--seeds 3]  each variant of a named study over seeds, study.json
    cirtutor train-stage1 --preset P --run-dir DIR [--seed S] [--resume]     the candidate filter
    cirtutor extract-topk --preset P --run-dir DIR [--k 200] [--split test1] its top-K lists: stage 2's input
    cirtutor train-stage2 --preset P --run-dir DIR [--ablation A] [--resume] the re-ranker
    cirtutor evaluate     --preset P --run-dir DIR [--ablation A]            F and R_K for the preset's K values
    cirtutor submit       --preset P --run-dir DIR                           CIRR test1 server files (from test1's lists)
    cirtutor zeroshot     --preset P --run-dir DIR [--set zeroshot.budget=0.05] zero-shot CIR (pseudo words)
    cirtutor analyze      [--stage1 A] --stage2 B [--out DIR]            recall rows, Table 7 / Fig. 8 from label arrays
    cirtutor findings --run-dir DIR | --study FILE   which of the paper's 8 findings a run reproduces
    cirtutor make-data --format cirr --out DIR  draw a synthetic CIR dataset in a real format
    cirtutor data-stats --dataset cirr --annotations DIR [--images DIR] [--json]
    cirtutor model-info --preset paper [--json]     parameter counts of both stages
    cirtutor download {fashioniq,cirr,blip,checkpoints} ...
    cirtutor pretrain-tiny --out DIR               pretrain tiny mode's mini-BLIP (ITC + ITM)
    cirtutor book [--out book]                     the executed notebooks as static HTML, with an index.html
    cirtutor student [--out student]               the student edition (outputs cleared, self-check cells)
    cirtutor exercise 07.1 [--out FILE]            train and measure what an exercise asks (its solution's shipped result)

Expected failures (bad settings, bad paths, malformed files) print one clear message and exit 2,
before any work and without writing anything; data-stats exits 1 when it finds missing or corrupt
files, a missing validation split or queries whose target is their own reference.

Each command imports its module (and with it torch, the models, matplotlib) inside its `cmd_*` function,
only when it runs, so that `cirtutor --help` and a mistyped option answer at once; this is the one place
where the package imports inside functions on purpose (`tests/test_layers.py` holds the list).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time

from cirtutor.config import ABLATIONS, Config, apply_overrides, get_model_config, get_preset, validate
from cirtutor.errors import CirtutorError
from cirtutor.presets import NAMES as PRESET_NAMES


def cmd_data_stats(args) -> int:
    from cirtutor.data.stats import data_stats, format_report, report_ok

    report = data_stats(args.dataset, args.annotations, args.images, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report_ok(report) else 1


def cmd_make_data(args) -> int:
    from cirtutor.data.synthetic import make_synthetic_dataset

    summary = make_synthetic_dataset(args.out, format=args.format, size=args.size, resolution=args.resolution,
                                     seed=args.seed, siblings=args.siblings, overwrite=args.overwrite,
                                     progress=sys.stderr.isatty())
    print(json.dumps(summary, indent=2))
    return 0


def cmd_model_info(args) -> int:
    from cirtutor.models.info import format_info, model_info

    cfg = apply_overrides(Config(model=get_model_config(args.preset)), args.set).model
    info = model_info(cfg)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def preset_config(args) -> Config:
    cfg = apply_overrides(get_preset(args.preset), args.set)
    if getattr(args, "subsample", None):
        cfg.subsample = args.subsample
    return validate(cfg)


def cmd_reproduce(args) -> int:
    from cirtutor.reproduce import reproduce

    with distributed_context(preset_config(args)) as cfg:
        return reproduce(cfg, seeds=args.seeds, out=args.run, resume=args.resume, overwrite=args.overwrite)


def cmd_study(args) -> int:
    from cirtutor.study import run_study, table

    study = run_study(args.name, args.preset, args.seeds, args.run, args.variants.split(",") if args.variants else None)
    for stage in next(iter(study["variants"].values()))["stats"]:          # filter, rerank | zeroshot
        print(f"\n{stage} (mean ± std over {args.seeds} seeds)\n" + table(study, stage))
    if "findings" in study:
        from cirtutor.findings import markdown
        print("\nWhich of the paper's findings this study reproduces\n" + markdown(study["findings"]))
    return 0


def cmd_exercise(args) -> int:
    from cirtutor.exercises import exercise_runs, make

    exercise_runs(args.name)                                     # an unknown exercise is refused before anything loads
    print(f"wrote {make(args.name, args.preset, args.seed, args.out)}")
    return 0


def cmd_probe(args) -> int:
    from cirtutor.data.registry import dataset_root
    from cirtutor.data.synthetic import CIRR_FAMILY, descriptions, synthetic_meta
    from cirtutor.evaluation.probe import bottleneck_probe
    from cirtutor.models.loading import load_filter
    from cirtutor.trained import filter_data

    cfg = preset_config(args)
    root = dataset_root(cfg.data)
    if synthetic_meta(root) is None:
        raise CirtutorError(f"{root} is not a synthetic dataset: the probe reads the scenes tiny mode draws")
    data = filter_data(cfg)
    filt, _ = load_filter(data.weights, cfg.model)
    result = bottleneck_probe(filt.eval(), data.stores, root, descriptions(CIRR_FAMILY))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("linear read-out of the object in every occupied cell (% right on the validation images)\n"
          "| representation | dim | object | edited object | shape | colour | size |\n|---|---|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['dim']} | " + " | ".join(f"{r[k]:.1f}" for k in ("objects", "edited", "shape", "colour",
                                                                               "size")) + " |")
    return 0


def cmd_findings(args) -> int:
    from cirtutor import findings

    if bool(args.run) == bool(args.study):
        raise CirtutorError("pass exactly one of --run-dir DIR (a run folder) and --study FILE (a study.json)")
    if args.study:
        try:
            study = json.loads(open(args.study, encoding="utf-8").read())
        except (OSError, ValueError) as e:
            raise CirtutorError(f"cannot read the study {args.study}: {e}; expected a study.json written by "
                                "`cirtutor study findings`") from None
        records, dataset = findings.study_records(study, args.variant)
    else:
        records, dataset = findings.seed_records(args.run)
    card = findings.judge(records, dataset)
    if args.figure:
        from cirtutor.report import save_figure
        from cirtutor.viz import plot_findings
        print(f"figure: {save_figure(plot_findings(card), args.figure)}")
    print(json.dumps(card, indent=2) if args.json else findings.markdown(card))
    return 0


def cmd_stage(args) -> int:
    from cirtutor import stages

    if getattr(args, "ablation", None) and args.ablation not in ABLATIONS:
        raise CirtutorError(f"unknown ablation {args.ablation!r} (--ablation); choose from {', '.join(ABLATIONS)}")
    if args.seed < 0 or getattr(args, "k", 1) < 1:
        raise CirtutorError(f"--seed {args.seed} / --k {getattr(args, 'k', 1)}: expected a seed of 0 or more and k of 1 or more")
    with distributed_context(preset_config(args)) as cfg:
        return getattr(stages, args.command.replace("-", "_"))(cfg, args)


def cmd_book(args) -> int:
    from cirtutor.book import build_book

    start = time.perf_counter()
    written = build_book(args.notebooks, args.out)
    print(f"book: {len(written) - 1} notebooks rendered in {time.perf_counter() - start:.1f} s; open {written[0]}")
    return 0


def cmd_student(args) -> int:
    from cirtutor.student import write_student_edition

    written = write_student_edition(args.notebooks, args.out)
    print(f"student edition: {len(written)} notebooks written to {args.out}/")
    return 0


def cmd_analyze(args) -> int:
    from cirtutor.stages import analyze

    return analyze(args)


@contextlib.contextmanager
def distributed_context(cfg: Config):
    """Under torchrun (RANK / WORLD_SIZE set): one process group (nccl on GPUs, gloo on CPU),
    each rank on its own GPU; torn down at the end. Otherwise nothing."""
    import torch                          # lazy, as the commands' modules: only the training commands need it
    import torch.distributed as dist

    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield cfg
        return
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        yield cfg
    finally:
        dist.destroy_process_group()


OVERWRITE_HELP = ("start --run-dir afresh: remove the models, lists and reports an earlier run left there "
                  "(needed to train into a folder of other settings)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cirtutor", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pipeline_commands(sub)
    stage_commands(sub)
    tool_commands(sub)
    return p


def preset_args(s, run_required: bool) -> None:
    """The options every preset-driven command takes: --preset, --set, --subsample, --run-dir."""
    s.add_argument("--preset", default="tiny", help=f"{', '.join(PRESET_NAMES)} (cirtutor/presets/)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. --set stage2.k=50 (repeatable)")
    s.add_argument("--subsample", metavar="SPEC",
                   help="seeded subsets of the real data, e.g. train=0.1,val=500,gallery=2000 (not the paper's numbers)")
    s.add_argument("--run-dir", dest="run", required=run_required, metavar="DIR",
                   help="the run folder" + ("" if run_required else " (default: runs/<preset>-<time>)"))


def pipeline_commands(sub) -> None:
    """reproduce, study, probe, findings: the commands that run or judge the whole pipeline."""
    s = sub.add_parser("reproduce", help="run the main job for a preset and write report.md + metrics.json")
    preset_args(s, run_required=False)
    s.add_argument("--seeds", type=int, default=1, help="train and evaluate seeds 0..N-1 (mean ± std in the report)")
    s.add_argument("--resume", action="store_true", help="continue the trainings of --run-dir from their checkpoints")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("study", help="run the main job for every variant of a named study (e.g. cala) over seeds")
    s.add_argument("name", help="the study: findings (notebook 07), cala (notebook 08) or zeroshot (notebook 09)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--seeds", type=int, default=3)
    s.add_argument("--run-dir", dest="run", metavar="DIR", help="the study folder (default: runs/study-<name>-<preset>)")
    s.add_argument("--variants", help="comma-separated subset of the study's variants (default: all)")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("exercise", help="train and measure what an exercise asks (its solution's shipped result)")
    s.add_argument("name", help="the exercise, NN.k (04.1, 04.3, 07.1, 07.2, 08.1-08.3, 09.1-09.5)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", metavar="FILE", help="where to write the result (default: the package's shipped copy)")
    s.set_defaults(func=cmd_exercise)

    s = sub.add_parser("probe", help="tiny mode: how much of a scene the filter's one gallery vector keeps, against "
                                     "the image tokens the re-ranker reads (a linear probe)")
    preset_args(s, run_required=False)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_probe)

    s = sub.add_parser("findings", help="which of the paper's findings a run or a study reproduces (the scorecard)")
    s.add_argument("--run-dir", dest="run", metavar="DIR", help="a run folder (reproduce, or the per-stage commands)")
    s.add_argument("--study", metavar="FILE", help="a study.json of `cirtutor study findings` (e.g. the shipped "
                                                   "cirtutor/assets/studies/findings-tiny.json)")
    s.add_argument("--variant", help="the study's variant (default: its first)")
    s.add_argument("--figure", metavar="PNG", help="also draw the scorecard's figure to this file")
    s.add_argument("--json", action="store_true", help="print the scorecard as JSON")
    s.set_defaults(func=cmd_findings)


def stage_commands(sub) -> None:
    """One command per stage, all on one --run-dir (what `reproduce` chains)."""
    for name, text in (("train-stage1", "train the candidate filter (stage 1)"),
                       ("extract-topk", "write stage 1's top-K lists of a split (stage 2's input)"),
                       ("train-stage2", "train the dual-encoder re-ranker (stage 2) on the filter of --run-dir"),
                       ("evaluate", "evaluate F and R_K of --run-dir on the validation split"),
                       ("submit", "write and validate the CIRR test1 submission files of --run-dir"),
                       ("zeroshot", "zero-shot CIR with pseudo words: Stage I on images, Stage II on a triplet budget")):
        s = sub.add_parser(name, help=text)
        preset_args(s, run_required=True)
        s.add_argument("--seed", type=int, default=0)
        if name.startswith("train"):
            s.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
        if name in ("train-stage1", "zeroshot"):
            s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        if name in ("train-stage2", "evaluate", "submit"):
            s.add_argument("--ablation", default=None, help="re-ranker variant: no_text, no_zt, ref_cls, ref_cls_spatial, "
                                                             "full_mlp, dual_ffn")
        if name == "extract-topk":
            s.add_argument("--k", type=int, default=200, help="list length (the authors' files: 200)")
            s.add_argument("--split", default="val", choices=("val", "test1", "test"),
                           help="val (stage 2's evaluation), or the test split (CIRR: test1, for `submit`)")
        s.set_defaults(func=cmd_stage)


def tool_commands(sub) -> None:
    """analyze, model-info, make-data, data-stats, book; download and pretrain-tiny (their own parsers)."""
    s = sub.add_parser("analyze", help="recall rows, Table 7 and Figure 8 from stage-1 and stage-2 label arrays")
    s.add_argument("--stage1", help="stage-1 labels (N, K) bool: .npy, or a top-K file (ours or the authors')")
    s.add_argument("--stage2", help="stage-2 labels of the same lists after re-ranking (.npy or .pt); alone: its "
                                    "recall rows and mean re-ranked rank")
    s.add_argument("--out", help="folder for rank_shift.png and rank_analysis.json")
    s.add_argument("--trust", action="store_true", help="allow full unpickling of .pt files you trust")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("model-info", help="parameter counts of the filter and the re-ranker")
    s.add_argument("--preset", default="paper", help="model dims: paper, tiny, or any full preset")
    s.add_argument("--set", action="append", default=[], metavar="model.FIELD=VALUE",
                   help="override a model field, e.g. --set model.dual_ffn=true (repeatable)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_model_info)

    s = sub.add_parser("make-data", help="draw a synthetic composed-retrieval dataset in a real on-disk format")
    s.add_argument("--format", choices=("cirr", "fashioniq"), default="cirr")
    s.add_argument("--out", required=True, help="output folder (the cirr_dataset/ or fashionIQ_dataset/ root)")
    s.add_argument("--size", type=int, default=1000, help="train reference scenes; val and test get size//2 each")
    s.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--siblings", choices=("any", "same_object"), default="any",
                   help="a reference's edits change any objects, or all the same one (near-duplicate targets)")
    s.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    s.set_defaults(func=cmd_make_data)

    s = sub.add_parser("data-stats", help="count queries and images per split; check a downloaded layout")
    s.add_argument("--dataset", choices=("fashioniq", "cirr"), required=True)
    s.add_argument("--annotations", required=True, help="folder holding captions/ and image_splits/ (or its dataset root)")
    s.add_argument("--images", help="image root: check every referenced image exists and decodes")
    s.add_argument("--json", action="store_true", help="print the full report as JSON")
    s.set_defaults(func=cmd_data_stats)

    s = sub.add_parser("book", help="render the executed notebooks as static HTML (no kernel, nothing runs)")
    s.add_argument("--out", default="book", help="output folder: one page per notebook and index.html (default: book)")
    s.add_argument("--notebooks", default="notebooks", metavar="DIR", help="the notebooks folder (default: notebooks)")
    s.set_defaults(func=cmd_book)

    s = sub.add_parser("student", help="write the student edition of the notebooks (outputs cleared, self-check cells)")
    s.add_argument("--out", default="student", help="output folder (default: student)")
    s.add_argument("--notebooks", default="notebooks", metavar="DIR", help="the notebooks folder (default: notebooks)")
    s.set_defaults(func=cmd_student)

    # Listed for --help; `main` hands these to their modules' own parsers.
    sub.add_parser("download", help="fetch datasets and weights (see data_scripts/README.md)")
    sub.add_parser("pretrain-tiny", help="pretrain a mini-BLIP (ITC + ITM) on the synthetic image-caption pairs")


DELEGATED = {"download": ("cirtutor.download", "cli_main"),
             "pretrain-tiny": ("cirtutor.engine.pretrain", "pretrain_tiny_main")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        module, function = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CirtutorError as e:
        print(f"cirtutor {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
