"""Build the hostile-input corpus: generated images, archives and manifests, each with what should happen to it.

    python scripts/make_hostile_corpus.py OUT_DIR [--json]

Layout (all generated, nothing hand-picked):

    OUT_DIR/folder/    one folder to pass to `medcbir index` (good files, extreme aspect ratios, broken files)
    OUT_DIR/archives/  one decompression bomb of each archive kind (zip, tar, tar.gz), each under the
                       per-member zip ratio heuristic, plus a good zip and a good tar.gz
    OUT_DIR/manifests/ manifests in odd encodings, a binary one and one with a field over 128 KiB

Each CorpusItem says its path, kind ("image", "archive" or "manifest"), the expectation ("index": it
must be indexed / accepted; "fail": it must be refused with a recorded reason, never a crash) and why.
`build_corpus(out_dir)` is the interface the tests (CLI and live API) share.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import struct
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

Kind = Literal["image", "archive", "manifest"]
Expectation = Literal["index", "fail"]

# a bomb member: this many bytes, compressing about BOMB_RATIO times (under the 200x zip-ratio heuristic)
BOMB_MEMBER_BYTES = 8 * 1024**2
BOMB_MEMBERS = 40
BOMB_RATIO = 120
BOMB_NOISE = 7_000  # non-zero bytes per member: ~120x at deflate level 1
ZIP_RATIO_HEURISTIC = 200  # the per-member ratio that zip bombs were caught by before; these stay under it
# a sparse tar member declares this many bytes and stores one block
SPARSE_MEMBER_BYTES = 768 * 1024**2
SPARSE_MEMBERS = 4
REPORT_TEXT = "Pleuraerguss rechts, Lungenödem; Befund ähnlich Voruntersuchung — V.a. Stauung"


@dataclass(frozen=True)
class CorpusItem:
    """One generated input: where it is, what it is, and what must happen to it."""

    path: Path
    kind: Kind
    expectation: Expectation
    reason: str


def build_corpus(out_dir: Path) -> list[CorpusItem]:
    """Write the corpus under out_dir (created if needed) and return its items, files first."""
    out_dir = Path(out_dir)
    items: list[CorpusItem] = []
    items += _good_files(out_dir / "folder" / "good")
    items += _extreme_aspect_ratios(out_dir / "folder" / "aspect")
    items += _broken_files(out_dir / "folder" / "broken")
    items += _archives(out_dir / "archives")
    items += _manifests(out_dir / "manifests", [i for i in items if i.expectation == "index"])
    return items


# ---------------------------------------------------------------- images


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _dicom(
    pixels: np.ndarray, *, modality: str = "CT", rows: int | None = None, columns: int | None = None
) -> bytes:
    """A Part 10 DICOM of uint8/uint16 grey pixels; rows/columns may be forced to lie about the shape."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "HOSTILE-0001"
    ds.Rows = rows if rows is not None else pixels.shape[0]
    ds.Columns = columns if columns is not None else pixels.shape[1]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, distinct grey pattern (so good files differ in content and in vectors)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    fy, fx, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
    wave = 0.5 + 0.5 * np.sin(fy * y + phase) * np.cos(fx * x)
    return np.clip(wave * 255, 0, 255).astype(np.uint8)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _good_files(folder: Path) -> list[CorpusItem]:
    items = []
    for i in range(3):
        grey = _texture(96 + 16 * i, 128, seed=i)
        items.append(
            CorpusItem(_write(folder / f"good_{i}.png", _png(grey)), "image", "index", "a plain PNG")
        )
    rgb = np.stack([_texture(120, 90, 10), _texture(120, 90, 11), _texture(120, 90, 12)], axis=-1)
    items.append(CorpusItem(_write(folder / "good_rgb.jpg", _jpeg(rgb)), "image", "index", "a plain JPEG"))
    ct = _texture(64, 64, 20).astype(np.uint16) * 16
    items.append(CorpusItem(_write(folder / "good_ct.dcm", _dicom(ct)), "image", "index", "a plain DICOM"))
    return items


