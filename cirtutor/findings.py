"""The paper's findings as data, and a scorecard that says which of them a run reproduces.

The paper (Liu et al., TMLR 2024) reports its method as tables; read side by side, they make
eight claims about the two-stage pipeline. Each claim becomes a `Finding`: a sentence, the
quantity measured per seed (a paired difference of two models on one metric, or a ratio),
the paper's own value with its table, and one test fixed in advance:

    F1-F5  reproduced when the mean over seeds is more than 2 standard errors in the paper's direction
    F6     reproduced when the mean is above -2 standard errors (z_t at least as good as the alternative)
    F7     reproduced when the mean decrease of the covered targets' rank is at least 15 %
    F8     reproduced when |mean| <= 1.0 point (R_K stays flat once K passes the coverage knee)

Every quantity is taken at the preset's main K (`stage2.k`); F8 compares it with the largest K
evaluated (`stage2.eval_ks`). Standard error = sample std / sqrt(seeds); with one seed there is
no standard error, so F1-F6 show their sign only ("1 seed") and are not counted.

    records, dataset = seed_records(run_dir) per seed: F, R_K, R_K_max, each ablation at K, the rank decrease
    card = judge(records, dataset)
    print(markdown(card))                    the table `cirtutor findings` prints and report.md holds

A record holds each model's metrics flat (`flat_metrics`: the tables' columns, as report.md prints them).

The paper's numbers are stored here once (`PAPER`), copied from its tables; every "paper"
column in the package and the notebooks reads them from this module.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cirtutor.config import ABLATIONS
from cirtutor.errors import CirtutorError
from cirtutor.layout import seed_dirs, stage_dir, variant_dirs

# ----------------------------------------------------------------------------- a metrics dict as the tables' columns

CIRR_KEYS = ("R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "avg")  # Table 6 columns, avg = (R@5 + Rs@1) / 2
FIQ_CATEGORIES = ("dress", "shirt", "toptee")                             # the paper's column order (Table 5)


def categories(metrics: dict) -> list[str]:
    """The Fashion-IQ categories present, in the paper's order first."""
    present = list(metrics["per_category"])
    return [c for c in FIQ_CATEGORIES if c in present] + [c for c in present if c not in FIQ_CATEGORIES]


def flat_metrics(metrics: dict) -> dict:
    """One flat {name: %} dict. CIRR: R@1 … Rs@3 and avg. Fashion-IQ: "dress R@10", "dress R@50",
    … for each category present, then the category means R@10, R@50 and avg (Table 5's columns).
    Anything else in `metrics` (e.g. R_K's "coverage") is left out."""
    if "per_category" not in metrics:
        return {key: float(metrics[key]) for key in CIRR_KEYS}
    out = {f"{cat} {key}": float(metrics["per_category"][cat][key]) for cat in categories(metrics) for key in ("R@10", "R@50")}
    return out | {key: float(metrics[key]) for key in ("R@10", "R@50", "avg")}


# ----------------------------------------------------------------------------- the paper's tables (validation splits)

