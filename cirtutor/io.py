"""Atomic file writing: a final file name never holds a partial file.

Every artifact cirtutor writes (datasets, checkpoints, top-K files, downloads, reports)
goes through these helpers: the bytes go to a temporary file in the same folder, are
flushed to disk, and the temporary file is renamed over the final name in one step
(`os.replace`), so an interrupted run leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from cirtutor.errors import CirtutorError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it to `path` on success.

    `fsync=False` skips forcing the bytes to disk before the rename: for bulk writes
    (thousands of dataset images) whose completeness is recorded elsewhere (a marker
    file written last), at a fraction of the cost."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes owner-only files; give the final file the usual permissions
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    with atomic_open(path, "wb", fsync) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent else ""))


def _looks_like_torch_save(path) -> bool:
    """torch.save writes a zip archive (or, in the legacy format, a pickle starting with 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return True  # let torch.load report the OS error
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")    # terminal colour and cursor codes


def plain_text(text: str) -> str:
    """`text` without terminal escape codes (torch colours parts of its error messages)."""
    return ESCAPES.sub("", text)


def torch_load(path: str | os.PathLike, trust: bool = False, allowed: tuple = (), error: type = CirtutorError):
    """`torch.load` with weights_only=True (plus the `allowed` globals); a file that needs full
    unpickling is refused with `error`, unless the user trusts its origin (trust=True)."""
    if not _looks_like_torch_save(path):
        raise error(f"{path} is not a torch.save file (neither a zip archive nor a pickle): "
                    "was it truncated or overwritten? Re-create or re-download it")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if trust:  # the user vouched for this file: full unpickling, as they asked
            return torch.load(path, map_location="cpu", weights_only=False)
        raise error(
            f"{path} holds Python objects beyond tensors and plain containers ({plain_text(str(e)).splitlines()[0][:200]}).\n"
            "  Loading it would run code from the file; if you trust its origin, pass trust=True (--trust)."
        ) from None
    except RuntimeError as e:
        raise error(f"{path} is not a torch.save file ({plain_text(str(e)).splitlines()[0]})") from None
