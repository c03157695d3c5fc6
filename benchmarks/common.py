"""What every benchmark script shares: timing a call, naming the machine, recording results.

Each script prints a table and appends it to RESULTS.md (with the date, the machine and the
command), and writes its headline numbers into results.json as
{"name": {"value": ..., "machine": "...", "command": "..."}} (merged, written atomically).
"""
from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
# Single-token words: a text of n of them is n + 2 tokens with [ENC] and [SEP].
WORDS = ("red blue green black white shirt dress with and the a is more less longer shorter darker lighter has "
         "logo sleeves collar pattern stripes print").split()
RESULTS_JSON = Path(__file__).with_name("results.json")


def random_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts of 8 to 20 tokens, mean 14: the real captions' mean (Fashion-IQ and CIRR val,
    14.2 and 14.0 tokens with the BLIP tokenizer)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 18))) for _ in range(n)]


def sync(device) -> None:
    """Wait for queued GPU work, so that wall times measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device="cpu") -> float:
    """Mean wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def machine(device="cpu") -> str:
    """The machine in words: the GPU's name on CUDA, else the CPU and its threads; torch's version."""
    if torch.device(device).type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def command(script: str) -> str:
    return "python " + " ".join([f"benchmarks/{script}", *sys.argv[1:]])


def provenance(script: str, device="cpu") -> str:
    """The date, the machine and the command line of this run, for the results table."""
    return f"{datetime.now(timezone.utc):%Y-%m-%d} · {machine(device)} · `{command(script)}`"


def add_output_args(parser) -> None:
    """--results (the Markdown log) and --results-json (the headline numbers): where a run writes."""
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file the table is appended to")
    parser.add_argument("--results-json", default=str(RESULTS_JSON), help="JSON file the headline numbers are merged into")


def parse(parser, argv=None, device: bool = True):
    """Add the arguments every script takes (--device, --threads, --results, --results-json),
    parse `argv` and set torch's thread count."""
    if device:
        parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def record(lines: list[str], results: str | Path = RESULTS) -> None:
    """Print a results table and append it to RESULTS.md."""
    text = "\n".join(lines) + "\n"
    print(text)
    with open(results, "a") as f:
        f.write("\n" + text)


def save_results(values: dict, script: str, device="cpu", path: str | Path = RESULTS_JSON) -> None:
    """Merge {name: value} into results.json, each with this machine and command."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    for name, value in values.items():
        data[name] = {"value": value, "machine": machine(device), "command": command(script),
                      "date": f"{datetime.now(timezone.utc):%Y-%m-%d}"}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