PAPER = {
    "cirr": {   # Table 6 (F and R_K, K = 30 … 150), Table 4 (ablations at K = 50), Table 7 (top-200 lists)
        "k": 50, "k_max": 150,
        "filter": {"R@1": 46.83, "R@5": 78.59, "R@10": 88.04, "R@50": 97.08, "Rs@1": 76.11, "Rs@2": 90.65,
                   "Rs@3": 96.05, "avg": 77.53},
        "rerank": {
            30: {"R@1": 53.03, "R@5": 83.16, "R@10": 90.62, "R@50": 95.26, "Rs@1": 80.44, "avg": 81.80},
            40: {"R@1": 52.98, "R@5": 82.83, "R@10": 90.29, "R@50": 96.27, "Rs@1": 80.44, "avg": 81.64},
            50: {"R@1": 53.24, "R@5": 83.11, "R@10": 90.03, "R@50": 97.08, "Rs@1": 80.44, "avg": 81.78},
            100: {"R@1": 52.88, "R@5": 82.92, "R@10": 90.07, "R@50": 97.90, "Rs@1": 80.44, "avg": 81.68},
            150: {"R@1": 52.91, "R@5": 82.85, "R@10": 90.05, "R@50": 98.04, "Rs@1": 80.44, "avg": 81.65},
        },
        "ablations": {
            "no_text": {"R@1": 46.21, "R@5": 79.57, "Rs@1": 75.25, "avg": 77.41},
            "no_zt": {"R@1": 43.51, "R@5": 75.25, "Rs@1": 80.34, "avg": 77.79},
            "ref_cls_spatial": {"R@1": 52.98, "R@5": 83.23, "Rs@1": 79.55, "avg": 81.39},
            "full_mlp": {"R@1": 52.91, "R@5": 82.64, "Rs@1": 79.60, "avg": 81.12},
            "dual_ffn": {"R@1": 54.20, "R@5": 82.80, "Rs@1": 80.22, "avg": 81.51},
        },
        "rank": {"initial": 5.32, "reranked": 4.09, "percent_decrease": 23.12},
        "tables": {"rerank": "Table 6", "ablations": "Table 4", "rank": "Table 7"},
    },
    "fashioniq": {   # Table 5 (F and R_K, K = 50 … 200), Table 3 (ablations at K = 100), Table 7 (top-200 lists)
        "k": 100, "k_max": 200,
        "filter": {"R@10": 46.15, "R@50": 69.15, "avg": 57.65},
        "rerank": {
            50: {"R@10": 50.98, "R@50": 69.15, "avg": 60.07},
            70: {"R@10": 51.20, "R@50": 71.52, "avg": 61.36},
            90: {"R@10": 51.12, "R@50": 72.60, "avg": 61.86},
            100: {"R@10": 51.17, "R@50": 73.13, "avg": 62.15},
            150: {"R@10": 51.19, "R@50": 73.46, "avg": 62.33},
            200: {"R@10": 51.14, "R@50": 73.28, "avg": 62.21},
        },
        "ablations": {
            "no_text": {"R@10": 44.07, "R@50": 70.21, "avg": 57.14},
            "no_zt": {"R@10": 40.96, "R@50": 68.40, "avg": 54.68},
            "ref_cls": {"R@10": 49.59, "R@50": 72.38, "avg": 60.98},
            "ref_cls_spatial": {"R@10": 50.30, "R@50": 72.60, "avg": 61.45},
            "full_mlp": {"R@10": 49.80, "R@50": 72.32, "avg": 61.06},
            "dual_ffn": {"R@10": 46.96, "R@50": 72.02, "avg": 59.99},
        },
        # Table 7 per category (dress, shirt, toptee); the scorecard pools the categories' queries, so its
        # paper value is the categories' mean
        "rank": {"percent_decrease": round((22.58 + 24.26 + 27.39) / 3, 2),
                 "per_category": {"dress": 22.58, "shirt": 24.26, "toptee": 27.39}},
        "tables": {"rerank": "Table 5", "ablations": "Table 3", "rank": "Table 7"},
    },
}


SHOWN = {"cirr": ("R@1", "R@5", "R@10", "R@50", "Rs@1"), "fashioniq": ("R@10", "R@50", "avg"),
         "rank": ("initial", "reranked", "percent_decrease")}
TITLES = {"percent_decrease": "% decrease"}
ROW_PAPER = {"F": ("filter", "rerank"), "R_K": ("rerank", "rerank"), "Table 7": ("rank", "rank")}   # row -> (PAPER key, table)


