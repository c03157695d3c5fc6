"""The cache for expensive artifacts (synthetic datasets, pretrained mini-BLIP, features).

One pattern everywhere: a named, seeded recipe builds the artifact into a temporary folder
which is renamed into place only when complete; the next caller finds it and loads it.
The cache lives in $CIRTUTOR_CACHE, or ~/.cache/cirtutor.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    return Path(os.environ.get("CIRTUTOR_CACHE") or Path.home() / ".cache" / "cirtutor")


def cached(name: str, build: Callable[[Path], object], what: str, verbose: bool = True) -> Path:
    """Return cache_dir()/name, building it with `build(tmp_path)` first if it is absent."""
    final = cache_dir() / name
    if final.exists():
        if verbose:
            print(f"found {what}, loading…")
        return final
    if verbose:
        print(f"building {what} (once; it is cached for next time)...")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        build(tmp)
        os.replace(tmp, final)
    except OSError:
        if not final.exists():  # another process won the race: keep its copy
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
