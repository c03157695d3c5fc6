"""CIRR test-server submission files, and a validator to run before uploading (docs/data_formats.md, 'CIRR submission files').

Per model, two JSON objects with sorted keys:

    recall_submission_{name}.json         {"version": "rc2", "metric": "recall",        "<pairid>": [50 names], ...}
    recall_subset_submission_{name}.json  {"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names], ...}

The recall lists exclude the query's reference; the subset lists are the top 3 of the 5
non-reference `img_set` members. The server accepts files under 5 MB.

`validate_cirr_submission` returns a list of problems (empty: the file is fine) rather than
raising, so one run reports everything wrong with a file; per-entry problems are grouped,
with a few example pairids each.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cirtutor.evaluation.metrics import EvaluationError
from cirtutor.io import atomic_write_text

VERSION = "rc2"
LENGTHS = {"recall": 50, "recall_subset": 3}   # names per entry
PREFIXES = {"recall": "recall_submission_", "recall_subset": "recall_subset_submission_"}
MAX_BYTES = 5_000_000                           # the server's 5 MB limit, read conservatively
EXAMPLES = 3                                    # example pairids shown per grouped problem


def submission_paths(folder, name: str) -> dict[str, Path]:
    """{"recall": folder/recall_submission_{name}.json, "recall_subset": ...}."""
    return {metric: Path(folder) / f"{prefix}{name}.json" for metric, prefix in PREFIXES.items()}


def write_cirr_submission(folder, name: str, pairids: Sequence[int], ranked_names, subset_ranked) -> dict[str, Path]:
    """Write both files atomically: the first 50 names of each `ranked_names` row (N, ≥50;
    reference already removed) and the first 3 of each `subset_ranked` row (N, ≥3)."""
    rows = {"recall": np.asarray(ranked_names, dtype=str), "recall_subset": np.asarray(subset_ranked, dtype=str)}
    keys = [str(p) for p in pairids]
    if len(set(keys)) != len(keys):
        raise EvaluationError("pairids must be unique: each query is one entry of the submission")
    paths = submission_paths(folder, name)
    for metric, names in rows.items():
        length = LENGTHS[metric]
        if names.ndim != 2 or names.shape[0] != len(keys) or names.shape[1] < length:
            raise EvaluationError(f"{metric}: expected ({len(keys)}, ≥{length}) ranked names, got shape {names.shape}")
        entries = {key: row[:length].tolist() for key, row in zip(keys, names)}
        atomic_write_text(paths[metric], json.dumps({"version": VERSION, "metric": metric, **entries}, sort_keys=True))
    return paths


def validate_cirr_submission(path, queries: Sequence[dict] | None = None,
                             gallery: Sequence[str] | None = None) -> list[str]:
    """Everything wrong with a submission file, as messages (empty list: ready to upload); any
    file at all gives a list, never an exception.

    Checks the size, "version", "metric" (also against the file name), and every entry: a list
    of exactly 50 (recall) or 3 (recall_subset) distinct names. With `queries` (the CIRR test1
    query dicts: "pairid", "reference", "subset") also: one entry per test1 pairid and no
    other key, no entry naming its query's reference, subset entries naming only members. With
    `gallery` (the test1 image names) also: every name is a test1 gallery image."""
    path = Path(path)
    if not path.is_file():
        return [f"missing file {path}"]
    problems = []
    if path.stat().st_size >= MAX_BYTES:
        problems.append(f"file is {path.stat().st_size:,} bytes; the server accepts files under {MAX_BYTES:,}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return problems + [f"not valid JSON: {e}"]
    except RecursionError:
        return problems + ["not a submission: its JSON is nested too deeply to read"]
    except OSError as e:
        return problems + [f"cannot read the file: {e}"]
    if not isinstance(obj, dict):
        return problems + [f"expected one JSON object, found a {type(obj).__name__}"]
    if obj.get("version") != VERSION:
        problems.append(f'"version" is {obj.get("version")!r}, expected {VERSION!r}')
    metric = _check_metric(obj.get("metric"), path.name, problems)
    entries = {key: value for key, value in obj.items() if key not in ("version", "metric")}
    by_pairid = None if queries is None else {str(q["pairid"]): q for q in queries}
    _check_keys(entries, by_pairid, problems)
    known = None if gallery is None else set(gallery)
    grouped: dict[str, list[str]] = {}
    for key, names in entries.items():
        for problem in _entry_problems(names, metric, None if by_pairid is None else by_pairid.get(key), known):
            grouped.setdefault(problem, []).append(key)
    problems += [f"{len(keys)} entries {problem} (e.g. pairids {_examples(keys)})" for problem, keys in grouped.items()]
    return problems


def _check_metric(metric, filename: str, problems: list[str]) -> str:
    """The metric the entries are checked against: the file's own, else the file name's."""
    named = next((m for m in ("recall_subset", "recall") if filename.startswith(PREFIXES[m])), None)
    if not isinstance(metric, str) or metric not in LENGTHS:
        problems.append(f'"metric" is {metric!r}, expected "recall" or "recall_subset"')
        return named or "recall"
    if named is not None and named != metric:
        problems.append(f'"metric" is {metric!r} but the file is named {filename!r} (expected {PREFIXES[metric]}NAME.json)')
    return metric


def _check_keys(entries: dict, by_pairid: dict | None, problems: list[str]) -> None:
    if by_pairid is None:
        extra = [key for key in entries if not _is_pairid(key)]
    else:
        missing = [key for key in by_pairid if key not in entries]
        if missing:
            problems.append(f"{len(missing)} test1 queries have no entry (e.g. pairids {_examples(missing)})")
        extra = [key for key in entries if key not in by_pairid]
    if extra:
        problems.append(f"{len(extra)} keys are not test1 pairids (e.g. {_examples(extra)})")


def _is_pairid(key: str) -> bool:
    """A pairid key: ASCII digits only ("²" or "١٢" pass str.isdigit but are no pairids)."""
    return key.isascii() and key.isdigit()


def _entry_problems(names, metric: str, query: dict | None, gallery: set | None = None) -> list[str]:
    """What is wrong with one entry, as grouping phrases."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return ["are not lists of image names"]
    problems = []
    if len(names) != LENGTHS[metric]:
        problems.append(f"do not have exactly {LENGTHS[metric]} names")
    if len(set(names)) != len(names):
        problems.append("name an image twice")
    if query is not None and query["reference"] in names:
        problems.append("name their query's reference image")
    if query is not None and metric == "recall_subset" and not set(names) <= set(query["subset"]):
        problems.append("name images outside their query's subset members")
    if gallery is not None and not set(names) <= gallery:
        problems.append("name images that are not in the test1 gallery")
    return problems


def _examples(keys: list[str]) -> str:
    return ", ".join(sorted(keys, key=lambda k: (not _is_pairid(k), int(k) if _is_pairid(k) else 0, k))[:EXAMPLES])
