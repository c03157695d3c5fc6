"""From a preset's DataConfig to a dataset: the real folders in paper mode, the cached
synthetic world in tiny mode. The one place that decides where data comes from."""
from __future__ import annotations

from pathlib import Path

from cirtutor.cache import cached
from cirtutor.config import DataConfig
from cirtutor.data.cirr import CIRR
from cirtutor.data.fashioniq import FashionIQ
from cirtutor.data.preprocess import ImageTransform
from cirtutor.data.synthetic import VERSION, make_synthetic_dataset

EVAL_SPLIT = {"cirr": "val", "fashioniq": "val"}
TEST_SPLIT = {"cirr": "test1", "fashioniq": "test"}


def synthetic_root(data: DataConfig, verbose: bool = True) -> Path:
    """The synthetic dataset for `data` (seeded recipe), generated into the cache once."""
    name = f"synthetic-{data.dataset}-n{data.synthetic_size}-r{data.synthetic_resolution}-s{data.seed}-v{VERSION}"
    name += f"-{data.synthetic_siblings}" if data.synthetic_siblings != "any" else ""
    build = lambda tmp: make_synthetic_dataset(tmp, format=data.dataset, size=data.synthetic_size,  # noqa: E731
                                               resolution=data.synthetic_resolution, seed=data.seed,
                                               siblings=data.synthetic_siblings)
    return cached(f"data/{name}", build, what=f"synthetic {data.dataset} dataset ({name})", verbose=verbose)


def dataset_root(data: DataConfig, verbose: bool = True) -> Path:
    return Path(data.root) if data.root else synthetic_root(data, verbose)


def dataset_class(data: DataConfig) -> type:
    """The loader class of `data.dataset`, which also states its retrieval protocol (`retrieval_groups`,
    `remove_reference`, `server_split`)."""
    return CIRR if data.dataset == "cirr" else FashionIQ


def open_dataset(data: DataConfig, split: str, mode: str = "queries", verbose: bool = False, **kwargs):
    """A FashionIQ or CIRR dataset for `split`/`mode` as the config describes it."""
    root = dataset_root(data, verbose)
    transform = kwargs.pop("transform", ImageTransform(data.resolution))
    if data.dataset == "cirr":
        return CIRR(root, split, mode, annotations=data.annotations, images=data.images, transform=transform, **kwargs)
    return FashionIQ(data.annotations or root, split, mode=mode, images=data.images or Path(root) / "images",
                     transform=transform, seed=data.seed, **kwargs)