def paper_row(name: str, dataset: str) -> tuple[dict, str]:
    """The paper's values and their table for a row of `paper_vs_run`: "F", "R_K" (the paper's own K), "Table 7", or
    a variant of `config.ABLATIONS` ("no_text", "no_zt", ...)."""
    paper = PAPER[dataset]
    key, table = ROW_PAPER.get(name, ("ablations", "ablations"))
    values = paper[key][paper["k"]] if name == "R_K" else paper[key] if key != "ablations" else paper[key].get(name)
    if values is None:
        raise CirtutorError(f"the paper has no row {name!r} for {dataset}; rows: F, R_K, Table 7, "
                            f"{', '.join(paper['ablations'])}")
    return values, paper["tables"][table]


def paper_vs_run(rows: dict[str, dict], dataset: str = "cirr", k: int | None = None) -> str:
    """The paper's numbers (validation splits) above this run's, row by row, as plain text: `rows` maps a row of
    `paper_row` to this run's metrics. The paper's R_K is at its own K (CIRR 50, Fashion-IQ 100); `k` names the run's."""
    lines = []                                      # (metric keys, label, values) per printed line
    for name, measured in rows.items():
        paper, table = paper_row(name, dataset)
        keys = SHOWN["rank" if name == "Table 7" else dataset]
        label = {"R_K": f"R_{PAPER[dataset]['k']}", "Table 7": "mean target rank"}.get(name) or ABLATIONS.get(
            name, (name,))[0]
        mine = {"R_K": f"R_{k}" if k else "R_K"}.get(name, label)
        lines += [(keys, f"{label}, paper ({table})", paper), (keys, f"{mine}, this run", measured)]
    width = max(len(label) for _, label, _ in lines) + 2
    out, header = [], None
    for keys, label, values in lines:
        if keys != header:
            header = keys
            out.append(" " * width + "".join(f"{TITLES.get(key, key):>11s}" for key in keys))
        out.append(f"{label:{width}s}" + "".join(f"{values[key]:11.2f}" if values.get(key) is not None
                                                 else f"{'—':>11s}" for key in keys))
    return "\n".join(out)


# ----------------------------------------------------------------------------- the findings

GAIN, AT_LEAST_AS_GOOD, DECREASE, FLAT = "gain", "at_least_as_good", "decrease", "flat"
DECREASE_MIN = 15.0      # F7: % decrease of the mean rank that counts as reproduced
FLAT_MAX = 1.0           # F8: largest |R@1(R_K_max) − R@1(R_K)| in points that counts as flat
SE_MULT = 2.0            # F1-F6: how many standard errors


@dataclass(frozen=True)
class Finding:
    """One claim of the paper. The per-seed quantity is `a` minus `b` on `metric` (a model is
    "F", "R_K", "R_K_max" or an ablation's config name), or, for `test` = "decrease", the % by
    which re-ranking lowers the mean rank of the targets in the filter's top-K (Table 7)."""
    id: str
    statement: str
    metric: str
    a: str
    b: str | None
    test: str             # GAIN | AT_LEAST_AS_GOOD | DECREASE | FLAT
    table: str            # where the paper's number is

    @property
    def k(self) -> str:
        """The K it is measured at: the preset's stage2.k, and for F8 also the largest evaluated K."""
        return "K, K_max" if "R_K_max" in (self.a, self.b) else "K"


def _set(metric_1: str, metric_5: str, metric_s: str, dataset: str) -> tuple[Finding, ...]:
    t = PAPER[dataset]["tables"]
    return (
        Finding("F1", f"re-ranking beats the filter on {metric_1}", metric_1, "R_K", "F", GAIN, t["rerank"]),
        Finding("F2", f"re-ranking beats the filter on {metric_5}", metric_5, "R_K", "F", GAIN, t["rerank"]),
        Finding("F3", f"re-ranking beats the filter on {metric_s}", metric_s, "R_K", "F", GAIN, t["rerank"]),
        Finding("F4", f"the full model beats w/o Encoder-t on {metric_1}", metric_1, "R_K", "no_text", GAIN,
                t["ablations"]),
        Finding("F5", f"the full model beats w/o Encoder-z_t on {metric_1}", metric_1, "R_K", "no_zt", GAIN,
                t["ablations"]),
        Finding("F6", f"z_t as Encoder-z_t's input is at least as good as Ref_CLS + spatial tokens on {metric_1}",
                metric_1, "R_K", "ref_cls_spatial", AT_LEAST_AS_GOOD, t["ablations"]),
        Finding("F7", "re-ranking lowers the mean rank of the targets in the filter's top-K by at least 15 %",
                "mean rank", "R_K", None, DECREASE, t["rank"]),
        Finding("F8", f"R_K's {metric_1} stays flat (within 1 point) once K passes the coverage knee",
                metric_1, "R_K_max", "R_K", FLAT, t["rerank"]),
    )


