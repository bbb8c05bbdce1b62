"""Manifest header columns (modality, body part, view) for non-DICOM archives, and what the manifest left unsaid."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from indexer.archive import Archive
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder


def test_manifest_modality_body_part_and_view_and_the_counts_it_reports(tmp_path: Path) -> None:
    root = tmp_path / "pngs"
    root.mkdir()
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)
        PILImage.fromarray(pixels).resize((64, 64)).save(root / f"{i}.png")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["filename", "patient_id", "finding", "mod", "region", "projection"])
        rows.writerow(["0.png", "P1", "covid", "cr", "chest", "pa"])
        rows.writerow(["1.png", "P2", "normal", "DX", "CHEST", "AP"])
        rows.writerow(["2.png", "P3", "normal", "DX", "CHEST", "AP"])
        rows.writerow(["2.png", "P4", "normal", "DX", "CHEST", "AP"])  # the same file, another patient
        # 3.png has no row
    (root / "notes.csv").write_text("a,b\n")  # not an image: never counted as a file without a row
    loaded = load_manifest(
        manifest,
        ManifestColumns(diagnosis="finding", modality="mod", body_part="region", view="projection"),
    )
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=ThumbnailEncoder())  # type: ignore[arg-type]
    try:
        report = ingest_path(archive, root, loaded, progress=False, workers=0)
        assert report.indexed == 4 and report.not_images == 1
        assert (report.manifest_unlisted, report.manifest_patient_conflicts) == (1, 1)
        assert archive.catalog.modalities() == ["CR", "DX"]
        assert archive.catalog.body_parts() == ["CHEST"]
        assert len(archive.catalog.filtered_image_ids(encoder=archive.encoder.name, modality="dx")) == 2
        views = {image.view_position for image in archive.catalog.images_by_ids([1, 2, 3, 4]).values()}
        assert views == {"PA", "AP", None}
    finally:
        archive.close()
