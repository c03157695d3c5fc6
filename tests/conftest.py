"""Shared test fixtures: the small annotation fixtures of tests/fixtures, copied to a temp
folder and completed with fabricated images, and the real annotation files in ../shared."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(os.environ.get("CIRTUTOR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def fabricate_image(path: Path, size=(40, 30), color=(200, 30, 30), fmt=None) -> Path:
    """Write a small solid image (a placeholder for a real dataset image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def fiq_root(tmp_path) -> Path:
    """A Fashion-IQ folder: fixture annotations plus an image for every listed name."""
    root = tmp_path / "fashionIQ_dataset"
    shutil.copytree(FIXTURES / "fashioniq", root)
    for split_file in (root / "image_splits").glob("*.json"):
        for i, name in enumerate(json.loads(split_file.read_text())):
            fabricate_image(root / "images" / f"{name}.jpg", size=(30 + i, 50), color=(10 * i, 100, 200))
    return root


@pytest.fixture
def cirr_root(tmp_path) -> Path:
    """A CIRR folder (cirr_dataset/ layout): fixture annotations plus every image of the splits."""
    root = tmp_path / "cirr_dataset"
    shutil.copytree(FIXTURES / "cirr", root)
    for split_file in (root / "cirr" / "image_splits").glob("*.json"):
        for i, (name, rel) in enumerate(json.loads(split_file.read_text()).items()):
            fabricate_image(root / rel, size=(64, 48), color=(5 * i, 50, 90))
    return root


@pytest.fixture
def shared_data() -> Path:
    """The real public annotation files (no images); tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real annotation files not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """A builder of a small synthetic world in a fresh cache: `small_world(overrides)` ->
    (cfg, untrained filter seeded 0, train queries, val queries, train features, val features)."""
    import torch

    from cirtutor.config import apply_overrides, get_preset
    from cirtutor.data.registry import open_dataset
    from cirtutor.engine.features import encode_gallery
    from cirtutor.models import CandidateFilter

    mp = pytest.MonkeyPatch()
    mp.setenv("CIRTUTOR_CACHE", str(tmp_path_factory.mktemp("cache")))

    def build(overrides):
        cfg = apply_overrides(get_preset("tiny"), overrides)
        torch.manual_seed(0)
        filt = CandidateFilter(cfg.model)
        train, val = open_dataset(cfg.data, "train", load_images=False), open_dataset(cfg.data, "val")
        stores = [encode_gallery(filt.encode_images, open_dataset(cfg.data, s, "gallery"), 16) for s in ("train", "val")]
        return cfg, filt, train, val, *stores

    yield build
    mp.undo()


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures drawn by a test are closed after it (pyplot keeps every figure open otherwise)."""
    yield
    import sys
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
