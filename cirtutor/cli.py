"""The one command line: `cirtutor <command> ...`.

    cirtutor reproduce --preset tiny            the main job (tiny mode: synthetic data, CPU)
    cirtutor make-data --format cirr --out DIR  draw a synthetic CIR dataset in a real format
    cirtutor data-stats --dataset cirr --annotations DIR [--images DIR] [--json]
    cirtutor model-info --preset paper [--json]     parameter counts of both stages
    cirtutor download {fashioniq,cirr,blip,checkpoints} ...
    cirtutor pretrain-tiny --out DIR               pretrain tiny mode's mini-BLIP (ITC + ITM)

Expected failures (bad paths, malformed files) print one clear message and exit 2;
data-stats exits 1 when it finds missing or corrupt files.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from cirtutor.config import Config
from cirtutor.errors import CirtutorError


def cmd_data_stats(args) -> int:
    from cirtutor.data.stats import data_stats, format_report, report_ok

    report = data_stats(args.dataset, args.annotations, args.images, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report_ok(report) else 1


def cmd_make_data(args) -> int:
    from cirtutor.data.synthetic import make_synthetic_dataset

    summary = make_synthetic_dataset(args.out, format=args.format, size=args.size, resolution=args.resolution,
                                     seed=args.seed, overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(json.dumps(summary, indent=2))
    return 0


def cmd_model_info(args) -> int:
    from cirtutor.config import apply_overrides, get_model_config
    from cirtutor.models.info import format_info, model_info

    cfg = apply_overrides(Config(model=get_model_config(args.preset)), args.set).model
    info = model_info(cfg)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_reproduce(args) -> int:
    from cirtutor.config import apply_overrides, get_preset
    from cirtutor.pipeline import reproduce

    cfg = apply_overrides(get_preset(args.preset), args.set)
    return reproduce(cfg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cirtutor", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("reproduce", help="run the main job for a preset")
    s.add_argument("--preset", default="tiny", help="tiny, tiny_fashioniq, paper_fashioniq or paper_cirr")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. --set data.resolution=128 (repeatable)")
    s.set_defaults(func=cmd_reproduce)

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
    s.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    s.set_defaults(func=cmd_make_data)

    s = sub.add_parser("data-stats", help="count queries and images per split; check a downloaded layout")
    s.add_argument("--dataset", choices=("fashioniq", "cirr"), required=True)
    s.add_argument("--annotations", required=True, help="folder holding captions/ and image_splits/ (or its dataset root)")
    s.add_argument("--images", help="image root: check every referenced image exists and decodes")
    s.add_argument("--json", action="store_true", help="print the full report as JSON")
    s.set_defaults(func=cmd_data_stats)

    # Listed for --help; `main` hands these to their modules' own parsers.
    sub.add_parser("download", help="fetch datasets and weights (see data_scripts/README.md)")
    sub.add_parser("pretrain-tiny", help="pretrain a mini-BLIP (ITC + ITM) on the synthetic image-caption pairs")
    return p


DELEGATED = {"download": ("cirtutor.download", "cli_main"),
             "pretrain-tiny": ("cirtutor.models.mini_blip", "pretrain_tiny_main")}


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
