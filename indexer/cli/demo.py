"""The embedded demo archive: labeled chest X-rays/CT with reports, plus real DICOM that packages ship."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging import DecodedImage, ImagingError, load_image, thumbnail_signature
from indexer.extras import MissingExtraError, require_extra
from indexer.ingest.manifest import ManifestColumns

log = logging.getLogger(__name__)

# The labeled part: a licence-documented subset of the COVID-19 image data collection (see its LICENSE.md),
# built by scripts/make_demo_subset.py; its manifest carries diagnoses, reports and patients.
LABELED = Path(__file__).with_name("demo_archive")
LABELED_FOLDER = "covid-chestxray"
# DICOM objects a radiologist reads; secondary captures (test patterns, a photograph), segmentations
# and dose grids are left out, and so are stubs smaller than MIN_SIDE pixels.
READ_MODALITIES = frozenset({"CR", "CT", "DX", "MG", "MR", "NM", "PT", "US", "XA"})
MIN_SIDE = 64
BUILD_RECORD = ".demo-build.json"
# Each labeled image is its own case, named by its file (the collection's own name, e.g.
# "pneumocystis-jirovecii-pneumonia-3-1.jpg"); its modality and view come from the collection's metadata.
DEMO_COLUMNS = ManifestColumns(
    path="filename",
    case="filename",
    patient="patient",
    report="report",
    diagnosis="finding",
    modality="modality",
    view="view",
)
BUILD_VERSION = 2

# Two images are the same picture when their 32x32 grey signatures differ by less than this
# (mean absolute difference in [0, 1] units): lossy and lossless copies of one image fall well under it.
NEAR_DUPLICATE_MAD = 0.01


@dataclass(frozen=True)
class DemoFile:
    """One candidate file of the demo archive and the folder it will sit in."""

    path: Path
    group: str
    relative: str


def _pydicom_candidates() -> list[DemoFile]:
    from pydicom.data import get_testdata_files

    out = []
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        parts = path.parts
        if "test_files" in parts:
            root = Path(*parts[: parts.index("test_files") + 1])
            group = "pydicom"
        else:
            root = path.parent
            group = "pydicom-data"
        out.append(DemoFile(path, group, path.relative_to(root).as_posix()))
    return out


def _skimage_candidates(workdir: Path) -> list[DemoFile]:
    from PIL import Image as PILImage

    try:
        skdata = require_extra("skimage.data", "demo")
    except MissingExtraError as exc:
        log.warning("scikit-image is not installed: the demo has no fundus or histology images (%s)", exc)
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, loader in (
        ("retina_fundus.png", skdata.retina),
        ("immunohistochemistry.png", skdata.immunohistochemistry),
    ):
        target = workdir / name
        if not target.exists():
            PILImage.fromarray(np.asarray(loader())).save(target)
        out.append(DemoFile(target, "skimage", name))
    return out


def _preference(meta_ts: str | None, name: str) -> tuple[int, str]:
    """Uncompressed first, so the kept copy of a duplicated picture is the one nearest to the source."""
    from pydicom.uid import UID

    compressed = bool(meta_ts) and UID(meta_ts or "").is_compressed
    return (1 if compressed else 0, name)


def demo_manifest(target: Path) -> Path:
    """The labeled part's manifest inside a built demo archive (filename, patient, finding, report, ...)."""
    return target / LABELED_FOLDER / "manifest.csv"


def _copy_labeled(target: Path) -> list[Path]:
    destination = target / LABELED_FOLDER
    written = []
    for source in sorted(LABELED.rglob("*")):
        if source.is_file():
            copy = destination / source.relative_to(LABELED)
            copy.parent.mkdir(parents=True, exist_ok=True)
            if not copy.exists():
                shutil.copyfile(source, copy)
            if source.suffix.lower() in (".jpg", ".jpeg", ".png"):
                written.append(copy)
    return written


def _recorded_build(target: Path) -> list[Path] | None:
    """The files of an earlier build of this demo version, when every one of them is still there."""
    try:
        record = json.loads((target / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != BUILD_VERSION:
        return None
    files = [target / str(name) for name in record.get("files", [])]
    return files if files and all(f.is_file() for f in files) else None


def build_demo_archive(target: Path) -> list[Path]:
    """Copy the labeled subset and the readable, pixel-distinct DICOM demo images into target.

    A second call finds the first build's record and decodes nothing. Returns the image files.
    """
    recorded = _recorded_build(target)
    if recorded is not None:
        log.info("demo archive: %d images already built in %s", len(recorded), target)
        return recorded
    labeled = _copy_labeled(target)
    written = _copy_dicom(target)
    files = labeled + written
    target.mkdir(parents=True, exist_ok=True)
    (target / BUILD_RECORD).write_text(
        json.dumps({"version": BUILD_VERSION, "files": [f.relative_to(target).as_posix() for f in files]})
    )
    return files


def _quiet_decode(path: Path) -> DecodedImage:
    """Decode one candidate with the decoders' own warnings and log lines silenced (failures are counted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            return load_image(path)
        finally:
            logging.disable(previous)


def _copy_dicom(target: Path) -> list[Path]:
    candidates = _pydicom_candidates() + _skimage_candidates(target.parent / "demo-source")
    decoded: list[tuple[tuple[int, str], DemoFile, npt.NDArray[np.float32], tuple[int, int], str | None]] = []
    rejected = left_out = 0
    for candidate in candidates:
        try:
            image = _quiet_decode(candidate.path)
        except (ImagingError, OSError):
            rejected += 1
            continue
        meta = image.metadata
        is_dicom = candidate.group != "skimage"
        if min(meta.rows or 0, meta.columns or 0) < MIN_SIDE or (
            is_dicom and (meta.modality or "") not in READ_MODALITIES
        ):
            left_out += 1
            continue
        decoded.append(
            (
                _preference(meta.transfer_syntax_uid, candidate.relative),
                candidate,
                thumbnail_signature(image.pixels),
                (meta.rows, meta.columns),
                meta.sop_instance_uid,
            )
        )
    decoded.sort(key=lambda entry: entry[0])
    kept: list[tuple[DemoFile, npt.NDArray[np.float32], tuple[int, int]]] = []
    kept_uids: set[str] = set()
    for _, candidate, signature, shape, uid in decoded:
        # pydicom's test files reuse some SOP Instance UIDs for different pictures; an archive must
        # not (the ingest records such a file as a conflict), so only the preferred one is kept
        duplicate = (uid is not None and uid in kept_uids) or any(
            shape == other_shape and float(np.mean(np.abs(signature - other))) < NEAR_DUPLICATE_MAD
            for _, other, other_shape in kept
        )
        if not duplicate:
            kept.append((candidate, signature, shape))
            if uid is not None:
                kept_uids.add(uid)
    written = []
    for candidate, _, _ in kept:
        destination = target / candidate.group / candidate.relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            shutil.copyfile(candidate.path, destination)
        written.append(destination)
    log.info(
        "demo archive: %d DICOM/picture candidates: %d not decodable here (expected: codec test files), "
        "%d left out (stubs < %d px, secondary captures, SEG, RTDOSE), %d duplicates dropped, %d kept in %s",
        len(candidates),
        rejected,
        left_out,
        MIN_SIDE,
        len(decoded) - len(kept),
        len(kept),
        target,
    )
    return written
