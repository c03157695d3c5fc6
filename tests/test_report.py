"""report.md / metrics.json / figures from a made-up but internally consistent `results` dict:
every number in the report must be the dict's, in the paper's table layouts."""
import json
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from PIL import Image

from cirtutor.report import SEED_DDOF, SUBSAMPLE_WARNING, k_table, write_report
from cirtutor.viz import TARGET_COLOR, plot_qualitative, plot_rank_shift

CIRR_KEYS = ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "avg"]


def cirr_metrics(r1, r5, r10, r50, s1, s2, s3, **extra):
    return {"R@1": r1, "R@5": r5, "R@10": r10, "R@50": r50, "Rs@1": s1, "Rs@2": s2, "Rs@3": s3,
            "avg": (r5 + s1) / 2, **extra}


def fiq_metrics(per_category, **extra):
    """Fashion-IQ metrics with the category means and avg computed as metrics.fashioniq_summary does."""
    per = {cat: {"R@10": a, "R@50": b} for cat, (a, b) in per_category.items()}
    r10, r50 = np.mean([m["R@10"] for m in per.values()]), np.mean([m["R@50"] for m in per.values()])
    return {"per_category": per, "R@10": float(r10), "R@50": float(r50), "avg": float(r10 + r50) / 2, **extra}


def common(**over):
    base = {"preset": "tiny", "mode": "tiny", "subsample": None, "seeds": [0], "k": 20,
            "coverage": {"1": 16.24, "5": 47.03, "10": 63.41, "50": 88.72, "100": 94.16},
            "rank_analysis": {"table": {"queries": 187, "total": 200, "initial": 9.3161, "reranked": 6.0473,
                                        "difference": 3.2688, "percent_decrease": 35.0}, "k": 50,
                              "shift": {"initial": list(range(6)), "mean_shift": [0.0, -0.5, 0.25, 1.5, 0.0, 3.0],
                                        "count": [30, 12, 4, 2, 0, 1]}},
            "timing": {"filter_per_query_s": 0.00213, "per_query_s": {"10": 0.01871, "20": 0.03456},
                       "fixed_s": {"load models": 3.21, "image features": 41.73, "z_t": 0.52}},
            "wall_time_s": 512.34, "stage_times_s": {"data": 12.5, "stage 1": 201.3, "stage 2": 298.54},
            "device": "cpu (2 threads)", "started": "2026-11-24 09:00:00"}
    return base | over


def make_cirr():
    return common(
        dataset="cirr",
        filter=cirr_metrics(21.34, 52.71, 66.09, 88.72, 48.27, 71.06, 84.63),
        rerank={"K=20": cirr_metrics(27.88, 58.12, 70.44, 75.86, 55.91, 76.33, 88.17, coverage=75.86),
                "K=10": cirr_metrics(26.47, 57.36, 63.41, 63.41, 55.91, 76.33, 88.17, coverage=63.41)},
        ablations={"w/o Encoder-t": cirr_metrics(22.07, 53.36, 68.3, 75.86, 49.42, 72.9, 85.0),
                   "w/o Encoder-z_t": cirr_metrics(19.66, 49.93, 66.6, 75.86, 54.72, 75.1, 87.2)},
        fusion=cirr_metrics(28.51, 59.04, 71.19, 75.86, 56.37, 76.81, 88.6))


@pytest.fixture
def cirr_results():
    return make_cirr()


def text_only(results):
    """`results` without the data of the slower figures, for tests that read only the text."""
    return {k: v for k, v in results.items() if k not in ("coverage", "timing", "rank_analysis")}


@pytest.fixture(scope="module")
def cirr_run(tmp_path_factory):
    """One report of the full CIRR results, shared by the tests that only read it."""
    results, out = make_cirr(), tmp_path_factory.mktemp("cirr")
    md, metrics = write(results, out)
    return md, metrics, results, out / "run"


@pytest.fixture
def fiq_results():
    cats = {"dress": (20.36, 44.91), "toptee": (25.12, 51.77)}  # shirt absent: only the categories present show
    return common(
        dataset="fashioniq", k=10, coverage={"10": 34.5, "50": 60.2},
        filter=fiq_metrics(cats),
        rerank={"K=10": fiq_metrics({"dress": (24.83, 30.07), "toptee": (29.4, 38.92)}, coverage=34.5)},
        ablations={"w/o Encoder-z_t": fiq_metrics({"dress": (18.11, 30.07), "toptee": (22.95, 38.92)})})


def seed_runs(results, deltas):
    """Seed runs whose R@1 etc. are the main ones shifted by known amounts."""
    runs = []
    for seed, d in enumerate(deltas):
        f = {key: v + d for key, v in results["filter"].items()}
        r = {key: v + 2 * d for key, v in results["rerank"]["K=20"].items()}
        runs.append({"seed": seed, "filter": f, "rerank": r})
    return runs