FINDINGS = {"cirr": _set("R@1", "R@5", "Rs@1", "cirr"),
            # Fashion-IQ's headline metrics: the category means of R@10 and R@50, and their average
            "fashioniq": _set("R@10", "R@50", "avg", "fashioniq")}


def paper_value(f: Finding, dataset: str) -> float:
    """The finding's quantity in the paper, from its tables at the paper's K (and K_max)."""
    p = PAPER[dataset]
    models = {"F": p["filter"], "R_K": p["rerank"][p["k"]], "R_K_max": p["rerank"][p["k_max"]], **p["ablations"]}
    if f.test == DECREASE:
        return p["rank"]["percent_decrease"]
    return round(models[f.a][f.metric] - models[f.b][f.metric], 2)


# ----------------------------------------------------------------------------- judging

def _quantity(f: Finding, record: dict) -> float | None:
    """The finding's value for one seed's record, None when the run lacks a model it needs."""
    if f.test == DECREASE:
        return record.get("rank_decrease")
    models = {"F": record.get("filter"), "R_K": record.get("rerank"), "R_K_max": record.get("rerank_max"),
              **record.get("ablations", {})}
    if f.b in record.get("ablations", {}) and record.get("ablation_reference"):
        models["R_K"] = record["ablation_reference"]      # shipped variants: their own full model, same filter
    a, b = models.get(f.a), models.get(f.b)
    if a is None or b is None:
        return None
    return float(a[f.metric]) - float(b[f.metric])


def verdict(test: str, values: list[float]) -> tuple[str, bool | None, float, float | None]:
    """(verdict text, reproduced: True | False | None when one seed cannot decide, mean, standard error)."""
    n, mean = len(values), float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else None
    if test == DECREASE:
        ok = mean >= DECREASE_MIN
    elif test == FLAT:
        ok = abs(mean) <= FLAT_MAX
    elif se is None:                      # a sign on one seed is not a finding
        sign = ("no difference" if mean == 0 and test == GAIN else
                "same sign as the paper" if (mean > 0 if test == GAIN else mean >= 0) else "opposite sign to the paper")
        return f"{sign}, 1 seed", None, mean, None
    elif test == GAIN:
        ok = mean > SE_MULT * se
    else:
        ok = mean > -SE_MULT * se
    return ("reproduced" if ok else "not reproduced"), ok, mean, se


def judge(records: list[dict], dataset: str) -> dict:
    """The scorecard of per-seed records ({"seed", "filter", "rerank", "rerank_max", "ablations",
    "rank_decrease"}; `seed_records`): for each finding its per-seed values, mean, standard error,
    the paper's value and the verdict; and how many findings were reproduced of those judged."""
    if dataset not in FINDINGS:
        raise CirtutorError(f"no findings for dataset {dataset!r}; expected one of {', '.join(FINDINGS)}")
    if not records:
        raise CirtutorError("no seed records to judge: the run folder holds no evaluated re-ranker")
    rows = []
    for f in FINDINGS[dataset]:
        values = [_quantity(f, r) for r in records]
        row = {"id": f.id, "statement": f.statement, "metric": f.metric, "test": f.test, "k": f.k,
               "paper": paper_value(f, dataset), "table": f.table, "seeds": [r["seed"] for r in records],
               "values": values}
        if any(v is None for v in values):
            missing = ("a target in the top-K" if f.test == DECREASE else
                       f"an R_K with K above {records[0].get('k')} in stage2.eval_ks" if f.a == "R_K_max" else f.b)
            row |= {"verdict": f"not measured (needs {missing})", "reproduced": None, "mean": None, "se": None}
        else:
            text, ok, mean, se = verdict(f.test, values)
            row |= {"verdict": text, "reproduced": ok, "mean": mean, "se": se}
        rows.append(row)
    judged = [r for r in rows if r["reproduced"] is not None]
    return {"dataset": dataset, "k": records[0].get("k"), "k_max": records[0].get("k_max"),
            "seeds": [r["seed"] for r in records], "findings": rows,
            "reproduced": sum(bool(r["reproduced"]) for r in judged), "judged": len(judged), "total": len(rows)}


