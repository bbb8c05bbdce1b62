"""Real multi-frame DICOM through the real encoder: a series queried with a subset of its frames, shifted
and re-windowed, comes back first with the right frame pairs."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from imaging import WindowSpec, iter_frames
from indexer.vectors.series import SeriesIndex
from tests.helpers import dicom_testfile

# (file, frames used): an MR series and two ultrasound clips (only their first 30 frames, for time).
SERIES = (("emri_small.dcm", 10), ("examples_ybr_color.dcm", 30), ("color3d_jpeg_baseline.dcm", 30))


@pytest.fixture(scope="module")
def indexed(real_encoder):  # type: ignore[no-untyped-def]
    slices = []
    for name, count in SERIES:
        frames = [f.pixels for f in islice(iter_frames(str(dicom_testfile(name))), count)]
        slices.append(real_encoder.embed(frames))
    return SeriesIndex([1, 2, 3], slices)


def test_a_shifted_rewindowed_subset_of_an_mr_series_finds_it_with_the_right_pairs(
    indexed: SeriesIndex, real_encoder
) -> None:  # type: ignore[no-untyped-def]
    chosen = [1, 3, 5, 7, 9]
    # another window than the decoded default (percentiles of 0..467) and a 3-pixel shift. A harsher window
    # (400/600 or 200/300) still finds the series first but pairs frame 7 with frame 5 (measured).
    frames = list(
        iter_frames(str(dicom_testfile("emri_small.dcm")), window=WindowSpec(center=250, width=400))
    )
    query = real_encoder.embed([np.roll(frames[i].pixels, (3, -2), axis=(0, 1)) for i in chosen])
    hits = indexed.search(query, k=3, shortlist=3, pairs=len(chosen))
    assert hits[0].series_id == 1
    assert hits[0].score > hits[1].score
    matched = {q: s for q, s, _ in hits[0].pairs}
    assert matched == dict(enumerate(chosen))  # each query frame with its own frame


def test_a_subset_of_an_ultrasound_clip_finds_its_clip(indexed: SeriesIndex, real_encoder) -> None:  # type: ignore[no-untyped-def]
    frames = [f.pixels for f in islice(iter_frames(str(dicom_testfile("examples_ybr_color.dcm"))), 30)]
    query = real_encoder.embed([np.roll(frames[i], 4, axis=1) for i in (10, 20)])
    hits = indexed.search(query, k=3, shortlist=3)
    assert hits[0].series_id == 2
