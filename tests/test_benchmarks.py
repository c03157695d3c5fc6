"""The benchmark scripts run end to end at toy sizes and write what they promise (the numbers
themselves are measured by running them for real: benchmarks/RESULTS.md)."""
import json
import sys
from pathlib import Path


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def run(script, args, tmp_path):
    module = __import__(script)
    out = ["--results", str(tmp_path / "R.md"), "--results-json", str(tmp_path / "r.json")]
    module.main([*args, *out])
    results = json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else {}
    return (tmp_path / "R.md").read_text(), results


def test_rerank_benchmark_fast_path_matches_the_baseline(tmp_path):
    table, results = run("bench_rerank", ["--preset", "tiny", "--ks", "5,100", "--queries", "12",
                                          "--baseline-queries", "2"], tmp_path)
    assert "| 100 |" in table and "speed-up" in table
    assert results["rerank_max_abs_score_diff_tiny"]["value"] < 1e-5
    entry = results["rerank_speedup_cpu_tiny_k100"]
    assert entry["value"] > 0 and "CPU" in entry["machine"] and entry["command"].startswith("python benchmarks/")


def test_train_step_benchmark_measures_time_and_memory(tmp_path):
    _, results = run("bench_train_step", ["--preset", "tiny", "--batch", "2", "--repeats", "1", "--paths", "shared",
                                          "--precisions", "fp32", "--checkpointing", "off"], tmp_path)
    assert results["train_step_s_cpu_tiny_b2"]["value"] > 0 and results["train_step_peak_mem_gb_cpu_tiny_b2"]["value"] > 0


def test_flop_and_search_benchmarks(tmp_path):
    _, flops = run("bench_flops", ["--preset", "tiny", "--pairs", "8", "--shared-by", "4", "--repeats", "1"], tmp_path)
    assert flops["pair_gflop_tiny_shared"]["value"] < flops["pair_gflop_tiny_per_pair"]["value"]
    table, search = run("bench_search", ["--sizes", "2000", "--queries", "10", "--k", "5"], tmp_path)
    assert search["search_ms_per_query_torch_2000"]["value"] > 0
    if "search_ms_per_query_faiss_2000" in search:          # faiss-cpu installed: both give the same top-K
        assert "| 1.0000 |" in table


def test_inference_benchmark(tmp_path):
    table, _ = run("bench_inference", ["--preset", "tiny", "--ks", "5", "--gallery", "100", "--queries", "1"], tmp_path)
    assert "| 5 |" in table