def row(*cells):
    return "| " + " | ".join(cells) + " |"


def table_rows(md):
    return set(line for line in md.splitlines() if line.startswith("|"))


def f1(x):
    return f"{x:.1f}"


def write(results, tmp_path, **kw):
    path = write_report(results, tmp_path / "run", **kw)
    return path.read_text(), json.loads((tmp_path / "run" / "metrics.json").read_text())


# ----------------------------------------------------------------------------- CIRR

def test_cirr_main_table_has_the_dicts_numbers_in_table_6_layout(cirr_run):
    md, _, cirr_results, _ = cirr_run
    rows = table_rows(md)
    assert row("", "R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg", "GT in top-K") in rows
    assert row("F", *(f1(cirr_results["filter"][k]) for k in CIRR_KEYS), "—") in rows
    r10, r20 = cirr_results["rerank"]["K=10"], cirr_results["rerank"]["K=20"]
    assert row("R_10", *(f1(r10[k]) for k in CIRR_KEYS), "63.4") in rows
    assert row("**R_20**", *(f1(r20[k]) for k in CIRR_KEYS), "75.9") in rows  # the main K in bold
    assert md.index("| R_10 |") < md.index("| **R_20** |")                   # rows sorted by K, not dict order
    fusion = cirr_results["fusion"]
    assert row("R_20 + F score fusion (not the paper's)", *(f1(fusion[k]) for k in CIRR_KEYS), "—") in rows


def test_cirr_ablation_coverage_rank_and_timing_tables(cirr_run):
    md, _, cirr_results, _ = cirr_run
    rows = table_rows(md)
    keys = ["R@1", "R@5", "Rs@1", "avg"]  # Table 4's columns
    assert row("variant", *keys) in rows
    assert row("full model (R_20)", *(f1(cirr_results["rerank"]["K=20"][k]) for k in keys)) in rows
    for name, m in cirr_results["ablations"].items():
        assert row(name, *(f1(m[k]) for k in keys)) in rows
    assert row("1", "16.2") in rows and row("100", "94.2") in rows
    assert md.index("| 5 | 47.0 |") < md.index("| 10 | 63.4 |") < md.index("| 50 | 88.7 |")  # sorted numerically
    assert row("187 / 200", "9.32", "6.05", "3.27", "35.00") in rows
    assert row("F (filter only)", "2.13", "1.0×") in rows
    assert row("R_10", "18.71", f"{0.01871 / 0.00213:.1f}×") in rows and row("R_20", "34.56", "16.2×") in rows
    assert row("image features", "41.7") in rows and row("stage 2", "298.5", "58.3") in rows
    assert "512.3 s (8.5 min)" in md and "cpu (2 threads)" in md
    for table in ("Tables 1 and 2", "Tables 5 and 6", "Tables 3 and 4", "Table 7", "Fig. 8", "Fig. 7"):
        assert table in md


def test_cirr_metrics_json_has_exactly_the_required_structure(cirr_run, tmp_path):
    _, m, cirr_results, _ = cirr_run
    assert set(m) == {"filter", "rerank", "ablations", "fusion", "wall_time_s"}  # no seeds: one seed ran
    assert list(m["rerank"]) == ["K=10", "K=20"]
    assert set(m["ablations"]) == set(cirr_results["ablations"])
    for inner in [m["filter"], m["fusion"], *m["rerank"].values(), *m["ablations"].values()]:
        assert list(inner) == CIRR_KEYS[:-1]  # the seven recalls: "avg" and "coverage" are left out
    assert m["rerank"]["K=20"] == {k: cirr_results["rerank"]["K=20"][k] for k in CIRR_KEYS[:-1]}
    assert m["wall_time_s"] == cirr_results["wall_time_s"]
    bare = text_only(cirr_results) | {"ablations": {}}
    del bare["fusion"]
    md, m = write(bare, tmp_path)
    assert set(m) == {"filter", "rerank", "ablations", "wall_time_s"} and m["ablations"] == {}
    assert "fusion" not in md and "## Ablations" not in md


def test_subsample_warning_only_when_subsampled(cirr_run, tmp_path):
    md, _, cirr_results, _ = cirr_run
    assert SUBSAMPLE_WARNING not in md and "subsample" not in md
    md, _ = write(text_only(cirr_results) | {"subsample": "train=0.1,val=500,gallery=2000"}, tmp_path)
    warning = next(line for line in md.splitlines() if line.startswith(SUBSAMPLE_WARNING))
    assert "train=0.1,val=500,gallery=2000" in warning and "not the paper's" in warning and warning.endswith("**")