# ----------------------------------------------------------------------------- reading a run

def make_record(seed: int, k: int, k_max: int, main: dict, ablations: dict[str, dict],
                reference: dict | None = None) -> dict:
    """One seed's record from its metrics: `main` = the full re-ranker's {"filter", "K=k", …} (what
    `evaluate_reranker` returns), `ablations` = {variant: its metrics at K}, `reference` = the full
    model the shipped variants were compared with (their metrics.json's "full_model"), if any."""
    record = {"seed": seed, "k": k, "k_max": k_max, "filter": flat_metrics(main["filter"]),
              "rerank": flat_metrics(main[f"K={k}"]),
              "rerank_max": flat_metrics(main[f"K={k_max}"]) if k_max > k and f"K={k_max}" in main else None,
              "rank_decrease": main[f"K={k}"].get("rank_decrease"),
              "ablations": {name: flat_metrics(m) for name, m in ablations.items()}}
    return record | ({"ablation_reference": flat_metrics(reference)} if reference is not None else {})


def seed_record(run: Path, seed: int, k: int, k_max: int) -> dict | None:
    """One seed's record from a run folder (the metrics.json each `train-stage2` or `evaluate`
    writes): F, R_K, R_K_max, every variant evaluated, the rank decrease at K and each model's loss
    per epoch; None when the full re-ranker was not evaluated there."""
    path = stage_dir(run, seed, "stage2") / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    if f"K={k}" not in m:
        raise CirtutorError(f"{path} has no R_{k}: evaluate the run at its preset's K (stage2.k={k})")
    ablations, reference = {}, None
    losses = {"R_K": epoch_losses(path.parent / "metrics.csv")}
    for name, folder in variant_dirs(run, seed).items():
        losses[name] = epoch_losses(folder / "metrics.csv")
        if (folder / "metrics.json").is_file():
            a = json.loads((folder / "metrics.json").read_text())
            if f"K={k}" in a:
                ablations[name] = a[f"K={k}"]
            if f"K={k}" in a.get("full_model", {}):
                reference = a["full_model"][f"K={k}"]
    record = make_record(seed, k, k_max, m, ablations, reference)
    return record | {"epoch_losses": {name: v for name, v in losses.items() if v}}


def epoch_losses(path: Path) -> list[float]:
    """The mean training loss of each epoch in a stage's metrics.csv (empty when there is none): how a
    study records whether each model learned (notebook 07 draws them)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return epoch_means(csv.DictReader(f))


def epoch_means(rows) -> list[float]:
    """The mean loss of each epoch of a training log's rows ({"epoch", "loss", ...}), in epoch order."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        sums.setdefault(int(row["epoch"]), []).append(float(row["loss"]))
    return [round(float(np.mean(v)), 4) for _, v in sorted(sums.items())]


