"""DICOM decoding with pydicom: frames one at a time, modality LUT, VOI LUT/window, MONOCHROME1, colour, metadata.

Pixel pipeline, in the order of PS3.3 C.11 / PS3.4 N.2: modality LUT (Modality LUT Sequence, else
Rescale Slope/Intercept, per frame for enhanced objects), VOI (see imaging.windows for the policy),
presentation (MONOCHROME1 inverted), then [0, 1] float32 RGB. Colour (RGB planar or interleaved,
YBR_FULL, YBR_FULL_422, YBR_ICT/RCT, PALETTE COLOR) skips the grey stages and is scaled by its bit depth.

Multi-frame policy: `decode_dicom` decodes one frame, the middle one (frames // 2) unless asked;
`iter_dicom_frames` yields every frame, each decoded on its own (the encoded bytes are held, never
the whole decoded volume). Limits are checked before anything is allocated: the declared frame
against max_pixels, a compressed frame's own codestream size (JPEG, JPEG-LS, JPEG 2000) against
max_pixels, and a deflated dataset's inflated size against 8 bytes x max_pixels.
"""

from __future__ import annotations

import functools
import logging
import math
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import _get_jpg_parameters, as_pixel_options
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from imaging.dicom_display import (
    _apply_modality,
    _to_display,
    _Window,
)
from imaging.dicom_tags import _int, _safe, _short, _text
from imaging.types import (
    CorruptImageError,
    DecodedImage,
    ImageMetadata,
    ImageTooLargeError,
    MissingCodecError,
    UnsupportedFormatError,
)
from imaging.windows import WindowRequest

LOGGER = logging.getLogger(__name__)

CODECS_HINT = 'pip install "medcbir[codecs]"'
_INFLATE_BYTES_PER_PIXEL = 8  # a deflated dataset may inflate to 8 bytes per allowed pixel
_CHUNK = 1 << 20

FloatArray = npt.NDArray[np.float64]


