"""Format sniffing from magic bytes alone: DICOM (Part 10 or a bare dataset), PNG, JPEG."""

from __future__ import annotations

import struct

from imaging.types import ImageFormat, UnsupportedFormatError

SUPPORTED_FORMATS = "DICOM (Part 10 or a bare little-endian dataset), PNG, JPEG"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_DICM_OFFSET = 128

# Every VR defined by PS3.5; a bare explicit-VR dataset must show one of these at byte 4.
_VALID_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US "
    b"UT UV".split()
)
# Groups a bare dataset may begin with: the file meta group (0002) or the identifying group (0008).
_FIRST_GROUPS = (0x0002, 0x0008)


def sniff_format(data: bytes) -> ImageFormat:
    """Return the image format that the leading bytes of `data` declare.

    The file name or extension is never consulted. Raises UnsupportedFormatError for anything else.
    """
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    if data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM":
        return "dicom"
    if _looks_like_bare_dicom(data):
        return "dicom"
    head = data[:8].hex(" ") if data else "<empty>"
    raise UnsupportedFormatError(
        f"Unrecognised image bytes (first bytes: {head}); supported formats are {SUPPORTED_FORMATS}. "
        "Convert the file to one of these formats."
    )


def _looks_like_bare_dicom(data: bytes) -> bool:
    """True for a dataset without preamble/'DICM' that starts with a plausible little-endian element.

    Conservative on purpose: the first tag must be in group 0002 or 0008 with a small element number,
    followed either by a known explicit VR or by an even implicit-VR length that fits in the data.
    """
    if len(data) < 12:
        return False
    group, element = struct.unpack_from("<HH", data, 0)
    if group not in _FIRST_GROUPS or element > 0x0100:
        return False
    vr = data[4:6]
    if vr in _VALID_VRS:
        if vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"UV"):
            return data[6:8] == b"\x00\x00"  # the reserved bytes of the long-length form
        (length,) = struct.unpack_from("<H", data, 6)
        return 8 + length <= len(data)
    (length,) = struct.unpack_from("<I", data, 4)
    return length % 2 == 0 and 0 < length <= min(len(data) - 8, 1024)