def test_figures_exist_are_pngs_and_are_linked(cirr_run):
    md, _, _, run = cirr_run
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", md)
    assert sorted(links) == [f"figures/{n}.png" for n in ("coverage_vs_k", "rank_shift", "recall_vs_k", "time_vs_k")]
    for link in links:
        with Image.open(run / link) as im:
            assert im.format == "PNG" and im.width > 100


def test_absent_data_skips_its_figure_and_section(cirr_results, tmp_path):
    for key in ("timing", "rank_analysis", "coverage"):
        del cirr_results[key]
    md, _ = write(cirr_results, tmp_path)
    assert sorted(p.name for p in (tmp_path / "run" / "figures").iterdir()) == ["recall_vs_k.png"]
    assert "Inference time" not in md and "Where the target moves" not in md and "coverage of the filter" not in md


def test_seed_table_is_numpys_mean_and_sample_std(cirr_results, tmp_path):
    deltas = [0.0, 1.3, -0.4]
    cirr_results = text_only(cirr_results) | {"seed_runs": seed_runs(cirr_results, deltas)}
    md, m = write(cirr_results, tmp_path)
    assert SEED_DDOF == 1 and "ddof=1" in md and "0, 1, 2" in md
    rows = table_rows(md)
    runs = cirr_results["seed_runs"]
    keys = ["R@1", "R@5", "R@10", "Rs@1"]
    pm = lambda xs: f"{np.mean(xs):.1f} ± {np.std(xs, ddof=1):.1f}"  # noqa: E731
    assert row("F", *(pm([r["filter"][k] for r in runs]) for k in keys)) in rows
    assert row("R_20", *(pm([r["rerank"][k] for r in runs]) for k in keys)) in rows
    assert row("R_20 − F", *(pm([r["rerank"][k] - r["filter"][k] for r in runs]) for k in keys)) in rows
    seeds = m["seeds"]
    assert seeds["rerank"]["R@1"]["std"] == pytest.approx(2 * np.std(deltas, ddof=1))
    assert seeds["R-F"]["R@5"]["mean"] == pytest.approx(np.mean(deltas) + 1.0 * (58.12 - 52.71))
    assert list(seeds["filter"]) == CIRR_KEYS and list(seeds["R-F"]) == keys


# ----------------------------------------------------------------------------- Fashion-IQ

def test_fiq_table_5_layout_and_metrics_json(fiq_results, tmp_path):
    md, m = write(fiq_results, tmp_path)
    rows = table_rows(md)
    assert row("", "dress R@10 / R@50", "toptee R@10 / R@50", "avg R@10", "avg R@50", "avg", "GT in top-K") in rows
    f, r = fiq_results["filter"], fiq_results["rerank"]["K=10"]
    cells = lambda x: [f"{f1(x['per_category'][c]['R@10'])} / {f1(x['per_category'][c]['R@50'])}"  # noqa: E731
                       for c in ("dress", "toptee")] + [f1(x[k]) for k in ("R@10", "R@50", "avg")]
    assert row("F", *cells(f), "—") in rows and row("**R_10**", *cells(r), "34.5") in rows
    assert row("F", "20.4 / 44.9", "25.1 / 51.8", "22.7", "48.3", "35.5", "—") in rows  # spelled out once
    assert row("variant", "avg R@10", "avg R@50", "avg") in rows  # Table 3's columns
    keys = ["dress R@10", "dress R@50", "toptee R@10", "toptee R@50", "R@10", "R@50", "avg"]
    assert set(m) == {"filter", "rerank", "ablations", "wall_time_s"}
    for inner in [m["filter"], m["rerank"]["K=10"], m["ablations"]["w/o Encoder-z_t"]]:
        assert list(inner) == keys
    assert m["filter"]["toptee R@50"] == 51.77 and m["rerank"]["K=10"]["avg"] == r["avg"]


def test_k_table_prints_each_datasets_columns_and_the_coverage(fiq_results, cirr_results):
    fiq = {"filter": fiq_results["filter"], **fiq_results["rerank"]}
    lines = k_table(fiq, [10]).splitlines()
    assert lines[0].split() == ["dress", "R@10", "dress", "R@50", "toptee", "R@10", "toptee", "R@50",
                                "R@10", "R@50", "avg", "coverage"]
    assert lines[1].split() == ["F", "20.4", "44.9", "25.1", "51.8", "22.7", "48.3", "35.5", "—"]
    assert lines[2].split() == ["R_10", "24.8", "30.1", "29.4", "38.9", "27.1", "34.5", "30.8", "34.5"]
    cirr = {"filter": cirr_results["filter"], **cirr_results["rerank"]}
    lines = k_table(cirr, [10, 20]).splitlines()
    assert lines[0].split() == ["R@1", "R@5", "R@10", "R@50", "Rs@1", "coverage"]
    assert [line.split()[0] for line in lines[1:]] == ["F", "R_10", "R_20"]
    assert lines[3].split()[1:] == ["27.9", "58.1", "70.4", "75.9", "55.9", "75.9"]


