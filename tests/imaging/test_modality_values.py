"""`iter_modality_values`: the stored values through the modality LUT, before any window, under the budget."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from imaging import ImageTooLargeError
from imaging.dicom import iter_modality_values
from tests.helpers import dicom_testfile


def test_ct_values_are_pydicoms_hounsfield_units() -> None:
    path = dicom_testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    [(values, monochrome1)] = list(iter_modality_values(path.read_bytes(), [0], max_pixels=10_000_000))
    assert not monochrome1
    np.testing.assert_allclose(values, apply_modality_lut(ds.pixel_array, ds), atol=1e-6)


def test_every_asked_frame_and_monochrome1() -> None:
    mr = dicom_testfile("emri_small.dcm")
    ds = pydicom.dcmread(mr)
    frames = list(iter_modality_values(mr.read_bytes(), [0, 9], max_pixels=10_000_000))
    assert len(frames) == 2
    np.testing.assert_allclose(frames[1][0], apply_modality_lut(ds.pixel_array[9], ds), atol=1e-6)
    assert frames[0][1] is False  # MONOCHROME2
    cr = dicom_testfile("RG1_UNCI.dcm")  # a MONOCHROME1 chest radiograph: values as stored, the flag set
    [(values, flag)] = list(iter_modality_values(cr.read_bytes(), [0], max_pixels=50_000_000))
    assert flag is True
    np.testing.assert_allclose(
        values, apply_modality_lut(pydicom.dcmread(cr).pixel_array, pydicom.dcmread(cr))
    )


def test_the_decode_budget_is_checked_from_the_header() -> None:
    data = dicom_testfile("CT_small.dcm").read_bytes()  # 128 x 128
    with pytest.raises(ImageTooLargeError):
        list(iter_modality_values(data, [0], max_pixels=100))
