"""imaging.masking: burned-in text is found and filled, anatomy-like structure is kept, the body is cropped."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFont

from imaging.masking import (
    body_box,
    border_mask,
    burned_in_text_mask,
    crop_to_body,
    mask_burned_in_text,
)

SIZE = 256


def _gradient() -> npt.NDArray[np.float32]:
    rows = np.linspace(0.2, 0.7, SIZE, dtype=np.float32)[:, None]
    columns = np.linspace(0.0, 0.1, SIZE, dtype=np.float32)[None, :]
    return np.repeat((rows + columns)[..., None], 3, axis=2)


def _with_text(image: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The image with 'PORTABLE' and an 'R' drawn in white, and where the ink is."""
    ink = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(ink)
    font = ImageFont.load_default()
    draw.text((10, 8), "PORTABLE", fill=255, font=font)
    draw.text((220, 120), "R", fill=255, font=font)
    where = np.asarray(ink) > 127
    out = image.copy()
    out[where] = 1.0
    return out, where


def test_the_mask_covers_the_text_and_leaves_the_rest() -> None:
    image, ink = _with_text(_gradient())
    mask = burned_in_text_mask(image)
    assert mask[ink].all()
    # Only a thin margin around the letters is taken beside them.
    assert mask.mean() < 4 * ink.mean()
    assert not mask[SIZE // 2 - 20 : SIZE // 2 + 20, 40:200].any()


def test_a_plain_gradient_and_wide_bright_structure_are_not_text() -> None:
    image = _gradient()
    image[100:160, 60:120] = 0.95  # a bright block wider than any stroke (a bone, a pacemaker can)
    assert not burned_in_text_mask(image).any()
    assert not burned_in_text_mask(np.zeros((64, 64), np.float32)).any()


def test_masking_fills_text_with_the_local_background_and_keeps_other_pixels() -> None:
    plain = _gradient()
    image, ink = _with_text(plain)
    out = mask_burned_in_text(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert float(np.abs(out[ink] - plain[ink]).max()) < 0.15
    mask = burned_in_text_mask(image)
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert image[ink].min() == 1.0  # the input is not changed


def test_masking_takes_a_grey_image_and_an_explicit_mask() -> None:
    grey = _with_text(_gradient())[0][..., 0]
    mask = np.zeros(grey.shape, bool)
    np.testing.assert_array_equal(mask_burned_in_text(grey, mask), grey)
    with pytest.raises(ValueError, match="mask"):
        mask_burned_in_text(grey, np.zeros((3, 3), bool))


def test_the_border_band() -> None:
    band = border_mask((100, 200), 0.1)
    assert band[0].all() and band[:, -1].all()
    assert not band[10:90, 20:180].any() and band[9, 100] and band[50, 19]


def test_the_body_crop_drops_padding_and_keeps_the_body() -> None:
    image = np.zeros((200, 300, 3), np.float32)
    image[30:180, 50:260] = _gradient()[:150, :210]
    image[5:15, 5:60] = 1.0  # a burned-in label on the padding is not body
    box = body_box(image)
    assert (box.x0, box.y0, box.x1, box.y1) == (50, 30, 260, 180)
    assert crop_to_body(image).shape == (150, 210, 3)


def test_the_body_crop_keeps_the_whole_image_when_it_cannot_find_a_body() -> None:
    blank = np.zeros((100, 100), np.float32)
    assert body_box(blank).as_list() == [0, 0, 100, 100]
    small = blank.copy()
    small[40:60, 40:60] = 0.5  # 4% of the image: not trusted as the body
    assert body_box(small).as_list() == [0, 0, 100, 100]
    full = _gradient()
    assert body_box(full).as_list() == [0, 0, SIZE, SIZE]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="H x W"):
        burned_in_text_mask(np.zeros((2, 2, 2, 2), np.float32))
