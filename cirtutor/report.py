"""The run report: report.md, metrics.json and figures/ from the pipeline's `results` dict.

Every number printed comes from `results` (nothing is typed in here); the tables follow the
paper's layouts so a reader can hold them side by side with the paper:

    main table       F and R_K for each K      Table 6 (CIRR val) / Table 5 (Fashion-IQ val)
    ablations        variants at the main K    Table 4 (CIRR) / Table 3 (Fashion-IQ)
    findings         the paper's 8 findings    which ones this run reproduces (`cirtutor.findings`)
    seeds            mean ± std over seeds     (not in the paper: how much a number moves by chance)
    GT coverage      stage-1 top-K coverage    docs/metrics.md, 'Ground-truth coverage' (the ceiling on R@K′ ≥ K)
    rank analysis    mean rank of the target   Table 7, Fig. 8
    timing           seconds per query vs K    Fig. 7

    write_report(results, out_dir, qualitative=None) -> out_dir/report.md
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and tests draw to files only; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cirtutor import findings, viz  # noqa: E402
from cirtutor.findings import CIRR_KEYS, categories, flat_metrics  # noqa: E402
from cirtutor.io import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from cirtutor.layout import SHIPPED_STUDIES  # noqa: E402

CIRR_ABLATION_KEYS = ("R@1", "R@5", "Rs@1", "avg")                        # Table 4 columns
FIQ_ABLATION_KEYS = ("R@10", "R@50", "avg")                               # Table 3 columns
CIRR_SEED_KEYS = ("R@1", "R@5", "R@10", "Rs@1")                           # the seed table's columns
FIQ_SEED_KEYS = ("R@10", "R@50", "avg")
CIRR_CURVE_KEYS = ("R@1", "R@5", "R@10", "R@50", "Rs@1")                  # lines of the recall-vs-K figure
FIQ_CURVE_KEYS = ("R@10", "R@50", "avg")
SEED_DDOF = 1  # the seed table shows the sample standard deviation (numpy ddof=1)
SUBSAMPLE_WARNING = "**These numbers come from a subsample"  # the bold warning starts with this


# ----------------------------------------------------------------------------- metrics

def is_fashioniq(results: dict) -> bool:
    """Fashion-IQ results carry per-category metrics; CIRR results the flat Table 6 keys."""
    return "per_category" in results["filter"]


def k_items(rerank: dict) -> list[tuple[int, dict]]:
    """[(K, metrics)] sorted by K, from {"K=10": metrics, ...}."""
    return sorted((viz._k_of(key), m) for key, m in rerank.items())


def mean_std(values) -> dict:
    """{"mean", "std"} of per-seed values, the std a sample one (ddof=SEED_DDOF)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=SEED_DDOF))}


def seed_stats(results: dict) -> dict | None:
    """Mean and sample std (ddof=SEED_DDOF) over results["seed_runs"] of F, R_K (every flat metric)
    and of R − F (the seed-table keys); None when fewer than two seeds ran (no std to take)."""
    runs = results.get("seed_runs") or []
    if len(runs) < 2:
        return None
    fiq = is_fashioniq(results)
    f = [flat_metrics(run["filter"]) for run in runs]
    r = [flat_metrics(run["rerank"]) for run in runs]
    return {"seeds": [run["seed"] for run in runs], "ddof": SEED_DDOF,
            "filter": {key: mean_std([m[key] for m in f]) for key in f[0]},
            "rerank": {key: mean_std([m[key] for m in r]) for key in r[0]},
            "R-F": {key: mean_std([rm[key] - fm[key] for fm, rm in zip(f, r)])
                    for key in (FIQ_SEED_KEYS if fiq else CIRR_SEED_KEYS)}}


def metrics_json(results: dict) -> dict:
    """What metrics.json holds: flat metrics of F, every R_K and every ablation, the wall time,
    and "fusion" / "seeds" only when the run produced them."""
    fiq = is_fashioniq(results)
    flat = lambda m: {k: v for k, v in flat_metrics(m).items() if fiq or k != "avg"}  # noqa: E731  CIRR: the 7 recalls
    out = {"filter": flat(results["filter"]),
           "rerank": {f"K={k}": flat(m) for k, m in k_items(results["rerank"])},
           "ablations": {name: flat(m) for name, m in (results.get("ablations") or {}).items()},
           "wall_time_s": results["wall_time_s"]}
    if results.get("fusion"):
        out["fusion"] = flat(results["fusion"])
    if results.get("findings"):
        out["findings"] = results["findings"]
    if (seeds := seed_stats(results)) is not None:
        out["seeds"] = seeds
    return out


