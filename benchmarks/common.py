"""What every benchmark script shares: timing a call, naming the machine, recording a table."""
from __future__ import annotations

import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def timed(fn, repeats: int) -> float:
    """Mean wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def provenance(script: str, threads: int) -> str:
    """The date, the machine and the command line of this run, for the results table."""
    machine = f"{platform.machine()} CPU, {threads} threads, torch {torch.__version__}"
    command = "python " + " ".join([f"benchmarks/{script}", *sys.argv[1:]])
    return f"{datetime.now(timezone.utc):%Y-%m-%d} · {machine} · `{command}`"


def record(lines: list[str], results: str | Path = RESULTS) -> None:
    """Print a results table and append it to RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    with open(results, "a") as f:
        f.write("\n" + text)
