"""VOI windows: the default policy, presets, header windows by index, VOI functions, enhanced frames."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging import ImagingError, WindowSpec, list_window_presets, load_image


def _hu(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def _save(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_presets_are_the_published_ct_windows() -> None:
    presets = list_window_presets()
    expected = {
        "lung": (-600, 1500),
        "mediastinum": (50, 350),
        "bone": (300, 2000),
        "brain": (40, 80),
        "soft_tissue": (40, 400),
        "abdomen": (40, 400),
        "liver": (30, 150),
    }
    for name, (center, width) in expected.items():
        assert (presets[name].center, presets[name].width, presets[name].function) == (
            center,
            width,
            "LINEAR",
        )
    presets["lung"] = WindowSpec(0, 10)  # a copy: the module's table is not changed
    assert list_window_presets()["lung"].center == -600


def test_ct_without_header_window_defaults_to_soft_tissue(dcm) -> None:
    path = dcm("CT_small.dcm")
    image = load_image(path)
    assert image.metadata.window_source == "preset:soft_tissue"
    assert (image.metadata.window_center, image.metadata.window_width) == (40, 400)
    np.testing.assert_allclose(image.pixels[..., 0], _linear(_hu(path), 40, 400), atol=1e-6)
    assert np.array_equal(image.pixels, load_image(path, window="header").pixels)


@pytest.mark.parametrize("name", ["lung", "bone", "brain", "Mediastinum", "soft tissue", "soft-tissue"])
def test_named_presets_apply_to_hounsfield_units(dcm, name: str) -> None:
    path = dcm("CT_small.dcm")
    spec = list_window_presets()[name.lower().replace(" ", "_").replace("-", "_")]
    image = load_image(path, window=name)
    np.testing.assert_allclose(image.pixels[..., 0], _linear(_hu(path), spec.center, spec.width), atol=1e-6)
    assert image.metadata.window_source.startswith("preset:")


def test_lung_and_bone_windows_show_what_they_are_for(dcm) -> None:
    hu = _hu(dcm("CT_small.dcm"))
    lung = load_image(dcm("CT_small.dcm"), window="lung").pixels[..., 0]
    bone = load_image(dcm("CT_small.dcm"), window="bone").pixels[..., 0]
    soft = (hu > 0) & (hu < 100)
    # soft tissue is near white in the lung window and mid-dark in the bone window
    assert float(lung[soft].mean()) > 0.85 and 0.25 < float(bone[soft].mean()) < 0.45
    assert float(bone[hu > 700].mean()) > 0.7


def test_unknown_preset_names_the_valid_ones(dcm) -> None:
    with pytest.raises(ImagingError, match=r"lung.*bone") as info:
        load_image(dcm("CT_small.dcm"), window="lungz")
    assert "header" in str(info.value) and "auto" in str(info.value)
    with pytest.raises(ImagingError, match="Unknown window"):
        load_image(b"not even read", window="<script>")


def test_explicit_window_spec_and_its_validation(dcm) -> None:
    path = dcm("CT_small.dcm")
    image = load_image(path, window=WindowSpec(center=100, width=700, function="LINEAR_EXACT"))
    expected = np.clip((_hu(path) - 100) / 700 + 0.5, 0, 1)
    np.testing.assert_allclose(image.pixels[..., 0], expected, atol=1e-6)
    assert image.metadata.window_source == "request"
    assert WindowSpec(0, 0.5, "LINEAR_EXACT").width == 0.5  # widths below 1 are legal when exact
    for bad in [(0, 0.5, "LINEAR"), (0, 0, "SIGMOID"), (0, float("nan"), "LINEAR"), (0, 10, "CUBIC")]:
        with pytest.raises(ImagingError):
            WindowSpec(*bad)  # type: ignore[arg-type]


def test_several_header_windows_are_selectable_by_index(dcm) -> None:
    ds = dcmread(dcm("CT_small.dcm"))
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    data = _save(ds)
    hu = _hu(dcm("CT_small.dcm"))
    first = load_image(data)
    second = load_image(data, window="header:1")
    assert (first.metadata.window_center, first.metadata.window_source) == (40, "header")
    assert (second.metadata.window_center, second.metadata.window_width) == (-600, 1500)
    np.testing.assert_allclose(second.pixels[..., 0], _linear(hu, -600, 1500), atol=1e-6)
    assert np.array_equal(load_image(data, window="header:0").pixels, first.pixels)
    with pytest.raises(ImagingError, match="2 VOI choice"):
        load_image(data, window="header:2")
    # no header window at all: "header:N" falls back to the default policy
    assert load_image(dcm("CT_small.dcm"), window="header:3").metadata.window_source == "preset:soft_tissue"


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_header_voi_functions(dcm, function: str) -> None:
    ds = dcmread(dcm("MR_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = (
        600,
        0.5 if function == "LINEAR_EXACT" else 800,
        function,
    )
    image = load_image(_save(ds))
    values = ds.pixel_array.astype(np.float64)
    if function == "LINEAR_EXACT":
        expected = np.clip((values - 600) / 0.5 + 0.5, 0, 1)
    else:
        expected = 1 / (1 + np.exp(-4 * (values - 600) / 800))
    np.testing.assert_allclose(image.pixels[..., 0], expected, atol=1e-6)
    assert image.metadata.extra["voi"] == function.lower()


def test_voi_lut_sequence_beats_the_window_and_auto_ignores_both(dcm) -> None:
    path = dcm("vlut_04.dcm")
    ds = dcmread(path)
    assert "VOILUTSequence" in ds
    image = load_image(path)
    assert image.metadata.extra["voi"] == "lut"
    from pydicom.pixels import apply_voi_lut

    lut = apply_voi_lut(ds.pixel_array, ds, prefer_lut=True).astype(np.float64)
    table = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = (lut - table.min()) / (table.max() - table.min())
    np.testing.assert_allclose(image.pixels[..., 0], expected, atol=1e-6)
    assert load_image(path, window="auto").metadata.window_source == "percentile"


def test_modality_lut_sequence_is_applied_before_the_window(dcm) -> None:
    path = dcm("mlut_18.dcm")
    ds = dcmread(path)
    assert "ModalityLUTSequence" in ds
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    image = load_image(path, window=WindowSpec(center=float(np.median(values)), width=2000))
    np.testing.assert_allclose(
        image.pixels[..., 0], _linear(values, float(np.median(values)), 2000), atol=1e-6
    )


def test_enhanced_ct_windows_and_rescale_come_from_the_functional_groups(dcm) -> None:
    path = dcm("eCT_Supplemental.dcm")
    ds = dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    image = load_image(path, frame=0)
    assert (image.metadata.window_center, image.metadata.window_width) == (49, 102)  # shared group
    np.testing.assert_allclose(image.pixels[..., 0], _linear(stored[0] - 1024, 49, 102), atol=1e-6)

    # a per-frame group overrides the shared one, for its frame only
    item = Dataset()
    item.WindowCenter, item.WindowWidth = 300, 2000
    ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = Sequence([item])
    data = _save(ds)
    assert load_image(data, frame=0).metadata.window_center == 49
    frame1 = load_image(data, frame=1)
    assert (frame1.metadata.window_center, frame1.metadata.window_width) == (300, 2000)
    np.testing.assert_allclose(frame1.pixels[..., 0], _linear(stored[1] - 1024, 300, 2000), atol=1e-6)


def test_non_ct_without_window_uses_percentiles_and_window_is_ignored_for_colour(dcm, encode, ihc) -> None:
    assert load_image(dcm("emri_small.dcm")).metadata.window_source == "percentile"
    colour = load_image(dcm("US1_UNCI.dcm"), window="lung")
    assert np.array_equal(colour.pixels, load_image(dcm("US1_UNCI.dcm")).pixels)
    assert colour.metadata.window_source is None
    png = encode(ihc, "PNG")
    assert np.array_equal(load_image(png, window="bone").pixels, load_image(png).pixels)


def test_twelve_bit_data_ignores_garbage_in_the_unused_high_bits(dcm) -> None:
    ds = dcmread(dcm("emri_small.dcm"))
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    raw = np.frombuffer(ds.PixelData, dtype="<u2") | np.uint16(0xF000)  # e.g. an old overlay plane
    ds.PixelData = raw.tobytes()
    np.testing.assert_array_equal(load_image(_save(ds)).pixels, load_image(dcm("emri_small.dcm")).pixels)