# ----------------------------------------------------------------------------- markdown

def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _f1(x) -> str:
    return f"{x:.1f}"


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s:.1f} s ({s / 60:.1f} min)"


def main_table(results: dict) -> str:
    """Table 6 (CIRR) / Table 5 (Fashion-IQ) layout: a row for F, one per R_K, plus the score-fusion
    row when present; the last column is the share of queries whose target is in the top-K."""
    fiq, k_main = is_fashioniq(results), results["k"]
    rows = [("F", results["filter"], "—")]
    rows += [(f"**R_{k}**" if k == k_main else f"R_{k}", m, _f1(m["coverage"]) if "coverage" in m else "—")
             for k, m in k_items(results["rerank"])]
    if results.get("fusion"):
        rows.append((f"R_{k_main} + F score fusion (not the paper's)", results["fusion"], "—"))
    if fiq:
        cats = categories(results["filter"])
        header = ["", *[f"{c} R@10 / R@50" for c in cats], "avg R@10", "avg R@50", "avg", "GT in top-K"]
        cells = lambda m: [f"{_f1(m['per_category'][c]['R@10'])} / {_f1(m['per_category'][c]['R@50'])}" for c in cats] \
            + [_f1(m[key]) for key in ("R@10", "R@50", "avg")]  # noqa: E731
    else:
        header = ["", *CIRR_KEYS[:-1], "Avg", "GT in top-K"]
        cells = lambda m: [_f1(m[key]) for key in CIRR_KEYS]  # noqa: E731
    return _table(header, [[label, *cells(m), cov] for label, m, cov in rows])


def k_table(metrics: dict, ks) -> str:
    """`evaluate_reranker`'s numbers as plain text, a row for F and one per R_K (notebook 05): CIRR's R@1 … Rs@1,
    or Fashion-IQ's R@10 and R@50 per category, then their means and avg; the last column is the coverage."""
    fiq = is_fashioniq(metrics)
    cats = categories(metrics["filter"]) if fiq else []
    cols = [(c, f"{c} R@{n}") for c in cats for n in (10, 50)] + [(None, k) for k in FIQ_CURVE_KEYS if fiq] \
        + [(None, k) for k in CIRR_CURVE_KEYS if not fiq]
    value = lambda m, c, key: m["per_category"][c][key.split()[-1]] if c else m[key]  # noqa: E731
    rows = [("F", metrics["filter"], None)] + [(f"R_{k}", metrics[f"K={k}"], metrics[f"K={k}"]["coverage"]) for k in ks]
    width = max(9, *(len(key) + 1 for _, key in cols))
    lines = [" " * 7 + "".join(f"{key:>{width}s}" for _, key in cols) + f"{'coverage':>10s}"]
    for label, m, cov in rows:
        lines.append(f"{label:7s}" + "".join(f"{value(m, c, key):{width}.1f}" for c, key in cols)
                     + (f"{cov:10.1f}" if cov is not None else f"{'—':>10s}"))
    return "\n".join(lines)


def ablation_table(results: dict) -> str | None:
    """Table 4 (CIRR: R@1, R@5, Rs@1, avg) / Table 3 (Fashion-IQ: avg R@10, avg R@50, avg) layout:
    the full model R_K at the main K, then each variant at the same K; F for reference."""
    ablations = results.get("ablations") or {}
    if not ablations:
        return None
    fiq, k = is_fashioniq(results), results["k"]
    keys = FIQ_ABLATION_KEYS if fiq else CIRR_ABLATION_KEYS
    full, short = unequal_budgets(results) or (None, None)
    shipped = {name for name, src in (results.get("ablation_sources") or {}).items() if src != "trained"}
    rows = [(f"full model (R_{k})", results["rerank"].get(f"K={k}"), full)]
    if results.get("ablation_reference"):
        rows.append((f"full model (R_{k}), shipped †", results["ablation_reference"], full))
    rows += [(name + (" †" if name in shipped else ""), m, short) for name, m in ablations.items()]
    rows.append(("F (stage 1 only, for reference)", results["filter"], None))
    header = ["variant", *(f"avg {key}" if fiq and key != "avg" else key for key in keys)]
    epochs_column = full is not None                 # only when the variants had a shorter stage 2 than R
    cells = lambda m, e: [_f1(m[key]) for key in keys] + (["–" if e is None else str(e)] if epochs_column else [])  # noqa: E731
    return _table(header + (["stage-2 epochs"] if epochs_column else []),
                  [[name, *cells(m, e)] for name, m, e in rows if m is not None])