def _extreme_aspect_ratios(folder: Path) -> list[CorpusItem]:
    """Tiny files whose resize used to take tens of GB: they must index like any other image."""
    cases: list[tuple[str, bytes]] = [
        ("png_100000x1.png", _png(np.full((1, 100_000), 128, np.uint8))),
        ("png_1x65535.png", _png(np.full((65_535, 1), 200, np.uint8))),
        ("png_3000x1.png", _png(np.linspace(0, 255, 3000, dtype=np.uint8)[None, :])),
        ("jpeg_65500x1.jpg", _jpeg(np.full((1, 65_500), 90, np.uint8))),
        ("jpeg_1x65500.jpg", _jpeg(np.full((65_500, 1), 60, np.uint8))),
        ("dicom_1x65535.dcm", _dicom(np.arange(65_535, dtype=np.uint16).reshape(65_535, 1))),
        ("dicom_65535x1.dcm", _dicom(np.arange(65_535, dtype=np.uint16).reshape(1, 65_535))),
    ]
    return [
        CorpusItem(_write(folder / name, data), "image", "index", "extreme aspect ratio: bounded resize")
        for name, data in cases
    ]


def _png_bomb(side: int) -> bytes:
    """A real PNG of side x side black pixels: a few hundred KB that decode to side**2 bytes."""
    raw_row = b"\x00" * (side + 1)  # filter byte + one grey byte per pixel
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(raw_row) for _ in range(side)) + packer.flush()

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _broken_files(folder: Path) -> list[CorpusItem]:
    good_png = _png(_texture(64, 64, 30))
    good_dcm = _dicom(_texture(64, 64, 31).astype(np.uint16))
    cases: list[tuple[str, bytes, str]] = [
        ("truncated.png", good_png[: len(good_png) // 2], "truncated PNG"),
        ("truncated.dcm", good_dcm[: len(good_dcm) - 3000], "truncated DICOM pixel data"),
        ("garbage.dcm", np.random.default_rng(1).bytes(4096), "random bytes named .dcm"),
        ("empty.png", b"", "empty file named .png"),
        ("png_header_only.png", good_png[:33], "PNG signature and IHDR, no data"),
        ("png_bomb_12000x12000.png", _png_bomb(12_000), "144 Mpx PNG: over the decode budget"),
        (
            "dicom_lying_65535x65535.dcm",
            _dicom(np.zeros((4, 4), np.uint16), rows=65_535, columns=65_535),
            "header claims 65535x65535 with 32 bytes of pixels",
        ),
        ("dicom_zero_rows.dcm", _dicom(np.zeros((0, 8), np.uint16), rows=0, columns=8), "zero rows"),
    ]
    return [CorpusItem(_write(folder / name, data), "image", "fail", why) for name, data, why in cases]


# ---------------------------------------------------------------- archives


def bomb_member(seed: int) -> bytes:
    """BOMB_MEMBER_BYTES that deflate (level 1) about BOMB_RATIO times: random bytes sprinkled in zeros."""
    rng = np.random.default_rng(seed)
    data = np.zeros(BOMB_MEMBER_BYTES, np.uint8)
    data[rng.choice(BOMB_MEMBER_BYTES, BOMB_NOISE, replace=False)] = rng.integers(
        1, 255, BOMB_NOISE, dtype=np.uint8
    )
    return data.tobytes()


def write_sparse_tar(path: Path, members: int = SPARSE_MEMBERS, size: int = SPARSE_MEMBER_BYTES) -> None:
    """A plain tar of old-GNU sparse members: each declares `size` bytes and stores 512 bytes."""
    with path.open("wb") as out:
        for i in range(members):
            info = tarfile.TarInfo(f"sparse_{i}.dcm")
            info.size = 512  # the bytes stored in the archive
            info.type = tarfile.GNUTYPE_SPARSE
            header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
            # old GNU sparse map at offset 386: (offset, numbytes) pairs, then isextended, then realsize
            header[386:398] = b"%011o\0" % 0
            header[398:410] = b"%011o\0" % 512
            header[482] = 0
            header[483:495] = b"%011o\0" % size
            header[148:156] = b" " * 8
            header[148:156] = b"%06o\0 " % sum(header[:512])
            out.write(bytes(header[:512]) + b"\x01" * 512)
        out.write(b"\0" * 1024)


def _archives(folder: Path) -> list[CorpusItem]:
    folder.mkdir(parents=True, exist_ok=True)
    members = [(f"bomb/{i:03d}.dcm", bomb_member(i)) for i in range(BOMB_MEMBERS)]
    with zipfile.ZipFile(folder / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in members:
            archive.writestr(name, data)
        ratios = [info.file_size / info.compress_size for info in archive.infolist()]
    if max(ratios) >= ZIP_RATIO_HEURISTIC:
        raise RuntimeError(
            f"a bomb member inflates {max(ratios):.0f}x: it must stay under {ZIP_RATIO_HEURISTIC}x"
        )
    with tarfile.open(folder / "bomb.tar.gz", "w:gz", compresslevel=1) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    write_sparse_tar(folder / "bomb_sparse.tar")
    good = [(f"good/{i}.png", _png(_texture(80, 80, 40 + i))) for i in range(2)]
    with zipfile.ZipFile(folder / "good.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in good:
            archive.writestr(name, data)
    with tarfile.open(folder / "good.tar.gz", "w:gz") as archive:
        for name, data in [(f"good/{i}.png", _png(_texture(72, 72, 50 + i))) for i in range(2)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    total = BOMB_MEMBERS * BOMB_MEMBER_BYTES // 2**20
    return [
        CorpusItem(
            folder / "bomb.zip",
            "archive",
            "fail",
            f"zip bomb: {total} MiB in {BOMB_MEMBERS} members ~{BOMB_RATIO}x each",
        ),
        CorpusItem(
            folder / "bomb.tar.gz", "archive", "fail", f"tar.gz bomb: {total} MiB in {BOMB_MEMBERS} members"
        ),
        CorpusItem(
            folder / "bomb_sparse.tar",
            "archive",
            "fail",
            f"plain tar bomb: {SPARSE_MEMBERS} sparse members of {SPARSE_MEMBER_BYTES // 2**20} MiB each",
        ),
        CorpusItem(folder / "good.zip", "archive", "index", "a good zip of 2 PNGs"),
        CorpusItem(folder / "good.tar.gz", "archive", "index", "a good tar.gz of 2 PNGs"),
    ]


# ---------------------------------------------------------------- manifests


def _manifest_text(indexable: list[CorpusItem], folder: Path) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["filename", "case_id", "patient_id", "report", "diagnosis"])
    for i, item in enumerate(i for i in indexable if i.kind == "image"):
        writer.writerow(
            [item.path.relative_to(folder).as_posix(), f"case-{i}", f"P{i:04d}", REPORT_TEXT, "Erguss;Ödem"]
        )
    writer.writerow(["no/such/file.png", "case-missing", "P9999", "missing", "none"])
    return buffer.getvalue()


def _manifests(folder: Path, indexable: list[CorpusItem]) -> list[CorpusItem]:
    folder.mkdir(parents=True, exist_ok=True)
    text = _manifest_text(indexable, folder.parent / "folder")
    long_field = text.replace(REPORT_TEXT, "x" * (200 * 1024), 1)
    cases: list[tuple[str, bytes, Expectation, str]] = [
        ("utf8.csv", text.encode("utf-8"), "index", "UTF-8 (one row names no file)"),
        ("utf8_sig.csv", text.encode("utf-8-sig"), "index", "UTF-8 with BOM"),
        ("utf16.csv", text.encode("utf-16"), "index", "UTF-16 with BOM: detectable"),
        (
            "latin1.csv",
            text.encode("latin-1", errors="replace"),
            "fail",
            "latin-1: not UTF-8, not detectable",
        ),
        ("cp1252.csv", text.replace("—", "–").encode("cp1252"), "fail", "cp1252: not UTF-8, not detectable"),
        ("binary.csv", np.random.default_rng(2).bytes(2048), "fail", "binary bytes"),
        ("nul_bytes.csv", text.encode("utf-8").replace(b",", b"\0", 3), "fail", "NUL bytes in a text file"),
        ("long_field.csv", long_field.encode("utf-8"), "fail", "a field over 128 KiB"),
    ]
    return [
        CorpusItem(_write(folder / name, data), "manifest", expect, why) for name, data, expect, why in cases
    ]


def main() -> None:
    """Write the corpus and print one line per item (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="print the items as one JSON list")
    args = parser.parse_args()
    items = build_corpus(args.out_dir)
    if args.json:
        print(json.dumps([{**asdict(i), "path": str(i.path)} for i in items]))
        return
    for item in items:
        print(f"{item.expectation:5s}  {item.kind:8s}  {item.path}  ({item.reason})")


if __name__ == "__main__":
    main()
