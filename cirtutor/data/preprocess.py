"""Image preprocessing shared by every split, train and eval alike (docs/data_formats.md, 'Image preprocessing').

The authors use CLIP4Cir's `TargetPad(1.25)` followed by BLIP's resize / centre-crop /
normalise at 384 px, with no augmentation. We do it with Pillow and torch only
(torchvision has no CPU build here), reproducing torchvision's rounding exactly:

    TargetPad(1.25) -> Resize(shorter side = R, bicubic) -> CenterCrop(R) -> RGB -> [0,1] -> Normalize
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cirtutor.errors import DataError

# BLIP uses the CLIP normalisation constants.
BLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def target_pad_amounts(w: int, h: int, target_ratio: float = 1.25) -> tuple[int, int]:
    """(horizontal, vertical) padding added on EACH side by TargetPad (docs/data_formats.md, 'Image preprocessing', step 1).

    Only images more elongated than `target_ratio` are padded, on their short side, so that
    the aspect ratio becomes ~target_ratio. Truncation is Python's int() (toward zero).
    """
    if max(w, h) / min(w, h) < target_ratio:
        return 0, 0
    s = max(w, h) / target_ratio
    return max(int((s - w) / 2), 0), max(int((s - h) / 2), 0)


def target_pad(img: Image.Image, target_ratio: float = 1.25) -> Image.Image:
    """Pad `img` symmetrically with fill 0 (before any RGB conversion, as the reference does)."""
    hp, vp = target_pad_amounts(*img.size, target_ratio)
    if hp == 0 and vp == 0:
        return img
    w, h = img.size
    out = Image.new(img.mode, (w + 2 * hp, h + 2 * vp), 0)
    if img.mode == "P" and img.getpalette() is not None:
        out.putpalette(img.getpalette())
    out.paste(img, (hp, vp))
    return out


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, aspect kept; long side = int(size * long / short)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centre crop to size x size with torchvision's offsets: round((side - size) / 2)."""
    w, h = img.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_tensor(img: Image.Image, mean=BLIP_MEAN, std=BLIP_STD) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float tensor, scaled to [0, 1] then normalised."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).copy()) / 255.0
    x = x.permute(2, 0, 1)  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


@dataclass(frozen=True)
class ImageTransform:
    """The whole preprocessing pipeline (docs/data_formats.md, 'Image preprocessing') as one callable: PIL image -> (3, R, R) tensor.

    `resolution` is 384 in paper mode; tiny mode uses its synthetic images' size (e.g. 64).
    """

    resolution: int = 384
    target_ratio: float = 1.25
    mean: tuple = BLIP_MEAN
    std: tuple = BLIP_STD

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = target_pad(img, self.target_ratio)
        img = center_crop(resize_shorter(img, self.resolution), self.resolution)
        return to_normalized_tensor(img, self.mean, self.std)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, turning every failure into a clear DataError.

    The reference implementation silently drops samples whose image fails to load;
    we stop instead, naming the file and the fix, so a batch is never silently shrunk.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"image not found: {path}\n"
            "  Check the image root (a run's --set data.images=DIR, data-stats' --images DIR) and that the "
            "download finished; `cirtutor data-stats --images DIR` lists every missing file."
        )
    try:
        img = Image.open(path)
        img.load()  # decode now: truncated or corrupt files fail here, not deep in a batch
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"cannot decode image {path}: {e}\n"
            "  The file is corrupt or truncated; delete it and download it again."
        ) from None
    return img