def unequal_budgets(results: dict) -> tuple[int, int] | None:
    """(the full model's, the variants') stage-2 epochs when `reproduce` trained them differently, else None."""
    epochs = results.get("epochs") or {}
    full, short = epochs.get("stage2"), epochs.get("ablations")
    return None if full == short else (full, short)


def ablation_note(results: dict) -> list[str]:
    """A warning under the ablation table when the variants were trained shorter than R."""
    if (budgets := unequal_budgets(results)) is None:
        return []
    full, short = budgets
    return ["", f"**The variants were trained for {short} stage-2 epoch{'s' * (short != 1)}, the full model for {full}** "
                "(`ablation_epochs`, to keep the run short): the rows compare budgets as well as architectures. "
                "Notebook 07 trains every variant as long as the full model."]


def seed_table(stats: dict, k: int, fiq: bool) -> str:
    """mean ± std over seeds of F, R_K and of the gain R_K − F."""
    keys = FIQ_SEED_KEYS if fiq else CIRR_SEED_KEYS
    pm = lambda s: f"{s['mean']:.1f} ± {s['std']:.1f}"  # noqa: E731
    rows = [[label, *(pm(stats[part][key]) for key in keys)]
            for label, part in (("F", "filter"), (f"R_{k}", "rerank"), (f"R_{k} − F", "R-F"))]
    return _table(["", *keys], rows)


def coverage_table(coverage: dict) -> str:
    return _table(["K", "GT in stage-1 top-K (%)"], [[str(k), _f1(v)] for k, v in k_items(coverage)])


def rank_table_md(ra: dict) -> str:
    """Table 7 layout; means of 0-based ranks at 2 decimals, as the paper prints them."""
    t = ra["table"]
    return _table(["queries with the target in top-K", "initial", "re-ranked", "difference", "% decrease"],
                  [[f"{t['queries']} / {t['total']}", f"{t['initial']:.2f}", f"{t['reranked']:.2f}",
                    f"{t['difference']:.2f}", f"{t['percent_decrease']:.2f}"]])


def timing_tables(timing: dict) -> str:
    """Fig. 7 as numbers: per-query time of F and for each K (and its ratio to F), then the
    fixed once-per-run costs, which the paper folds into its per-query figure."""
    f = timing.get("filter_per_query_s")
    ratio = lambda s: f"{s / f:.1f}×" if f else "—"  # noqa: E731
    rows = [["F (filter only)", f"{f * 1000:.2f}", "1.0×"]] if f is not None else []
    rows += [[f"R_{k}", f"{s * 1000:.2f}", ratio(s)] for k, s in k_items(timing.get("per_query_s", {}))]
    out = _table(["", "time per query (ms)", "× F"], rows)
    if timing.get("fixed_s"):
        out += "\n\nFixed costs, paid once per run:\n\n" + _table(
            ["step", "seconds"], [[name, f"{s:.1f}"] for name, s in timing["fixed_s"].items()])
    return out


def stage_table(results: dict) -> str:
    wall = results["wall_time_s"]
    table = _table(["stage", "seconds", "% of wall time"],
                   [[name, f"{s:.1f}", _f1(100 * s / wall)] for name, s in results["stage_times_s"].items()])
    if results.get("load_average"):
        one, five, fifteen = results["load_average"]
        table += (f"\n\nLoad average when the run ended: {one} / {five} / {fifteen} (1 / 5 / 15 min) on "
                  f"{os.cpu_count()} cores. The run itself keeps about as many busy as it has threads "
                  f"({results.get('device', 'device unrecorded')}); a clearly higher load means something else was "
                  "running, and the times above are then not comparable.")
    return table


