"""Preprocessing (docs/data_formats.md, 'Image preprocessing'): TargetPad arithmetic on hand-computed odd sizes, torchvision's
resize/crop rounding, normalisation, and clear errors for missing or broken images."""
import numpy as np
import pytest
import torch
from PIL import Image

from cirtutor.data.preprocess import (BLIP_MEAN, BLIP_STD, ImageTransform, center_crop, load_image,
                                      resize_shorter, target_pad, target_pad_amounts)
from cirtutor.errors import DataError


@pytest.mark.parametrize("w,h,expected", [
    (101, 51, (0, 14)),   # S = 101/1.25 = 80.8; vp = int(29.8/2) = int(14.9) = 14; hp = int(-10.1) -> 0
    (37, 75, (11, 0)),    # S = 60; hp = int(23/2) = int(11.5) = 11; vp = int(-7.5) = -7 -> 0
    (50, 41, (0, 0)),     # ratio 1.2195 < 1.25: unchanged
    (125, 100, (0, 0)),   # ratio exactly 1.25: padded "to" 1.25, i.e. by int(0/2) = 0
    (333, 100, (0, 83)),  # S = 266.4; vp = int(166.4/2) = int(83.2) = 83
    (9, 13, (0, 0)),      # ratio 1.444: S = 10.4; hp = int(0.7) = 0 (truncation toward zero)
])
def test_target_pad_amounts_hand_computed(w, h, expected):
    assert target_pad_amounts(w, h) == expected


def test_target_pad_pads_short_side_symmetrically_with_zeros():
    img = Image.new("RGB", (101, 51), (255, 255, 255))
    out = target_pad(img)
    assert out.size == (101, 51 + 2 * 14)
    a = np.asarray(out)
    assert (a[:14] == 0).all() and (a[-14:] == 0).all() and (a[14:-14] == 255).all()


def test_target_pad_keeps_mode_and_palette():
    img = Image.new("P", (20, 60), 3)
    img.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 255, 0, 0] + [0] * 756)
    out = target_pad(img)
    assert out.mode == "P" and out.getpalette()[:12] == img.getpalette()[:12]
    assert out.getpixel((0, 0)) == 0 and out.getpixel((out.width // 2, 30)) == 3


def test_resize_shorter_truncates_long_side():
    assert resize_shorter(Image.new("RGB", (101, 79)), 64).size == (81, 64)  # int(64 * 101 / 79) = 81
    assert resize_shorter(Image.new("RGB", (79, 101)), 64).size == (64, 81)
    assert resize_shorter(Image.new("RGB", (500, 384)), 384).size == (500, 384)


def test_center_crop_uses_rounded_offsets():
    img = Image.new("RGB", (81, 64))
    img.putpixel((8, 0), (255, 0, 0))  # offset round(17 / 2) = round(8.5) = 8 (banker's rounding)
    out = center_crop(img, 64)
    assert out.size == (64, 64) and out.getpixel((0, 0)) == (255, 0, 0)


def test_transform_shape_and_normalisation():
    x = ImageTransform(resolution=32)(Image.new("RGB", (70, 45), (255, 255, 255)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    white = (1 - torch.tensor(BLIP_MEAN)) / torch.tensor(BLIP_STD)
    assert torch.allclose(x[:, 16, 16], white, atol=1e-6)  # centre is image, not padding
    black = -torch.tensor(BLIP_MEAN) / torch.tensor(BLIP_STD)
    wide = ImageTransform(resolution=32)(Image.new("RGB", (200, 50), (255, 255, 255)))
    assert torch.allclose(wide[:, 0, 16], black, atol=1e-6)  # top row is TargetPad's black border


def test_transform_converts_grey_and_rgba_to_rgb():
    for mode in ("L", "RGBA", "P"):
        assert ImageTransform(resolution=16)(Image.new(mode, (20, 20))).shape == (3, 16, 16)


def test_load_image_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match="image not found.*nope.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_load_image_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_image(path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot decode"):
        load_image(tmp_path / "text.png")
