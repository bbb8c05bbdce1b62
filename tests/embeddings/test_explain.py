"""Explanations with the real lite0 encoder: maps add up to the score and move when the object moves."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from embeddings import EmbeddingsError, Encoder
from embeddings.explain import (
    feature_box,
    grad_cam,
    grad_cam_of_features,
    normalise_map,
    similarity_maps,
    spatial_features,
)
from tests.helpers import dicom_testfile

Image = npt.NDArray[np.float32]
SIZE = 256
BACKGROUND = 0.05


def _textured_disc() -> Image:
    yy, xx = np.mgrid[:96, :96]
    texture = 0.6 + 0.35 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    patch = np.stack([texture, texture * 0.9, texture * 0.8], axis=-1).astype(np.float32)
    patch[(xx - 47.5) ** 2 + (yy - 47.5) ** 2 > 46.0**2] = BACKGROUND
    return patch


def _ct_patch() -> Image:
    """A real CT slice (pydicom's CT_small), min-max scaled, 96 x 96."""
    raw = pydicom.dcmread(dicom_testfile("CT_small.dcm")).pixel_array.astype(np.float32)
    grey = (raw - raw.min()) / max(float(raw.max() - raw.min()), 1.0)
    grey = grey[16:112, 16:112]
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


PATCHES = {"disc": _textured_disc, "ct": _ct_patch}
# Object centres (row, column) on the 256 x 256 dark canvas.
PLACES = {"left": (128, 70), "right": (128, 186), "top": (70, 128), "bottom": (186, 128)}


def _paste(patch: Image, place: str) -> Image:
    canvas = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.float32)
    row, col = PLACES[place]
    half = patch.shape[0] // 2
    canvas[row - half : row + half, col - half : col + half] = patch
    return canvas


def _centre_of_mass(heat: npt.NDArray[np.float32]) -> tuple[float, float]:
    """(row, column) centre of mass as fractions of the map's height and width."""
    h, w = heat.shape
    rows, cols = np.mgrid[:h, :w]
    total = float(heat.sum())
    assert total > 0, "the map is empty"
    return float((rows * heat).sum() / total + 0.5) / h, float((cols * heat).sum() / total + 0.5) / w


def _assert_on_side(heat: npt.NDArray[np.float32], place: str) -> None:
    """The map's centre of mass lies in the object's third of the image, its peak not in the far half."""
    row, col = _centre_of_mass(heat)
    peak_row, peak_col = np.unravel_index(int(heat.argmax()), heat.shape)
    middle_row, middle_col = (heat.shape[0] - 1) / 2, (heat.shape[1] - 1) / 2
    if place == "left":
        assert col < 0.4 and peak_col <= middle_col, (place, col, peak_col)
    elif place == "right":
        assert col > 0.6 and peak_col >= middle_col, (place, col, peak_col)
    elif place == "top":
        assert row < 0.4 and peak_row <= middle_row, (place, row, peak_row)
    else:
        assert row > 0.6 and peak_row >= middle_row, (place, row, peak_row)


def _shift(first: npt.NDArray[np.float32], second: npt.NDArray[np.float32]) -> float:
    """How far the centre of mass moved between two maps, as a fraction of the image."""
    (r1, c1), (r2, c2) = _centre_of_mass(first), _centre_of_mass(second)
    return float(np.hypot(r2 - r1, c2 - c1))


@pytest.fixture(scope="module")
def features(lite0: Encoder) -> dict[tuple[str, str], npt.NDArray[np.float32]]:
    keys = [(kind, place) for kind in PATCHES for place in PLACES]
    maps = spatial_features(lite0, [_paste(PATCHES[kind](), place) for kind, place in keys])
    return dict(zip(keys, maps, strict=True))


def test_spatial_features_pool_into_the_indexed_vector(lite0: Encoder) -> None:
    image = _paste(_ct_patch(), "left")
    maps = spatial_features(lite0, [image])
    assert maps.shape == (1, 7, 7, 1280)
    assert maps.dtype == np.float32
    pooled = maps[0].mean(axis=(0, 1))
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled), lite0.embed_one(image), atol=1e-5)


