"""A plain folder of images as a gallery-mode dataset: zero-shot Stage I's training images.

Pic2Word trains its mapping on images alone (CC3M in the paper). `zeroshot.images=DIR` points
Stage I at such a folder: every image file under it, recursively, named by its path relative
to DIR, preprocessed as the benchmarks' images are (`ImageTransform`, docs/data_formats.md, 'Image preprocessing').
"""
from __future__ import annotations

from pathlib import Path

from cirtutor.data.base import CIRDataset
from cirtutor.data.preprocess import ImageTransform
from cirtutor.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class ImageFolder(CIRDataset):
    """Every image under `root` (gallery mode only): items {"name", "image"}."""
    dataset_name = "image folder"

    def __init__(self, root: str | Path, transform: ImageTransform | None = None):
        super().__init__("images", "gallery", transform, load_images=True)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}\n"
                            "  zeroshot.images must be a folder of image files (searched recursively).")
        self.gallery = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                              if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.gallery:
            raise DataError(f"no images in {self.root}: expected files ending in {', '.join(IMAGE_SUFFIXES)}")

    def image_path(self, name: str) -> Path:
        return self.root / name
