"""`medcbir demo --no-serve`: a labeled demo with real reports, readable DICOM only, quiet, built once."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

from imaging import load_image, pixel_digest
from indexer.catalog import Catalog
from indexer.cli.demo import LABELED, MIN_SIDE, READ_MODALITIES
from indexer.settings import IndexerSettings
from tests.helpers import run_demo

IMAGE_SUFFIXES = {".dcm", ".png", ".jpg", ""}


def test_demo_indexes_labeled_cases_with_their_published_reports_once_and_quietly(
    built_demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    tmp_path, result = built_demo
    assert result.returncode == 0, result.stderr[-3000:]
    # expected decoder failures of the codec test files are one summary line, not tracebacks
    assert "Traceback" not in result.stderr
    assert "not decodable here (expected" in result.stderr
    archive = tmp_path / "demo-archive"
    files = sorted(
        p
        for p in archive.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != "."
    )
    names = {p.name for p in files}
    # the uncompressed original is kept; its lossless and lossy copies are dropped as the same picture
    assert {"RG1_UNCI.dcm", "MR2_UNCI.dcm"} <= names
    assert not names & {"RG1_J2KI.dcm", "RG1_J2KR.dcm", "MR2_J2KI.dcm", "US1_J2KI.dcm"}
    assert {"retina_fundus.png", "immunohistochemistry.png"} <= names
    decoded = [load_image(p) for p in files]
    digests = [pixel_digest(image.pixels) for image in decoded]
    assert len(set(digests)) == len(digests) >= 150
    for path, image in zip(files, decoded, strict=True):
        meta = image.metadata
        assert min(meta.rows or 0, meta.columns or 0) >= MIN_SIDE, path.name  # no 16x16 stubs
        if path.suffix == ".dcm":
            assert meta.modality in READ_MODALITIES, (path.name, meta.modality)  # no SEG, RTDOSE, OT

    with (LABELED / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    published = {row["report"] for row in rows}
    catalog = Catalog(IndexerSettings(data_dir=tmp_path).resolved_database_url)
    stats = catalog.stats()
    assert stats.images == len(files) and stats.failures == 0
    assert {"CR", "CT", "MR"} <= set(stats.images_by_modality)
    # every labeled demo image is a labeled case; its report is the text published with it
    assert stats.labeled_cases >= len(rows) - 5
    assert {"COVID-19", "Pneumocystis", "No Finding", "ARDS"} <= set(stats.labels)
    with catalog.session() as session:
        from sqlalchemy import select

        from indexer.catalog import Case

        reports = [r for r in session.scalars(select(Case.report)) if r]
    assert len(reports) >= len(rows) - 5 and set(reports) <= published  # nothing invented
    catalog.dispose()
    assert f"indexed {len(files)}," in result.stdout

    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already built" in again.stderr  # the second start decodes no candidate again
    assert f"indexed 0, already indexed {len(files)}, failed 0" in again.stdout
