"""Frozen-ViT image tokens, computed once per image and looked up by name.

The ViT is frozen in both stages (paper §4.2), so every image's token sequence
(L_v, d_v) can be computed once, in eval mode, and reused by every epoch, by the filter's
gallery embedding and by the re-ranker's candidates — the speed path the authors' code
leaves out (they recompute features every step).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from cirtutor.data.base import collate
from cirtutor.errors import CirtutorError
from cirtutor.io import atomic_open


class FeatureStore:
    """Image tokens of a set of images, (N, L_v, d_v), addressed by image name."""

    def __init__(self, names: Sequence[str], feats: torch.Tensor):
        if len(names) != len(feats):
            raise ValueError(f"{len(names)} names for {len(feats)} feature rows")
        self.names, self.feats = list(names), feats
        self.index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, names: Sequence[str]) -> torch.Tensor:
        """Names -> (B, L_v, d_v) float32."""
        try:
            rows = [self.index[n] for n in names]
        except KeyError as e:
            raise CirtutorError(f"no image features for {e.args[0]!r}: it is not in this split's gallery") from None
        return self.feats[rows].float()

    def save(self, path: str | Path) -> None:
        with atomic_open(path, "wb") as f:
            f.write(safetensors_bytes({"feats": self.feats.contiguous()}, metadata={"names": "\n".join(self.names)}))

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> "FeatureStore":
        """Read a saved store. `mmap=True` maps the tensor from disk instead of reading it: a
        lookup reads only its rows (paper scale: CIRR's train gallery is ~15 GB in fp16)."""
        try:
            with safe_open(str(path), "pt") as f:
                names = f.metadata()["names"].split("\n")
        except Exception as e:
            raise CirtutorError(f"cannot read image features {path} ({e}): delete the file and they are recomputed") from None
        return cls(names, mapped_tensor(path, "feats") if mmap else load_file(str(path))["feats"])


def mapped_tensor(path: str | Path, key: str) -> torch.Tensor:
    """A tensor of a safetensors file as a copy-on-write memory map (numpy dtypes only).

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's
    dtype, shape and byte range, then the raw data: so the data can be mapped in place."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(n))[key]
    dtype = {"F32": np.float32, "F16": np.float16, "F64": np.float64}.get(info["dtype"])
    if dtype is None:
        raise CirtutorError(f"{path}: {info['dtype']} features cannot be memory-mapped; store them as F16 or F32")
    start, end = info["data_offsets"]
    array = np.memmap(path, dtype=dtype, mode="c", offset=8 + n + start, shape=tuple(info["shape"]))
    assert array.nbytes == end - start, "safetensors header and data disagree"
    return torch.from_numpy(array)


@torch.no_grad()
def encode_gallery(encode: Callable[[torch.Tensor], torch.Tensor], dataset, batch_size: int = 64,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = False) -> FeatureStore:
    """Run the frozen ViT (`encode`: images (B, 3, R, R) -> tokens) over a gallery-mode dataset."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    names, chunks = [], []
    for batch in tqdm(loader, desc="image features", disable=not progress, unit="batch"):
        names += batch["name"]
        chunks.append(encode(batch["image"].to(device)).to("cpu", dtype))
    return FeatureStore(names, torch.cat(chunks))
