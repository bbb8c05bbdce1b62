"""Acceptance corpus: every file of pydicom's test files and pydicom-data decodes as the table says.

The table (acceptance_corpus.csv) names each file by source and path: `ok`, or the ImagingError
subclass and a substring of its message. Nothing may raise anything else. Golden thumbnails
(golden_thumbnails.json) pin how a handful render, by pixel statistics of the 64-pixel PNG preview.
Regenerate both after a deliberate change: `python -m tests.imaging.test_acceptance_corpus` (then
review the diff: every changed row is a changed decision).
"""

from __future__ import annotations

import csv
import json
import warnings
from functools import cache
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imaging
from imaging import DecodedImage, ImagingError, load_image, render_png

HERE = Path(__file__).resolve().parent
TABLE = HERE / "acceptance_corpus.csv"
GOLDEN = HERE / "golden_thumbnails.json"
FIELDS = ("file", "outcome", "reason")

# Stable fragments of the decoders' messages; the table stores the one that matches.
REASONS = (
    "no pixel data",
    "Unrecognised image bytes",
    "no valid Rows/Columns",
    "codestream declares",
    "could not be decoded",
    "could not be parsed",
)

# (table key, window) -> rendered with render_png(pixels, 64); checked by per-channel statistics
GOLDEN_CASES = (
    ("pydicom/CT_small.dcm", None),
    ("pydicom/CT_small.dcm", "lung"),
    ("pydicom/MR_small.dcm", None),
    ("pydicom-data/RG1_UNCI.dcm", None),
    ("pydicom-data/US1_UNCI.dcm", None),
    ("pydicom-data/OBXXXX1A.dcm", None),
    ("pydicom/SC_ybr_full_422_uncompressed.dcm", None),
    ("pydicom-data/color3d_jpeg_baseline.dcm", None),
)


@cache
def installed_files() -> dict[str, Path]:
    """Table key -> path for every installed test file (directories skipped)."""
    import pydicom.data
    from pydicom.data import get_testdata_files

    bundled = Path(pydicom.data.__file__).parent / "test_files"
    files: dict[str, Path] = {}
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        try:
            key = "pydicom/" + path.relative_to(bundled).as_posix()
        except ValueError:
            key = "pydicom-data/" + path.name
        files[key] = path
    return files


def read_table() -> list[dict[str, str]]:
    with TABLE.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def outcome_of(path: Path) -> tuple[str, str, DecodedImage | None]:
    """(outcome, reason, image) for one file; a non-ImagingError propagates (it is a bug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = load_image(path)
        except ImagingError as exc:
            message = str(exc)
            reason = next((r for r in REASONS if r in message), message[:40])
            return type(exc).__name__, reason, None
    return "ok", "", image


def thumbnail_stats(image: DecodedImage) -> dict[str, list[float]]:
    thumb = np.asarray(Image.open(BytesIO(render_png(image.pixels, 64))).convert("RGB"), dtype=np.float64)
    stats: dict[str, list[float]] = {"shape": [float(v) for v in thumb.shape[:2]]}
    for channel, name in enumerate("RGB"):
        values = thumb[..., channel]
        p5, p50, p95 = np.percentile(values, [5, 50, 95])
        stats[name] = [round(float(v), 2) for v in (values.mean(), values.std(), p5, p50, p95)]
    return stats


def _golden_id(case: tuple[str, str | None]) -> str:
    return f"{case[0]}@{case[1] or 'default'}"


ROWS = read_table()


def test_table_lists_exactly_the_installed_files() -> None:
    listed = {row["file"] for row in ROWS}
    installed = set(installed_files())
    missing = sorted(installed - listed)
    assert not missing, f"files without a row in {TABLE.name} (regenerate and review): {missing}"
    has_data = any(key.startswith("pydicom-data/") for key in installed)
    stale = sorted(key for key in listed - installed if has_data or key.startswith("pydicom/"))
    assert not stale, f"rows for files that are not installed: {stale}"
    assert len(ROWS) == len(listed), "duplicate rows"


@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_file_decodes_as_the_table_says(row: dict[str, str]) -> None:
    path = installed_files().get(row["file"])
    if path is None:
        pytest.skip(f"{row['file']} is not installed (pip install pydicom-data)")
    outcome, reason, image = outcome_of(path)
    assert (outcome, reason) == (row["outcome"], row["reason"])
    assert row["outcome"] == "ok" or issubclass(getattr(imaging, row["outcome"]), ImagingError)
    if image is not None:
        pixels = image.pixels
        assert pixels.dtype == np.float32 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[:2] == (image.metadata.rows, image.metadata.columns)
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=[_golden_id(c) for c in GOLDEN_CASES])
def test_golden_thumbnail_statistics(case: tuple[str, str | None]) -> None:
    path = installed_files().get(case[0])
    if path is None:
        pytest.skip(f"{case[0]} is not installed (pip install pydicom-data)")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))[_golden_id(case)]
    actual = thumbnail_stats(load_image(path, window=case[1]))
    assert actual["shape"] == expected["shape"]
    for channel in "RGB":
        np.testing.assert_allclose(actual[channel], expected[channel], atol=2.0, err_msg=channel)


def test_golden_images_are_the_right_way_round() -> None:
    files = installed_files()
    if "pydicom-data/RG1_UNCI.dcm" not in files:
        pytest.skip("pydicom-data is not installed")
    # MONOCHROME1 chest radiograph: the spine and mediastinum (centre) are bright, the lungs dark
    chest = load_image(files["pydicom-data/RG1_UNCI.dcm"]).pixels[..., 0]
    height, width = chest.shape
    middle = chest[height // 3 : 2 * height // 3, int(width * 0.45) : int(width * 0.55)].mean()
    lungs = chest[height // 3 : 2 * height // 3, int(width * 0.2) : int(width * 0.3)].mean()
    assert middle > lungs + 0.1
    # CT: bone brighter than soft tissue, soft tissue brighter than fat, in every window
    from pydicom import dcmread

    ds = dcmread(files["pydicom/CT_small.dcm"])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for window in (None, "lung", "bone", "auto"):
        ct = load_image(files["pydicom/CT_small.dcm"], window=window).pixels[..., 0]
        assert ct[hu > 500].mean() > ct[(hu > 20) & (hu < 80)].mean() > ct[(hu > -150) & (hu < -60)].mean()
    # colour Doppler ultrasound: colour where the flow is, grey elsewhere
    doppler = load_image(files["pydicom-data/US1_UNCI.dcm"]).pixels
    chroma = np.abs(doppler[..., 0] - doppler[..., 2])
    assert 0.01 < float((chroma > 0.2).mean()) < 0.3


def regenerate() -> None:
    rows = []
    for key, path in sorted(installed_files().items()):
        outcome, reason, _ = outcome_of(path)
        rows.append({"file": key, "outcome": outcome, "reason": reason})
    with TABLE.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    golden = {
        _golden_id(case): thumbnail_stats(load_image(installed_files()[case[0]], window=case[1]))
        for case in GOLDEN_CASES
    }
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in sorted(golden.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for row in rows:
        label = row["outcome"] + (f" ({row['reason']})" if row["reason"] else "")
        counts[label] = counts.get(label, 0) + 1
    print(f"{len(rows)} files -> {TABLE}")
    for label, count in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"  {count:4d}  {label}")


if __name__ == "__main__":
    regenerate()
