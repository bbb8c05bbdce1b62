"""The embedded demo archive: real images that installed packages ship, de-duplicated by pixels."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imaging import ImagingError, load_image, thumbnail_signature
from indexer.extras import MissingExtraError, require_extra

log = logging.getLogger(__name__)

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


def build_demo_archive(target: Path) -> list[Path]:
    """Copy the decodable, pixel-distinct demo images into target; returns the files written."""
    candidates = _pydicom_candidates() + _skimage_candidates(target.parent / "demo-source")
    decoded: list[tuple[tuple[int, str], DemoFile, npt.NDArray[np.float32], tuple[int, int], str | None]] = []
    rejected = 0
    for candidate in candidates:
        try:
            image = load_image(candidate.path)
        except (ImagingError, OSError):
            rejected += 1
            continue
        meta = image.metadata
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
        "demo archive: %d candidates, %d not decodable here, %d duplicates (pixels or SOP UID) dropped, %d kept in %s",
        len(candidates),
        rejected,
        len(decoded) - len(kept),
        len(kept),
        target,
    )
    return written
