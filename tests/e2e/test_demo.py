"""`medcbir demo --no-serve`: the embedded demo archive is real, pixel-distinct, and invents nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imaging import load_image, pixel_digest
from indexer.catalog import Catalog
from indexer.settings import IndexerSettings


def test_demo_builds_and_indexes_a_deduplicated_archive(tmp_path: Path) -> None:
    env = dict(os.environ, MEDCBIR_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "demo", "--no-serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    archive = tmp_path / "demo-archive"
    files = sorted(p for p in archive.rglob("*") if p.is_file())
    names = {p.name for p in files}
    # the uncompressed original is kept; its lossless and lossy copies are dropped as the same picture
    assert {"RG1_UNCI.dcm", "MR2_UNCI.dcm", "US1_UNCI.dcm"} <= names
    assert not names & {"RG1_J2KI.dcm", "RG1_J2KR.dcm", "MR2_J2KI.dcm", "US1_J2KI.dcm"}
    assert {"retina_fundus.png", "immunohistochemistry.png"} <= names
    digests = [pixel_digest(load_image(p).pixels) for p in files]
    assert len(set(digests)) == len(digests) >= 50

    catalog = Catalog(IndexerSettings(data_dir=tmp_path).resolved_database_url)
    stats = catalog.stats()
    assert stats.images == len(files) and stats.failures == 0
    assert {"CR", "CT", "MR", "US"} <= set(stats.images_by_modality)
    # nothing invented: no reports and no diagnoses, since the files carry none
    assert stats.labeled_cases == 0 and stats.labels == {}
    assert f"indexed {len(files)}," in result.stdout
    catalog.dispose()
