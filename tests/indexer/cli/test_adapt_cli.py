"""`medcbir adapt` on the catalog: real chest X-rays indexed with patients, adapted without labels, held out by patient."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.archive import Archive
from indexer.cli import app
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder
from tests.indexer.evaluation.conftest import SHARED_DATASETS

COVID = SHARED_DATASETS / "covid-chestxray"


def _xrays_of_patients(target: Path, patients: int = 8, per_patient: int = 2) -> Path:
    """Copy `per_patient` X-rays of each of the first `patients` patients that have that many, with a manifest."""
    with (COVID / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = [
            r
            for r in csv.DictReader(handle)
            if r["modality"] == "X-ray" and (COVID / "images" / r["filename"]).is_file()
        ]
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patientid"], []).append(row)
    chosen = [images[:per_patient] for images in by_patient.values() if len(images) >= per_patient][:patients]
    target.mkdir(parents=True)
    manifest = target / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id"])  # no diagnosis: nothing to learn from but the pixels
        for images in chosen:
            for row in images:
                shutil.copyfile(COVID / "images" / row["filename"], target / row["filename"])
                writer.writerow([row["filename"], row["patientid"]])
    return manifest


@pytest.mark.skipif(not (COVID / "metadata.csv").is_file(), reason=f"{COVID} is absent (shared datasets)")
def test_adapt_from_the_catalog_holds_patients_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCBIR_EMBEDDINGS_BACKEND", "torch")
    for name in ("MEDCBIR_DATABASE_URL", "DATABASE_URL", "MEDCBIR_ENCODER", "MEDCBIR_CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    source = tmp_path / "xrays"
    manifest = _xrays_of_patients(source)
    data_dir = tmp_path / "data"
    archive = Archive.open(IndexerSettings(data_dir=data_dir), encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, source, load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    archive.close()
    assert report.failed == 0 and report.indexed == 16, report
    (source / next(p for p in sorted(source.iterdir()) if p.suffix != ".csv")).unlink()  # a source gone

    card_path = tmp_path / "card.json"
    result = CliRunner().invoke(
        app,
        [
            "adapt", "--data-dir", str(data_dir), "--epochs", "1", "--image-size", "64", "--batch-size", "4",
            "--heldout-fraction", "0.3", "--json", str(card_path), "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads(card_path.read_text())
    assert card["dataset"] == "catalog" and card["labels_used"] is False
    assert card["catalog_images"] == 16 and card["left_out_source_missing"] == 1
    assert card["train_images"] + card["heldout_images"] == 15
    assert card["split"].startswith("patient-grouped")
    groups = card["split_groups"]
    assert groups["shared_train_heldout"] == 0 and groups["heldout"] >= 2 and groups["train"] >= 4
    checkpoint = Path(card["checkpoint_path"])
    assert (
        checkpoint.parent == data_dir / "encoders" and checkpoint.is_file()
    )  # beside the archive, like finetune
    assert "medcbir reindex --encoder efficientnet_lite0 --checkpoint" in result.output
    assert str(source) not in json.dumps(card)  # cards name images by catalog id, never by path

    both = CliRunner().invoke(
        app, ["adapt", "--data", str(source), "--from-catalog", "--data-dir", str(data_dir)]
    )
    assert both.exit_code == 2 and "not both" in both.output


def test_adapt_on_an_empty_catalog_says_to_index_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MEDCBIR_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=ThumbnailEncoder()).close()
    result = CliRunner().invoke(app, ["adapt", "--data-dir", str(tmp_path / "data"), "--no-progress"])
    assert result.exit_code == 2 and "index images first" in result.output