def test_fiq_seeds(fiq_results, tmp_path):
    runs = []
    for seed, d in enumerate([0.0, 2.0]):
        shift = lambda x: fiq_metrics({c: (v["R@10"] + d, v["R@50"] + d) for c, v in x["per_category"].items()})  # noqa: E731
        runs.append({"seed": seed, "filter": shift(fiq_results["filter"]), "rerank": shift(fiq_results["rerank"]["K=10"])})
    md, m = write(text_only(fiq_results) | {"seed_runs": runs}, tmp_path)
    assert m["seeds"]["filter"]["dress R@10"]["std"] == pytest.approx(np.std([20.36, 22.36], ddof=1))
    gain = [r["rerank"][k] - r["filter"][k] for r in runs for k in ("R@10", "R@50", "avg")]
    assert row("R_10 − F", *(f"{g:.1f} ± 0.0" for g in gain[:3])) in table_rows(md)  # same shift in F and R
    assert list(m["seeds"]["R-F"]) == ["R@10", "R@50", "avg"]


# ----------------------------------------------------------------------------- figures

def framed_titles(fig):
    green = matplotlib.colors.to_rgb(TARGET_COLOR)
    return [ax.get_title() for ax in fig.axes if any(p.get_edgecolor()[:3] == green for p in ax.patches)]


def qualitative_items(tmp_path, n=2):
    def img(name, color):
        path = tmp_path / "img" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (24, 18), color).save(path)
        return str(path)
    items = []
    for q in range(n):
        names = [f"q{q}_c{i}" for i in range(6)]
        paths = [img(x, (40 * i, 100, 200 - 30 * i)) for i, x in enumerate(names)]
        filtered = list(zip(names, paths))
        items.append({"reference": img(f"q{q}_ref", (0, 0, 0)), "caption": f"make it red, query {q}",
                      "target": names[3], "filtered": filtered, "reranked": [filtered[3]] + filtered[:3] + filtered[4:]})
    return items


def test_plot_qualitative_frames_the_target(tmp_path):
    items = qualitative_items(tmp_path)
    items[1]["target"] = "not in either list"
    fig = plot_qualitative(items)
    assert len(fig.axes) == 2 * 13  # reference + 6 filtered + 6 re-ranked per row
    assert framed_titles(fig) == ["F #4", "R #1"]  # only query 0 has its target in the lists
    assert fig.axes[0].get_title() == "reference" and "query 0" in fig.axes[0].get_ylabel().replace("\n", " ")


def test_report_with_qualitative(cirr_results, tmp_path):
    md, _ = write(text_only(cirr_results), tmp_path, qualitative=qualitative_items(tmp_path))
    assert "figures/qualitative.png" in md
    with Image.open(tmp_path / "run" / "figures" / "qualitative.png") as im:
        assert im.format == "PNG"


def test_plot_rank_shift_draws_figure_8(cirr_results):
    shift = cirr_results["rank_analysis"]["shift"]
    fig = plot_rank_shift(shift)
    top, bottom = fig.axes
    assert [p.get_x() + p.get_width() / 2 for p in top.patches] == pytest.approx([1, 2, 3, 4, 5, 6])  # x = i + 1
    assert [p.get_height() for p in top.patches] == shift["mean_shift"]
    assert [p.get_height() for p in bottom.patches] == shift["count"] and bottom.get_yscale() == "symlog"


def test_ablations_trained_shorter_than_the_full_model_say_so(cirr_results, tmp_path):
    md, _ = write(text_only({**cirr_results, "epochs": {"stage2": 10, "ablations": 2}}), tmp_path)
    rows, keys = table_rows(md), ["R@1", "R@5", "Rs@1", "avg"]
    assert row("variant", *keys, "stage-2 epochs") in rows
    assert row("full model (R_20)", *(f1(cirr_results["rerank"]["K=20"][k]) for k in keys), "10") in rows
    for name, m in cirr_results["ablations"].items():
        assert row(name, *(f1(m[k]) for k in keys), "2") in rows
    assert "trained for 2 stage-2 epochs, the full model for 10" in md
    same, _ = write(text_only({**cirr_results, "epochs": {"stage2": 10, "ablations": 10}}), tmp_path / "same")
    assert "stage-2 epochs" not in same and "trained for" not in same
