"""Multi-frame policy: the middle frame by default, every frame on request, frame counts from the header."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom import dcmread

from imaging import CorruptImageError, DecodedImage, count_frames, iter_frames, load_image


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("emri_small.dcm", 10),
        ("emri_small_jpeg_2k_lossless.dcm", 10),
        ("SC_rgb_rle_2frame.dcm", 2),
        ("OBXXXX1A_2frame.dcm", 2),
        ("rtdose.dcm", 15),
        ("CT_small.dcm", 1),
    ],
)
def test_every_frame_is_yielded_in_order_with_its_index(dcm, name: str, frames: int) -> None:
    path = dcm(name)
    assert count_frames(path) == frames == count_frames(path.read_bytes())
    images = list(iter_frames(path))
    assert [image.metadata.frame_index for image in images] == list(range(frames))
    assert all(image.metadata.frames == frames for image in images)
    for index in {0, frames // 2, frames - 1}:
        assert np.array_equal(images[index].pixels, load_image(path, frame=index).pixels)
    assert np.array_equal(load_image(path).pixels, images[frames // 2].pixels)  # the default frame


def test_frames_match_pydicoms_volume(dcm) -> None:
    path = dcm("emri_small.dcm")
    volume = dcmread(path).pixel_array
    for image in iter_frames(path, window="auto"):
        shown = image.pixels[..., 0].ravel()
        assert np.corrcoef(shown, volume[image.metadata.frame_index].ravel())[0, 1] > 0.95


def test_frames_are_decoded_one_at_a_time(dcm) -> None:
    path = dcm("color3d_jpeg_baseline.dcm")  # 120 frames of 480 x 640 x 3 JPEG
    assert count_frames(path) == 120
    tracemalloc.start()
    try:
        frames = iter_frames(path, max_pixels=480 * 640 * 3)
        first: DecodedImage = next(frames)
        second = next(frames)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (first.metadata.frame_index, second.metadata.frame_index) == (0, 1)
    # the whole decoded volume would be 120 x 480 x 640 x 3 float32 = 442 MB
    assert peak < 60 * 2**20


def test_png_and_jpeg_are_one_frame(encode, ihc) -> None:
    png = encode(ihc, "PNG")
    assert count_frames(png) == 1
    (only,) = list(iter_frames(png))
    assert only.metadata.frame_index == 0 and only.pixels.shape == (512, 512, 3)


def test_bad_files_fail_when_iter_frames_is_called(dcm) -> None:
    with pytest.raises(CorruptImageError):
        iter_frames(dcm("rtplan.dcm"))
    with pytest.raises(CorruptImageError):
        iter_frames(dcm("CT_small.dcm").read_bytes()[:2000])


def test_count_frames_reads_the_header_only(dcm, tmp_path) -> None:
    data = dcm("emri_small.dcm").read_bytes()
    head = tmp_path / "head.dcm"
    head.write_bytes(data[: len(data) - 40_000])  # pixel data cut: the header still says 10
    assert count_frames(head) == 10
    assert count_frames(dcm("badVR.dcm")) == 1  # NumberOfFrames '1A' is read as one frame