def findings_section(results: dict) -> list[str]:
    """"Which of the paper's findings this run reproduces": the scorecard (`cirtutor.findings`) beside
    the paper's numbers, where its ablation rows come from, and where the multi-seed one lives."""
    card = results["findings"]
    out = ["## Which of the paper's findings this run reproduces", "",
           f"Each finding is one quantity per seed, measured at K = {card['k']} (F8 also at K = {card['k_max']}), "
           "against the paper's value from the table named; the test is fixed in advance "
           "(`cirtutor/findings.py`, `docs/findings.md`). SE = standard error over seeds.", "",
           findings.markdown(card)]
    if results.get("ablation_sources") and any(v != "trained" for v in results["ablation_sources"].values()):
        beside = ("the shipped full model, the R of this run" if results.get("model_source") == "shipped"
                  else "the full model trained beside them on that filter")
        out += ["", "The ablation rows (and F4-F6) come from the package's shipped seed-0 models, each trained as "
                    "long as the full model on the shipped seed-0 filter and evaluated with it; F4-F6 pair them with "
                    f"{beside}."]
    if len(card["seeds"]) == 1:
        shipped = SHIPPED_STUDIES / f"findings-{results.get('preset')}.json"     # the package's multi-seed results
        where = (f"`cirtutor findings --study {shipped.relative_to(shipped.parents[3])}` holds the shipped one for "
                 f"this preset (notebook 07); " if shipped.is_file() else "")
        out += ["", "One seed cannot pass a test of 2 standard errors, so F1-F6 show their sign only. For the "
                    f"scorecard over seeds 0-2, {where}`cirtutor study findings --preset {results.get('preset')} "
                    "--seeds 3` trains it."]
    return out


SHIPPED_MODELS_NOTE = ("**Seed 0's filter and re-ranker are the package's shipped models**, trained with this preset's "
                       "recipe; this run loaded them and evaluated them (every number below is measured here), so its "
                       "stage rows in the timing table are loading and evaluation. `--set models=train` trains them "
                       "in the run instead (its time is in the README).")


def summary_line(results: dict) -> str:
    ks = ", ".join(str(k) for k, _ in k_items(results["rerank"]))
    seeds = [r["seed"] for r in results.get("seed_runs") or []] or results.get("seeds") or []
    return (f"Ran the two-stage pipeline on {results.get('dataset', '?')} with the `{results.get('preset', '?')}` preset "
            f"in `{results.get('mode', '?')}` mode (seeds {', '.join(map(str, seeds)) or '—'}): filter F, then re-ranking "
            f"of the top-K for K ∈ {{{ks}}} (main K = {results['k']}). Measured wall time "
            f"{_duration(results['wall_time_s'])} on {results.get('device', 'an unrecorded device')}"
            f"{', started ' + results['started'] if results.get('started') else ''}.")


PAPER_MAP = """## How this maps to the paper

* **Tables 1 and 2** compare F with R_K at the paper's default K (Table 1: Fashion-IQ val; Table 2: the CIRR
  test server); here the F row and the bold R_K row of the main table make that comparison, on validation data
  (for CIRR, hold them against Table 6, which is on val).
* **Tables 5 and 6** vary K: the rows R_K of the main table (Table 5 for Fashion-IQ, Table 6 for CIRR).
* **Tables 3 and 4** are the ablations (Table 3 Fashion-IQ, Table 4 CIRR): the ablation table above.
* **Table 7** and **Fig. 8** show where re-ranking moves the target: the rank analysis table and figure.
* **Fig. 7** is inference time vs K: the timing table and figure.

Numbers here are comparable with the paper's only when the run used the paper's data, splits and models
(`paper` mode, on the full splits)."""


def figure_md(name: str, caption: str) -> str:
    return f"![{caption}](figures/{name}.png)"


def report_markdown(results: dict, figures: dict[str, str]) -> str:
    """The whole report.md; `figures` maps figure file stems that were written to their captions."""
    fiq, k = is_fashioniq(results), results["k"]
    fig = lambda name: ["", figure_md(name, figures[name])] if name in figures else []  # noqa: E731
    parts = [f"# cirtutor report: `{results.get('preset', '?')}` preset, `{results.get('mode', '?')}` mode", "",
             summary_line(results)]
    if results.get("model_source") == "shipped":
        parts += ["", SHIPPED_MODELS_NOTE]
    if results.get("subsample"):
        parts += ["", f"{SUBSAMPLE_WARNING} ({results['subsample']}), not the full splits: they are not the paper's "
                      f"numbers and cannot be compared with its tables.**"]
    parts += ["", f"## Main results (paper Table {5 if fiq else 6} layout)", "",
              "Recall in %. F = stage-1 filter; R_K = stage-2 re-ranking of F's top-K (bold: the main K). "
              "\"GT in top-K\" is the share of queries whose target is in the list R_K re-ranks: R_K cannot find "
              "the others, so R@K′ for K′ ≥ K equals it.", "", main_table(results)]
    if results.get("fusion"):
        parts += ["", "The score-fusion row mixes the re-ranker's and the filter's scores; it is an extension, "
                      "not the paper's method."]
    parts += fig("recall_vs_k")
    if (table := ablation_table(results)) is not None:
        parts += ["", f"## Ablations at K = {k} (paper Table {3 if fiq else 4} layout)", "", table, *ablation_note(results)]
        if results.get("ablation_reference"):
            parts += ["", "† The package's shipped seed-0 models: every variant trained as long as the full model, on "
                          "the shipped seed-0 filter and evaluated with it, beside the full model trained the same way. "
                          "Compare the † rows with each other; this run's own full model and F are above and below."]
    if results.get("findings"):
        parts += ["", *findings_section(results)]
        parts += fig("findings")
    if (stats := seed_stats(results)) is not None:
        parts += ["", f"## Variation over seeds ({len(stats['seeds'])} runs)", "",
                  f"Mean ± sample standard deviation (numpy `std(ddof={SEED_DDOF})`) over seeds "
                  f"{', '.join(map(str, stats['seeds']))}; the last row is the gain of re-ranking, taken per seed.",
                  "", seed_table(stats, k, fiq)]
    parts += analysis_sections(results, fig, "qualitative" in figures)
    parts += ["", PAPER_MAP, ""]
    return "\n".join(parts)