def test_contributions_average_to_the_cosine_of_the_indexed_vectors(
    lite0: Encoder, features: dict[tuple[str, str], npt.NDArray[np.float32]]
) -> None:
    maps = similarity_maps(features[("ct", "left")], features[("disc", "right")])
    vectors = lite0.embed([_paste(_ct_patch(), "left"), _paste(_textured_disc(), "right")])
    cosine = float(vectors[0] @ vectors[1])
    assert maps.similarity == pytest.approx(cosine, abs=1e-5)
    assert float(maps.query_contributions.mean()) == pytest.approx(cosine, abs=1e-5)
    assert float(maps.neighbour_contributions.mean()) == pytest.approx(cosine, abs=1e-5)
    for heat in (maps.query, maps.neighbour):
        assert heat.shape == (7, 7)
        assert float(heat.min()) >= 0.0
        assert float(heat.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", sorted(PATCHES))
@pytest.mark.parametrize(("here", "there"), [("left", "right"), ("top", "bottom")])
def test_similarity_maps_follow_the_object(
    features: dict[tuple[str, str], npt.NDArray[np.float32]], kind: str, here: str, there: str
) -> None:
    # the query's object is at `here`, the neighbour's at `there`; then the roles swap
    forward = similarity_maps(features[(kind, here)], features[(kind, there)])
    _assert_on_side(forward.query, here)
    _assert_on_side(forward.neighbour, there)
    backward = similarity_maps(features[(kind, there)], features[(kind, here)])
    _assert_on_side(backward.query, there)
    _assert_on_side(backward.neighbour, here)
    # the same object moved across the image: its map moved with it
    assert _shift(forward.query, backward.query) > 0.3
    assert _shift(forward.neighbour, backward.neighbour) > 0.3


@pytest.mark.parametrize("kind", sorted(PATCHES))
def test_grad_cam_follows_the_object(lite0: Encoder, kind: str) -> None:
    # A one-class linear "head": the direction from an empty canvas to the centred object.
    patch = PATCHES[kind]()
    centred = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.float32)
    centred[80:176, 80:176] = patch
    empty = np.full((SIZE, SIZE, 3), BACKGROUND, dtype=np.float32)
    weight = lite0.embed_one(centred) - lite0.embed_one(empty)
    heats = {}
    for place in PLACES:
        heat = grad_cam(lite0, _paste(patch, place), weight, bias=-0.1)
        assert heat.shape == (7, 7)
        assert float(heat.max()) == pytest.approx(1.0)
        _assert_on_side(heat, place)
        heats[place] = heat
    assert _shift(heats["left"], heats["right"]) > 0.3
    assert _shift(heats["top"], heats["bottom"]) > 0.3


def test_grad_cam_refuses_a_weight_of_another_size(lite0: Encoder) -> None:
    with pytest.raises(EmbeddingsError, match="1280-d"):
        grad_cam(lite0, _paste(_textured_disc(), "left"), np.ones(512, dtype=np.float32))


def test_feature_box_is_the_centre_crop(lite0: Encoder) -> None:
    # lite0: resize the short side to 256, centre-crop 224
    assert feature_box(lite0, 256, 256) == pytest.approx((16 / 256, 16 / 256, 240 / 256, 240 / 256))
    top, left, bottom, right = feature_box(lite0, 256, 512)
    assert (top, bottom) == pytest.approx((16 / 256, 240 / 256))
    assert (left, right) == pytest.approx((144 / 512, 368 / 512))


def test_normalise_map_keeps_the_positive_part() -> None:
    np.testing.assert_allclose(normalise_map(np.array([[-2.0, 0.0], [1.0, 4.0]])), [[0, 0], [0.25, 1]])
    assert not normalise_map(np.full((3, 3), -1.0)).any()


def test_grad_cam_of_features_matches_the_closed_form() -> None:
    # d/dA of w . normalize(mean(A)) is (I - v v^T) w / (|p| h w) at every location, p = mean(A), v = p / |p|
    rng = np.random.default_rng(3)
    features = rng.standard_normal((5, 6, 32)).astype(np.float32)
    weight = rng.standard_normal(32).astype(np.float32)
    pooled = features.astype(np.float64).mean(axis=(0, 1))
    unit = pooled / np.linalg.norm(pooled)
    direction = weight - unit * (unit @ weight)
    expected = normalise_map(features.astype(np.float64) @ direction)
    np.testing.assert_allclose(grad_cam_of_features(features, weight, bias=5.0), expected, atol=1e-5)