def seed_records(run: str | Path) -> tuple[list[dict], str]:
    """(the per-seed records of a run folder, its dataset), K and K_max from its config.json."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise CirtutorError(f"{run} is not a run folder (no config.json): pass the --run-dir of a "
                            "`cirtutor reproduce` or `train-stage2` run")
    cfg = json.loads((run / "config.json").read_text())
    dataset, s2 = cfg["data"]["dataset"], cfg["stage2"]
    k, k_max = int(s2["k"]), max(int(x) for x in (*s2["eval_ks"], s2["k"]))
    seeds = [int(d.name[4:]) for d in seed_dirs(run)]
    records = [r for seed in seeds if (r := seed_record(run, seed, k, k_max)) is not None]
    if not records:
        raise CirtutorError(f"{run} holds no evaluated re-ranker (seed*/stage2/metrics.json): "
                            "run `cirtutor train-stage2` or `cirtutor evaluate` on it first")
    return records, dataset


def study_records(study: dict, variant: str | None = None) -> tuple[list[dict], str]:
    """(the per-seed records of one variant of a study.json, its dataset): the findings study's runs."""
    name = variant or next(iter(study["variants"]))
    if name not in study["variants"]:
        raise CirtutorError(f"the study has no variant {name!r}; it has {', '.join(study['variants'])}")
    runs = study["variants"][name]["runs"]
    if not runs or "rerank_max" not in runs[0]:
        raise CirtutorError(f"study {study.get('study')!r} holds no per-seed findings records; "
                            "run `cirtutor study findings` for a scorecard over seeds")
    return runs, study.get("dataset", "cirr")


# ----------------------------------------------------------------------------- showing

def _num(x: float | None, unit: str = "") -> str:
    return "—" if x is None else f"{x:+.1f}{unit}"


def _measured(row: dict) -> str:
    unit = " %" if row["test"] == DECREASE else ""
    if row["mean"] is None:
        return "—"
    if row["se"] is None:
        return f"{row['mean']:+.1f}{unit}" if row["test"] != DECREASE else f"{row['mean']:.1f}{unit}"
    fmt = "{:.1f}" if row["test"] == DECREASE else "{:+.1f}"
    return f"{fmt.format(row['mean'])} ± {row['se']:.1f}{unit}"


TEST_TEXT = {GAIN: "mean > 2 SE", AT_LEAST_AS_GOOD: "mean > −2 SE", DECREASE: f"mean ≥ {DECREASE_MIN:.0f} %",
             FLAT: f"|mean| ≤ {FLAT_MAX:.1f}"}
TEST_CELL = {test: text.replace("|", "\\|") for test, text in TEST_TEXT.items()}   # in a markdown table cell


def summary(card: dict) -> str:
    """The scorecard's last line: "N of 8 reproduced" (with what could not be judged)."""
    line = f"{card['reproduced']} of {card['total']} reproduced"
    if card["judged"] < card["total"]:
        seeds = len(card["seeds"])
        why = "one seed decides no sign test" if seeds == 1 else "some models were not trained"
        line += f" ({card['total'] - card['judged']} not judged: {why})"
    return line


def markdown(card: dict) -> str:
    """The scorecard as a markdown table, side by side with the paper, and its summary line."""
    n = len(card["seeds"])
    head = (f"| | finding | paper | this run ({n} seed{'s' * (n != 1)}, mean ± SE) | test | verdict |\n"
            "|---|---|---|---|---|---|\n")
    rows = []
    for r in card["findings"]:
        unit = " %" if r["test"] == DECREASE else ""
        paper = f"{r['paper']:.1f}{unit}" if r["test"] == DECREASE else f"{r['paper']:+.1f}"
        rows.append(f"| {r['id']} | {r['statement']} | {paper} ({r['table']}) | {_measured(r)} | "
                    f"{TEST_CELL[r['test']]} | {r['verdict']} |")
    value = lambda v, r: "—" if v is None else f"{v:.1f}" if r["test"] == DECREASE else f"{v:+.1f}"  # noqa: E731
    per_seed = ", ".join(f"{r['id']} " + " / ".join(value(v, r) for v in r["values"]) for r in card["findings"])
    return (head + "\n".join(rows) + f"\n\nPer seed ({', '.join(map(str, card['seeds']))}): {per_seed}."
            f"\n\n**{summary(card)}.**")