def analysis_sections(results: dict, fig, qualitative: bool) -> list[str]:
    """report.md's sections after the results: coverage, where the targets move, inference time, wall time and
    the examples (`fig(name)` adds a figure's markdown when it was written)."""
    parts: list[str] = []
    if results.get("coverage"):
        parts += ["", "## Ground-truth coverage of the filter's top-K", "", coverage_table(results["coverage"])]
        parts += fig("coverage_vs_k")
    if (ra := results.get("rank_analysis")) and ra.get("table"):
        parts += ["", f"## Where the target moves (paper Table 7 and Fig. 8 analogue, top-{ra.get('k', '?')} lists)", "",
                  "Mean 0-based rank of the target, over the queries whose target is in the filter's list; "
                  "% decrease from the 2-decimal means, as in the paper.", "", rank_table_md(ra)]
        parts += fig("rank_shift")
    if results.get("timing"):
        parts += ["", f"## Inference time (paper Fig. 7 analogue, {results.get('device', 'device unrecorded')})", "",
                  timing_tables(results["timing"])]
        parts += fig("time_vs_k")
    if results.get("stage_times_s"):
        parts += ["", "## Where the wall time went", "", stage_table(results)]
    if qualitative:
        parts += ["", "## Examples", "", "Each row: the reference and its text, the filter's top candidates, "
                  "then the same list after re-ranking; the target is framed in green."]
        parts += fig("qualitative")
    return parts


# ----------------------------------------------------------------------------- figures and files

def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """PNG bytes to a buffer, then one atomic write; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def make_figures(results: dict, qualitative: list[dict] | None = None) -> dict[str, tuple]:
    """{file stem: (Figure, caption)} for every figure whose data the run produced."""
    fiq, out = is_fashioniq(results), {}
    if results.get("coverage"):
        out["coverage_vs_k"] = (viz.plot_coverage_vs_k(results["coverage"]), "GT coverage of the top-K vs K")
    if results.get("rerank"):
        flat = {key: flat_metrics(m) for key, m in results["rerank"].items()}
        out["recall_vs_k"] = (viz.plot_recall_vs_k(flat_metrics(results["filter"]), flat,
                                                   FIQ_CURVE_KEYS if fiq else CIRR_CURVE_KEYS), "recall vs K")
    if (timing := results.get("timing")) and timing.get("per_query_s"):
        out["time_vs_k"] = (viz.plot_time_vs_k(timing), "time per query vs K")
    if (ra := results.get("rank_analysis")) and ra.get("shift"):
        out["rank_shift"] = (viz.plot_rank_shift(ra["shift"]), "mean shift of the target by initial rank")
    if results.get("findings"):
        out["findings"] = (viz.plot_findings(results["findings"]), "the paper's findings: this run vs the paper")
    if qualitative:
        out["qualitative"] = (viz.plot_qualitative(qualitative), "filtered vs re-ranked examples")
    return out


def write_report(results: dict, out_dir: str | os.PathLike, qualitative: list[dict] | None = None) -> Path:
    """Write out_dir/report.md, out_dir/metrics.json and out_dir/figures/*.png; return the report's path."""
    out_dir = Path(out_dir)
    captions = {}
    for name, (fig, caption) in make_figures(results, qualitative).items():
        save_figure(fig, out_dir / "figures" / f"{name}.png")
        captions[name] = caption
    atomic_write_json(out_dir / "metrics.json", metrics_json(results), indent=2)
    return atomic_write_text(out_dir / "report.md", report_markdown(results, captions))