class _DropPydicomChatter(logging.Filter):
    """pydicom's warnings quote header values (names, ids) verbatim: they must never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and not record.name.startswith("pydicom.valuerep")


@functools.cache
def _silence_pydicom() -> None:
    """Installed once, on the first DICOM decode (never at import): hostile header text stays out of logs."""
    logging.getLogger("pydicom").addFilter(_DropPydicomChatter())
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


@dataclass(frozen=True)
class _Header:
    """A parsed dataset that passed the size checks, with the numbers every frame decode needs."""

    ds: Dataset
    rows: int
    columns: int
    samples: int
    frames: int


def decode_dicom(
    data: bytes,
    *,
    max_pixels: int,
    frame: int | None = None,
    window: WindowRequest | None = None,
) -> DecodedImage:
    """Decode DICOM bytes into display-ready pixels and metadata.

    `frame` picks a frame of a multi-frame object (0-based); by default the middle frame
    (frames // 2) is used as the representative one. Only that frame is decoded.
    """
    header = _read_header(data, max_pixels=max_pixels)
    index = header.frames // 2 if frame is None else frame
    if not 0 <= index < header.frames:
        raise CorruptImageError(
            f"Frame {index} was requested but the DICOM object has {header.frames} frame(s) "
            f"(valid: 0..{header.frames - 1})."
        )
    return _decode_index(header, index, window or WindowRequest("default"), max_pixels)


def iter_dicom_frames(
    data: bytes, *, max_pixels: int, window: WindowRequest | None = None
) -> Iterator[DecodedImage]:
    """Parse and check the header now, then return an iterator decoding one frame per step."""
    header = _read_header(data, max_pixels=max_pixels)
    request = window or WindowRequest("default")

    def frames() -> Iterator[DecodedImage]:
        for index in range(header.frames):
            yield _decode_index(header, index, request, max_pixels)

    return frames()


def iter_modality_values(
    data: bytes, frames: list[int], *, max_pixels: int
) -> Iterator[tuple[npt.NDArray[np.float64], bool]]:
    """Each asked frame's stored values through the modality LUT (HU for CT), before any window, and whether
    it is MONOCHROME1; the header and every frame pass the same decode budget checks as `decode_dicom`."""
    header = _read_header(data, max_pixels=max_pixels)
    for index in frames:
        _check_codestream(header.ds, index, header.frames, max_pixels)
        arr, photometric = _decode_frame(header.ds, index)
        values, _ = _apply_modality(arr, header.ds, index)
        yield np.asarray(values, dtype=np.float64), photometric == "MONOCHROME1"


def count_dicom_frames(ds: Dataset) -> int:
    """Number of frames a (header-only) dataset declares; an unreadable count means one frame."""
    return max(_int(ds, "NumberOfFrames") or 1, 1)


def read_dicom_header(source: bytes | str, *, max_pixels: int) -> Dataset:
    """Read a dataset without its pixel data (a path is read only up to the pixels)."""
    _silence_pydicom()
    if isinstance(source, bytes):
        _check_inflated_size(source, max_pixels)
        target: Any = BytesIO(source)
    else:
        with open(source, "rb") as handle:
            head = handle.read(8192)
        if _deflated(head):
            with open(source, "rb") as handle:
                _check_inflated_size(handle.read(), max_pixels)
        target = source
    try:
        return dcmread(target, force=True, stop_before_pixels=True)
    except Exception as exc:  # hostile input: any pydicom failure is a corrupt file
        raise CorruptImageError(
            f"The DICOM header could not be parsed ({_short(exc)}); it may be truncated or not DICOM."
        ) from exc


def read_dicom_dataset(data: bytes, *, max_pixels: int) -> Dataset:
    """The whole data set, pixel data still encoded, read exactly as the decoder reads it: a file
    without preamble or File Meta is read with force, and the encoding pydicom found is recorded as
    its File Meta Transfer Syntax UID. Raises CorruptImageError or ImageTooLargeError (deflate bombs)."""
    _silence_pydicom()
    return _read_dataset(data, max_pixels)


def _read_header(data: bytes, *, max_pixels: int) -> _Header:
    _silence_pydicom()
    ds = _read_dataset(data, max_pixels)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CorruptImageError(
            "The DICOM object has no pixel data: it is truncated, or not an image (a report, "
            "presentation state, DICOMDIR, ...); only image objects can be indexed."
        )
    rows = _int(ds, "Rows")
    columns = _int(ds, "Columns")
    if not rows or not columns or rows < 0 or columns < 0:
        raise CorruptImageError("The DICOM header has no valid Rows/Columns; the file is malformed.")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = count_dicom_frames(ds)
    if "NumberOfFrames" in ds and _int(ds, "NumberOfFrames") is None:
        LOGGER.info("Unreadable DICOM NumberOfFrames; decoding the first frame only")
        ds.NumberOfFrames = 1  # our own parsed copy: lets pydicom decode instead of failing on the value
    # Frames are decoded one at a time, so the frame is what must fit; a declared frame count
    # cannot make us allocate more than the file already holds.
    declared = rows * columns * samples
    if declared > max_pixels:
        raise ImageTooLargeError(
            f"The DICOM frame declares {rows}x{columns}x{samples} = {declared:,} samples, over the "
            f"limit of {max_pixels:,}; raise MEDCBIR_IMAGING_MAX_DECODE_MIB / MEDCBIR_IMAGING_MAX_PIXELS "
            "if the image is genuine."
        )
    return _Header(ds=ds, rows=rows, columns=columns, samples=samples, frames=frames)


def _decode_index(header: _Header, index: int, request: WindowRequest, max_pixels: int) -> DecodedImage:
    ds = header.ds
    _check_codestream(ds, index, header.frames, max_pixels)
    arr, photometric = _decode_frame(ds, index)
    pixels, window = _to_display(arr, ds, photometric, index, request)
    return DecodedImage(
        pixels=pixels,
        metadata=_metadata(ds, header.rows, header.columns, header.frames, index, photometric, window),
    )


def _deflated(head: bytes) -> bool:
    return str(DeflatedExplicitVRLittleEndian).encode("ascii") in head[:8192]


def _check_inflated_size(data: bytes, max_pixels: int) -> None:
    """pydicom inflates a deflated dataset in one unbounded call: measure it first, in bounded steps."""
    if not _deflated(data):
        return
    fp = BytesIO(data)
    try:
        read_preamble(fp, force=True)
        meta = _read_file_meta_info(fp)
    except Exception:
        return  # not a well-formed Part 10 file: dcmread reports it
    if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        return
    limit = _INFLATE_BYTES_PER_PIXEL * max_pixels
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = memoryview(data)[fp.tell() :]
    try:
        for start in range(0, len(view), _CHUNK):
            pending: bytes = bytes(view[start : start + _CHUNK])
            while pending:
                total += len(inflater.decompress(pending, _CHUNK))
                pending = inflater.unconsumed_tail
                if total > limit:
                    raise ImageTooLargeError(
                        f"The deflated DICOM dataset inflates to more than {limit:,} bytes "
                        f"(8 bytes x the {max_pixels:,}-pixel limit): a decompression bomb or an image "
                        "over the limit; raise MEDCBIR_IMAGING_MAX_DECODE_MIB / MEDCBIR_IMAGING_MAX_PIXELS if it is genuine."
                    )
    except zlib.error as exc:
        raise CorruptImageError(f"The deflated DICOM dataset is damaged ({_short(exc)}).") from exc


_J2K_SIZ = b"\xff\x4f\xff\x51"


def _codestream_size(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) that a JPEG / JPEG-LS / JPEG 2000 codestream declares, if readable."""
    head = frame[:8192]
    at = head.find(_J2K_SIZ)
    if at >= 0 and len(head) >= at + 42:
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", head, at + 8)
        (components,) = struct.unpack_from(">H", head, at + 40)
        return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components
    if head.startswith(b"\xff\xd8"):
        info = _get_jpg_parameters(frame)
        if "height" in info and "width" in info:
            return int(info["height"]), int(info["width"]), int(info.get("components", 1))
    return None


def _check_codestream(ds: Dataset, index: int, frames: int, max_pixels: int) -> None:
    """A compressed frame's codestream may declare far more pixels than the header: refuse before decoding."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not syntax.is_encapsulated or "PixelData" not in ds:
        return
    try:
        frame = get_frame(ds.PixelData, index, number_of_frames=frames)
        size = _codestream_size(frame)
    except Exception:  # unreadable fragments are the decoder's to report
        return
    if size is None:
        return
    rows, columns, components = size
    if rows * columns * max(components, 1) > max_pixels:
        raise ImageTooLargeError(
            f"Frame {index}'s compressed codestream declares {rows}x{columns}x{components} samples, over "
            f"the limit of {max_pixels:,} (the header says {_int(ds, 'Rows')}x{_int(ds, 'Columns')}): "
            "a decompression bomb or an image over the limit; raise MEDCBIR_IMAGING_MAX_DECODE_MIB / "
            "MEDCBIR_IMAGING_MAX_PIXELS if genuine."
        )


def _read_dataset(data: bytes, max_pixels: int) -> Dataset:
    _check_inflated_size(data, max_pixels)
    try:
        ds = dcmread(BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many kinds on hostile input; none may escape as a crash
        raise CorruptImageError(
            f"The DICOM file could not be parsed ({_short(exc)}); it may be truncated or not DICOM."
        ) from exc
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        # A bare dataset: pydicom worked out its encoding while reading; record it as the syntax.
        is_implicit, is_little = ds.original_encoding
        if is_implicit is None or is_little is None:
            raise CorruptImageError("The DICOM dataset's transfer syntax cannot be determined.")
        syntax = (
            ImplicitVRLittleEndian
            if is_implicit
            else ExplicitVRLittleEndian
            if is_little
            else ExplicitVRBigEndian
        )
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray[Any, Any], str]:
    """Decode one frame; return it with the photometric interpretation it is now in."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedFormatError(
            f"DICOM transfer syntax '{syntax.name}' ({syntax}) has no pixel decoder (video and "
            "referenced-pixel syntaxes cannot be indexed); export the image in another transfer syntax."
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise MissingCodecError(
            f"Decoding DICOM transfer syntax '{syntax.name}' needs a codec that is not installed "
            f"({missing}). Install the codecs with: {CODECS_HINT}"
        )
    try:
        opts = as_pixel_options(ds, as_rgb=True)
        arr, info = decoder.as_array(ds, index=index, validate=True, **opts)
    except RuntimeError as exc:
        if "missing dependencies" in str(exc) or "no pixel data decoders" in str(exc).lower():
            raise MissingCodecError(
                f"Decoding DICOM transfer syntax '{syntax.name}' needs a codec that is not installed. "
                f"Install the codecs with: {CODECS_HINT}"
            ) from exc
        if _only_unsupported(str(exc)):
            raise MissingCodecError(
                f"No installed codec supports this '{syntax.name}' image ({_short(exc)}). "
                f"Install the codecs with: {CODECS_HINT}"
            ) from exc
        raise CorruptImageError(
            f"The compressed DICOM pixel data could not be decoded ({_short(exc)}); the file is damaged."
        ) from exc
    except Exception as exc:
        raise CorruptImageError(
            f"The DICOM pixel data could not be decoded ({_short(exc)}); the file may be truncated "
            "or its image header inconsistent."
        ) from exc
    photometric = str(info.get("photometric_interpretation") or _text(ds, "PhotometricInterpretation") or "")
    return arr, photometric.strip().upper()


def _only_unsupported(message: str) -> bool:
    """True when every plugin pydicom tried said it does not support the image (e.g. Pillow and 12-bit JPEG)."""
    reasons = [line for line in message.splitlines()[1:] if line.strip()]
    return bool(reasons) and all("not support" in line or "unsupported" in line.lower() for line in reasons)


# --- grey pipeline -------------------------------------------------------------------------------


# --- header values: hostile input, never allowed to crash a decode -------------------------------


def _metadata(
    ds: Dataset,
    rows: int,
    columns: int,
    frames: int,
    index: int,
    photometric: str,
    window: _Window,
) -> ImageMetadata:
    center, width, source, voi = window
    extra = {"voi": voi}
    header_photometric = _text(ds, "PhotometricInterpretation")
    if header_photometric and header_photometric.upper() != photometric:
        extra["decoded_photometric"] = photometric or "unknown"
    sop_class = _text(ds, "SOPClassUID")
    if sop_class:
        extra["sop_class_uid"] = sop_class
    return ImageMetadata(
        format="dicom",
        rows=rows,
        columns=columns,
        frames=frames,
        frame_index=index,
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        patient_id=_text(ds, "PatientID"),
        photometric_interpretation=header_photometric,
        transfer_syntax_uid=_text(ds.file_meta, "TransferSyntaxUID"),
        window_center=center,
        window_width=width,
        window_source=source,
        bits_stored=_int(ds, "BitsStored"),
        view_position=_text(ds, "ViewPosition"),
        laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        pixel_spacing=_spacing(ds),
        study_date=_study_date(ds),
        sop_class_uid=sop_class,
        extra=extra,
    )


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (or ImagerPixelSpacing for projection radiographs), when two finite positive numbers."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _safe(lambda kw=keyword: ds.get(kw))  # type: ignore[misc]
        try:
            pair = (float(value[0]), float(value[1])) if value is not None and len(value) >= 2 else None
        except (TypeError, ValueError, IndexError):
            pair = None
        if pair and all(math.isfinite(v) and v > 0 for v in pair):
            return pair
    return None


def _study_date(ds: Dataset) -> str | None:
    """StudyDate kept only when it is a well-formed YYYYMMDD date."""
    text = _text(ds, "StudyDate")
    return text if text and len(text) == 8 and text.isdigit() else None
