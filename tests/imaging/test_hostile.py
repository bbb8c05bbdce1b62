"""Hostile input: truncation sweeps, decompression bombs, missing codecs, header text that must stay text."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging import (
    DecodedImage,
    ImageTooLargeError,
    ImagingError,
    count_frames,
    iter_frames,
    load_image,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

SWEEP_FILES = (
    "CT_small.dcm",  # explicit VR little endian, signed
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline, YBR_FULL_422
    "emri_small_jpeg_ls_lossless.dcm",  # multi-frame JPEG-LS
    "image_dfl.dcm",  # deflated dataset
    "OBXXXX1A_rle_2frame.dcm",  # palette colour, RLE, two frames
)


def _offsets(size: int) -> list[int]:
    return sorted({*range(0, min(size, 400), 9), *np.linspace(400, size - 1, 40, dtype=int).tolist()})


def _every_outcome_is_an_image_or_imaging_error(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImagingError:
        pass
    else:
        assert isinstance(image, DecodedImage)
        assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0
    try:
        assert count_frames(data) >= 1
        for frame in iter_frames(data):
            assert isinstance(frame, DecodedImage)
    except ImagingError:
        pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SWEEP_FILES)
def test_truncated_dicom_never_crashes_or_hangs(dcm, name: str) -> None:
    data = dcm(name).read_bytes()
    for cut in _offsets(len(data)):
        _every_outcome_is_an_image_or_imaging_error(data[:cut])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg_never_crash(encode, ihc, fmt: str) -> None:
    data = encode(ihc[:96, :128], fmt)
    for cut in _offsets(len(data)):
        _every_outcome_is_an_image_or_imaging_error(data[:cut])


def test_flipped_bytes_never_crash(dcm) -> None:
    rng = np.random.default_rng(3)
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"):
        original = bytearray(dcm(name).read_bytes())
        for _ in range(25):
            data = bytearray(original)
            for at in rng.integers(0, len(data), 8):
                data[at] = int(rng.integers(0, 256))
            _every_outcome_is_an_image_or_imaging_error(bytes(data))


def _measure_peak(call) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_deflate_bomb_is_refused_while_inflating(dcm) -> None:
    ds = dcmread(dcm("CT_small.dcm"))
    ds.add_new(0x00091010, "OB", bytes(48 * 2**20))  # 48 MiB of zeros: deflates to ~50 kB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    bomb = buffer.getvalue()
    del ds
    assert len(bomb) < 2**20

    def refuse() -> None:
        with pytest.raises(ImageTooLargeError, match="deflated"):
            load_image(bomb, max_pixels=500_000)  # inflating may reach 8 x 500k = 4 MB
        with pytest.raises(ImageTooLargeError, match="deflated"):
            count_frames(bomb)  # the default limit is 800 MB: use a smaller one via the setting

    import os

    os.environ["MEDCBIR_IMAGING_MAX_PIXELS"] = "500000"
    try:
        assert _measure_peak(refuse) < 16 * 2**20
    finally:
        del os.environ["MEDCBIR_IMAGING_MAX_PIXELS"]
    assert load_image(dcm("image_dfl.dcm")).metadata.rows > 0  # an honest deflated file still decodes


def test_jpeg2000_codestream_bigger_than_the_header_is_refused(dcm) -> None:
    data = bytearray(dcm("MR_small_jp2klossless.dcm").read_bytes())
    siz = data.find(b"\xff\x4f\xff\x51")
    assert siz > 0
    data[siz + 8 : siz + 16] = (60_000).to_bytes(4, "big") + (60_000).to_bytes(4, "big")  # Xsiz, Ysiz
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="codestream declares 60000x60000"):
            load_image(bytes(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_jpeg_codestream_bigger_than_the_header_is_refused(dcm) -> None:
    data = bytearray(dcm("SC_rgb_dcmtk_+eb+cy+s2.dcm").read_bytes())
    sof = data.find(b"\xff\xc0", data.find(b"\xff\xd8\xff"))
    data[sof + 5 : sof + 9] = (50_000).to_bytes(2, "big") + (50_000).to_bytes(2, "big")  # height, width
    with pytest.raises(ImageTooLargeError, match="codestream declares 50000x50000x3"):
        load_image(bytes(data))


HOSTILE_TEXT = {
    "StudyInstanceUID": "../../x",
    "SeriesInstanceUID": "..\\..\\windows\\system32",
    "SOPInstanceUID": "/etc/passwd",
    "StudyDescription": "<script>alert('x')</script>",
    "SeriesDescription": "{{7*7}} ${jndi:ldap://e/x} %s%n",
    "PatientID": "'; DROP TABLE cases; --",
    "BodyPartExamined": "<img src=x onerror=alert(1)>",
}


def test_hostile_header_text_passes_through_as_plain_text(dcm, tmp_path, monkeypatch) -> None:
    ds = dcmread(dcm("CT_small.dcm"))
    for keyword, value in HOSTILE_TEXT.items():
        ds.add_new(ds.data_element(keyword).tag if keyword in ds else keyword, "LO", value)
        setattr(ds, keyword, value)
    buffer = BytesIO()
    ds.save_as(buffer)
    monkeypatch.chdir(tmp_path)
    meta = load_image(buffer.getvalue()).metadata
    assert meta.study_instance_uid == "../../x"
    assert meta.series_instance_uid == "..\\..\\windows\\system32"
    assert meta.sop_instance_uid == "/etc/passwd"
    assert meta.study_description == "<script>alert('x')</script>"  # not escaped, not stripped: text
    assert meta.series_description == "{{7*7}} ${jndi:ldap://e/x} %s%n"
    assert meta.patient_id == "'; DROP TABLE cases; --"
    assert meta.body_part == "<img src=x onerror=alert(1)>"
    assert list(tmp_path.iterdir()) == []  # nothing was written, nothing resolved


def test_huge_declared_volume_is_refused_before_allocating_for_every_entry_point(dcm) -> None:
    ds = dcmread(dcm("emri_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = 40_000, 40_000, 5000
    buffer = BytesIO()
    ds.save_as(buffer)
    bomb = buffer.getvalue()
    assert count_frames(bomb) == 5000  # the header says so; decoding any frame is refused
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError):
            iter_frames(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    with pytest.raises(ImageTooLargeError):
        load_image(bomb, frame=4999)


CODEC_FILES = {
    "JPEG Baseline": "SC_rgb_dcmtk_+eb+cy+s2.dcm",
    "JPEG Extended": "JPGExtended.dcm",
    "JPEG Lossless SV1": "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "JPEG Lossless": "JPEG-LL.dcm",
    "JPEG-LS Lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG-LS Near-Lossless": "JPEGLSNearLossless_16.dcm",
    "JPEG 2000 Lossless": "MR_small_jp2klossless.dcm",
    "JPEG 2000": "693_J2KI.dcm",
    "RLE Lossless": "MR_small_RLE.dcm",
    "Deflated": "image_dfl.dcm",
}


def test_each_compressed_family_decodes_or_names_the_codecs_extra(dcm) -> None:
    """In a fresh interpreter where the pylibjpeg packages cannot be imported (as if not installed)."""
    paths = {family: str(dcm(name)) for family, name in CODEC_FILES.items()}
    script = (
        "import json, sys, warnings\n"
        "for name in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'jpeg_ls'):  # jpeg_ls: pyjpegls (pacs extra)\n"
        "    sys.modules[name] = None\n"
        "warnings.simplefilter('ignore')\n"
        "from pydicom import dcmread\n"
        "from pydicom.pixels import get_decoder\n"
        "from imaging import load_image, MissingCodecError\n"
        f"paths = {paths!r}\n"
        "out = {}\n"
        "for family, path in paths.items():\n"
        "    syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID\n"
        "    available = get_decoder(syntax).is_available\n"
        "    try:\n"
        "        load_image(path)\n"
        "        out[family] = [available, 'ok']\n"
        "    except MissingCodecError as exc:\n"
        "        out[family] = [available, str(exc)]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for family, (available, outcome) in outcomes.items():
        # decoded by Pillow or pydicom itself, or an error that names the extra
        assert outcome == "ok" or 'pip install "medcbir[codecs]"' in outcome, family
        assert available or outcome != "ok", family
    assert "12-bit" in outcomes["JPEG Extended"][1]  # Pillow is there but cannot do 12-bit JPEG
    missing = {family for family, (available, _) in outcomes.items() if not available}
    assert {"JPEG-LS Lossless", "JPEG-LS Near-Lossless", "JPEG Lossless"} <= missing
    assert outcomes["RLE Lossless"][1] == outcomes["Deflated"][1] == "ok"  # pydicom decodes these itself
