"""The inputs every run starts from, made once and cached: the device, the initial weights, the
datasets and the frozen ViT's image tokens of each split (or of a plain image folder), with the
keys that name their cache entries (docs/caching.md):

    weights_key(weights)          the initial weights' identity (a hash of their files)
    image_files_key(images)       the image files' identity (name, size, modification time of each)
    config_digest(*parts)         the name of a cache entry: a short digest of what it depends on
    feature_store(cfg, split, …)  cache_dir()/features/<dataset>-<split>-<digest>.safetensors

The stage runners (`cirtutor.pipeline`) and the cached trained models (`cirtutor.trained`) start
from these.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from cirtutor.cache import cache_dir
from cirtutor.config import Config, result_fields
from cirtutor.data.base import check_targets
from cirtutor.data.folder import ImageFolder
from cirtutor.data.preprocess import ImageTransform
from cirtutor.data.registry import open_dataset
from cirtutor.data.subsample import subsample
from cirtutor.engine.features import FeatureStore, encode_gallery
from cirtutor.engine.loop import world
from cirtutor.engine.pretrain import mini_blip_folder
from cirtutor.errors import CirtutorError
from cirtutor.models.loading import load_filter


# ----------------------------------------------------------------------------- device and initial weights

def resolve_device(cfg: Config) -> torch.device:
    """cfg.device -> a torch device, with a clear error for a GPU that is not there."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CirtutorError(f"device={cfg.device!r} but this machine has no CUDA GPU visible to torch; "
                            "use --set device=cpu (or auto)")
    return device


def is_tiny(cfg: Config) -> bool:
    return cfg.weights is None


def init_weights(cfg: Config, verbose: bool = True) -> Path:
    """The initial weights both stages start from: BLIP (paper) or the pretrained mini-BLIP (tiny)."""
    if is_tiny(cfg):
        return mini_blip_folder(cfg, verbose)
    path = Path(cfg.weights)
    if not path.exists():
        raise CirtutorError(f"initial weights {path} not found: download BLIP's model_base.pth with "
                            "`python data_scripts/download_blip.py --out models` or point --set weights=PATH at it")
    return path


# ----------------------------------------------------------------------------- cache keys

def weights_key(weights: Path) -> str:
    """What identifies the initial weights for the caches: a SHA-256 of their files' contents
    (a file, or a model folder's files) up to 64 MB each, and path + size + modification time
    for larger files (hashing BLIP's 900 MB checkpoint on every run would cost seconds). A new
    mini-BLIP at the same path therefore never reuses features or filters cached for the old one.
    Files are hashed once per process while their size and modification time stay the same."""
    weights = Path(weights).resolve()
    files = sorted(p for p in weights.iterdir() if p.is_file()) if weights.is_dir() else [weights]
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=16)
def _hash_files(stamps: tuple[tuple[str, int, int], ...]) -> str:
    """`weights_key` of files given as (path, size, mtime_ns), memoised on exactly that."""
    h = hashlib.sha256()
    for path, size, mtime_ns in stamps:
        h.update(f"{Path(path).name}\0{size}\0".encode())
        h.update(Path(path).read_bytes() if size <= 64 * 2**20 else f"{path}\0{mtime_ns}".encode())
    return h.hexdigest()


def config_digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- data and image features

def datasets(cfg: Config):
    """(train queries, validation queries) for the preset, subsampled when cfg.subsample says so."""
    train = open_dataset(cfg.data, "train", load_images=False)
    val = open_dataset(cfg.data, "val", load_images=False)
    if cfg.subsample:
        train, val = subsample(train, val, cfg.subsample, seed=cfg.data.seed)
    check_targets(val)                                       # a target that can never be found is no miss to count
    return train, val


def image_files_key(images, names: list[str] | None = None) -> str:
    """What identifies the image files a feature store encodes: each one's name, size and modification
    time (a missing file is named as such), so a changed, replaced or removed image is noticed."""
    h = hashlib.sha256()
    for name in images.gallery if names is None else names:
        try:
            stat = Path(images.image_path(name)).stat()
            h.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except (OSError, CirtutorError):
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()


def feature_store(cfg: Config, split: str, weights: Path, device, names: list[str] | None = None) -> FeatureStore:
    """Frozen-ViT image tokens of every image of `split` (or only `names`, for a subsample),
    computed once and cached on disk (safetensors, keyed by the weights' contents (`weights_key`)
    + data + resolution + names + the image files themselves (`image_files_key`)); later runs load them."""
    images = open_dataset(cfg.data, split, "gallery")
    if names is not None:
        images.gallery = list(names)
    key = config_digest(weights_key(weights), result_fields(cfg.data), cfg.model.image_size, cfg.model.patch_size,
                        names, image_files_key(images))
    path = cache_dir() / "features" / f"{cfg.data.dataset}-{split}-{key}.safetensors"
    return cached_features(cfg, path, lambda: images, weights, device)


def cached_features(cfg: Config, path: Path, gallery: Callable[[], object], weights: Path, device) -> FeatureStore:
    """The feature store at `path`, or the frozen ViT of `weights` run over `gallery()` (a
    gallery-mode dataset) and saved there first (by rank 0 only under DDP)."""
    if path.is_file():
        return FeatureStore.load(path, mmap=not is_tiny(cfg))               # paper dims: mapped, rows read on demand
    filt, _ = load_filter(weights, cfg.model)
    filt.to(device)
    dtype = torch.float32 if is_tiny(cfg) else torch.float16   # paper dims: 577 x 768 per image, halved on disk
    gallery = gallery()
    store = encode_gallery(filt.encode_images, gallery, batch_size=16 if not is_tiny(cfg) else 64,
                           device=device, dtype=dtype, progress=sys.stderr.isatty())
    if world()[0] == 0:
        store.save(path)
    return store


def feature_stores(cfg: Config, train, val, weights: Path, device) -> dict[str, FeatureStore]:
    """Image tokens of the train and val splits (only the subsample's images when subsampled)."""
    names = (lambda ds: sorted(set(ds.gallery) | {n for q in ds.queries for n in (q["reference"], q.get("target")) if n})
             ) if cfg.subsample else (lambda ds: None)
    return {"train": feature_store(cfg, "train", weights, device, names(train)),
            "val": feature_store(cfg, "val", weights, device, names(val))}


def folder_store(cfg: Config, weights: Path, device) -> FeatureStore:
    """Frozen-ViT image tokens of every image under `zeroshot.images`, computed once and cached
    (keyed by the weights' contents, the folder's files (names, sizes, modification times) and the resolution)."""
    folder = ImageFolder(cfg.zeroshot.images, ImageTransform(cfg.data.resolution))
    key = config_digest(weights_key(weights), str(folder.root.resolve()), image_files_key(folder), cfg.data.resolution,
                        cfg.model.image_size, cfg.model.patch_size)
    path = cache_dir() / "features" / f"folder-{folder.root.name}-{key}.safetensors"
    return cached_features(cfg, path, lambda: folder, weights, device)
