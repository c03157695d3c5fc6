"""`cirtutor data-stats`: count what a dataset folder holds and check it is complete.

Per split (and per Fashion-IQ category) it reports the number of queries and gallery
images, checks that every name a query mentions is in its split's image list, and, given
an image root, that every referenced image exists and decodes. It is the layout checker to
run after downloading, and the first thing to read when a loader complains.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from cirtutor.data import cirr as cirr_mod
from cirtutor.data import fashioniq as fiq_mod
from cirtutor.data.base import CIRDataset, read_json
from cirtutor.data.preprocess import load_image
from cirtutor.errors import DataError

DATASETS = ("fashioniq", "cirr")
MAX_LISTED = 20  # problems printed per kind in the text report (all of them go to --json)


def _splits(dataset: str, annotations: Path, images: Path | None):
    """Yield (split, category, dataset-or-None, captions-path-or-None) for every split/category file set."""
    if dataset == "fashioniq":
        root = fiq_mod.find_annotation_root(annotations)
        for split in fiq_mod.SPLITS:
            for cat in fiq_mod.CATEGORIES:
                caps = fiq_mod.captions_path(root, cat, split)
                caps = caps if caps.is_file() else None
                if not fiq_mod.split_path(root, cat, split).is_file():
                    yield split, cat, None, caps
                    continue
                mode = "queries" if caps else "gallery"
                yield split, cat, fiq_mod.FashionIQ(root, split, cat, mode, images=images, load_images=False), caps
    elif dataset == "cirr":
        root = cirr_mod.find_annotation_root(annotations)
        for split in cirr_mod.SPLITS:
            caps = cirr_mod.captions_path(root, split)
            caps = caps if caps.is_file() else None
            if not cirr_mod.split_path(root, split).is_file():
                yield split, None, None, caps
                continue
            mode = "queries" if caps else "gallery"
            yield split, None, cirr_mod.CIRR(root, split, mode, annotations=root, images=images or root,
                                             load_images=False), caps
    else:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def referenced_names(ds: CIRDataset) -> list[str]:
    """Every image name the split's queries mention (reference, target, CIRR subset)."""
    names = []
    for q in ds.queries:
        names += [q["reference"], *([q["target"]] if "target" in q else []), *q.get("subset", [])]
    return list(dict.fromkeys(names))


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    try:
        load_image(path)
    except DataError:
        return "corrupt"
    return None


def check_images(paths: list[Path], workers: int = 8, progress: bool = True) -> dict[str, list[str]]:
    """Open every image (in threads: decoding releases the GIL); return missing and corrupt paths."""
    problems: dict[str, list[str]] = {"missing": [], "corrupt": []}
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check_image, paths)
        for path, status in tqdm(zip(paths, results), total=len(paths), desc="checking images",
                                 disable=not progress, unit="img"):
            if status:
                problems[status].append(str(path))
    return problems


def data_stats(dataset: str, annotations: str | Path, images: str | Path | None = None,
               progress: bool = True) -> dict:
    """Build the report dict (see module doc). Raises DataError when nothing usable is found."""
    annotations = Path(annotations)
    images = Path(images) if images is not None else None
    report = {"dataset": dataset, "annotations": str(annotations), "rows": [], "inconsistent": [], "images": None,
              "self_targets": [], "absent": []}
    to_check: dict[Path, None] = {}
    for split, cat, ds, caps in _splits(dataset, annotations, images):
        row = {"split": split, "category": cat, "queries": None, "gallery": None}
        if ds is None and caps is not None:  # captions without an image list: count the entries
            row["queries"] = len(read_json(caps, "captions", ""))
        if ds is not None:
            row["gallery"] = len(ds.gallery)
            row["queries"] = len(ds.queries) if caps else None
            known = set(ds.gallery)
            outside = [n for n in referenced_names(ds) if n not in known]
            if outside:
                report["inconsistent"].append({"split": split, "category": cat, "count": len(outside), "names": outside})
            selves = [q["reference"] for q in ds.queries if q.get("target") == q["reference"]]
            if selves:
                report["self_targets"].append({"split": split, "category": cat, "count": len(selves), "names": selves})
            if images is not None:
                names = list(ds.gallery) + [n for n in referenced_names(ds) if n in known]
                to_check.update(dict.fromkeys(ds.image_path(n) for n in names))
        if ds is not None or caps is not None:
            report["rows"].append(row)
        if ds is None or caps is None:
            report["absent"].append({"split": split, "category": cat,
                                     "files": ["captions"] * (caps is None) + ["image list"] * (ds is None)})
    if not any(r["gallery"] or r["queries"] for r in report["rows"]):
        raise DataError(f"no {dataset} annotation files found under {annotations}")
    if images is not None:
        problems = check_images(list(to_check), progress=progress)
        report["images"] = {"root": str(images), "checked": len(to_check), **problems}
    return report


EVALUATED = "val"     # the split every command validates and evaluates on: it must be complete


def missing_validation(report: dict) -> list[dict]:
    """The absent parts of the validation split (the other splits may be left out of a download)."""
    return [a for a in report.get("absent", []) if a["split"] == EVALUATED]


def report_ok(report: dict) -> bool:
    imgs = report["images"]
    return (not report["inconsistent"] and not report.get("self_targets") and not missing_validation(report)
            and not (imgs and (imgs["missing"] or imgs["corrupt"])))


def format_report(report: dict, show_paths: bool = True) -> str:
    """The human-readable table printed by `cirtutor data-stats` (paths left out on request)."""
    fmt = lambda v: "absent" if v is None else str(v)
    lines = [f"{report['dataset']} annotations" + (f": {report['annotations']}" if show_paths else ""),
             f"{'split':<7}{'category':<10}{'queries':>9}{'gallery':>9}"]
    for r in report["rows"]:
        lines.append(f"{r['split']:<7}{r['category'] or '-':<10}{fmt(r['queries']):>9}{fmt(r['gallery']):>9}")
    for bad in report["inconsistent"]:
        where = bad["split"] + (f"/{bad['category']}" if bad["category"] else "")
        lines.append(f"INCONSISTENT {where}: {bad['count']} name(s) used by queries are not in the image list, "
                     f"e.g. {', '.join(bad['names'][:3])}")
    for bad in report.get("self_targets", []):
        where = bad["split"] + (f"/{bad['category']}" if bad["category"] else "")
        lines.append(f"SELF-TARGET {where}: {bad['count']} query(ies) whose target is its own reference, "
                     f"e.g. {', '.join(bad['names'][:3])}")
    for gap in missing_validation(report):
        where = gap["split"] + (f"/{gap['category']}" if gap["category"] else "")
        lines.append(f"MISSING {where}: no {' and no '.join(gap['files'])}; every command validates on this split")
    imgs = report["images"]
    if imgs:
        lines.append(f"images{' under ' + imgs['root'] if show_paths else ''}: {imgs['checked']} checked, "
                     f"{len(imgs['missing'])} missing, {len(imgs['corrupt'])} corrupt")
        for kind in ("missing", "corrupt"):
            for p in imgs[kind][:MAX_LISTED]:
                lines.append(f"  {kind}: {p}")
            if len(imgs[kind]) > MAX_LISTED:
                lines.append(f"  ... and {len(imgs[kind]) - MAX_LISTED} more {kind} (see --json)")
    lines.append("OK" if report_ok(report) else "PROBLEMS FOUND: see above; re-download the listed files.")
    return "\n".join(lines)
