"""`medcbir finetune` without --data trains on the catalog's labeled cases, held out by patient."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embeddings import create_encoder
from indexer.archive import Archive
from indexer.cli import app
from indexer.evaluation.datasets import DatasetError, load_catalog_dataset
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.settings import IndexerSettings
from tests.helpers import ThumbnailEncoder
from tests.indexer.evaluation.conftest import SHARED_DATASETS

COVID = SHARED_DATASETS / "covid-chestxray"
# The subsample: X-rays of these findings, at most this many patients each (several images per patient).
FINDINGS = {"COVID-19": 7, "No Finding": 3, "Pneumocystis": 3, "Streptococcus": 3, "SARS": 3}
MULTI_LABEL = "COVID-19, ARDS"  # split on "," by the manifest: a two-label case, left out


def _subsample(target: Path) -> tuple[Path, list[dict[str, str]]]:
    """Copy a small patient-complete subsample of the real COVID chest X-ray set, with its manifest."""
    with (COVID / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["modality"] == "X-ray"]
    rows = [r for r in rows if (COVID / "images" / r["filename"]).is_file()]
    chosen: list[dict[str, str]] = []
    patients: dict[str, set[str]] = {finding: set() for finding in FINDINGS}
    extra = {MULTI_LABEL: 2, "todo": 2}
    for row in rows:
        finding, patient = row["finding"], row["patientid"]
        if finding in FINDINGS:
            if patient not in patients[finding] and len(patients[finding]) >= FINDINGS[finding]:
                continue
            if sum(1 for r in chosen if r["patientid"] == patient) >= 3:
                continue
            patients[finding].add(patient)
            chosen.append(row)
        elif extra.get(finding, 0) > 0:
            extra[finding] -= 1
            chosen.append(row)
    target.mkdir(parents=True)
    manifest = target / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "diagnosis"])
        for row in chosen:
            shutil.copyfile(COVID / "images" / row["filename"], target / row["filename"])
            writer.writerow([row["filename"], row["patientid"], row["finding"]])
    return manifest, chosen


@pytest.mark.skipif(not (COVID / "metadata.csv").is_file(), reason=f"{COVID} is absent (shared datasets)")
def test_finetune_from_the_catalog_holds_patients_out(tmp_path: Path) -> None:
    source = tmp_path / "xrays"
    manifest, rows = _subsample(source)
    data_dir = tmp_path / "data"
    archive = Archive.open(IndexerSettings(data_dir=data_dir), encoder=ThumbnailEncoder())
    columns = ManifestColumns(ignore_labels=("todo",))  # filename, patient_id, diagnosis
    report = ingest_path(archive, source, load_manifest(manifest, columns), progress=False, workers=0)
    assert report.failed == 0 and report.indexed >= 30, report
    archive.close()
    # an indexed image of a single-label case whose source file is gone: left out, counted
    (source / next(r["filename"] for r in rows if r["finding"] in FINDINGS)).unlink()

    dataset = load_catalog_dataset(IndexerSettings(data_dir=data_dir).resolved_database_url)
    info = dataset.provenance
    assert info["left_out_multi_label"] == 2 and info["left_out_unlabeled"] == 2
    assert info["left_out_source_missing"] == 1
    assert info["used_images"] == report.indexed - 5 == len(dataset)
    assert set(dataset.class_names) <= set(FINDINGS) and len(dataset.class_names) >= 4
    assert dataset.patients is not None and len(set(dataset.patients)) < len(dataset)  # grouped
    assert all(uri.startswith("image:") for uri in dataset.uris)  # no paths in cards
    assert dataset.image(0).shape[2] == 3

    card_path = tmp_path / "card.json"
    args = ["finetune", "--data-dir", str(data_dir), "--epochs", "1", "--image-size", "32"]
    args += ["--batch-size", "16", "--output-dir", str(tmp_path / "encoders"), "--json", str(card_path)]
    result = CliRunner().invoke(app, args)  # no --data: the catalog
    assert result.exit_code == 0, result.output
    assert "left out 2 of multi-label cases, 2 unlabeled, 1 whose source is gone" in result.output
    card = json.loads(card_path.read_text())
    assert card["dataset"] == "catalog" and card["data"].startswith("catalog of ")
    assert card["used_images"] == len(dataset) and card["left_out_source_missing"] == 1
    groups = card["split_groups"]
    assert groups["train"] > 0 and groups["test"] > 0 and groups["val"] > 0
    assert groups["shared_train_test"] == groups["shared_train_val"] == groups["shared_val_test"] == 0
    assert "patient-grouped" in card["split"]
    assert card["train_images"] + card["val_images"] + card["test_images"] == len(dataset)
    checkpoint = Path(card["checkpoint_path"])
    assert checkpoint.is_file() and checkpoint.with_suffix(".json").is_file()
    encoder = create_encoder("efficientnet_lite0", checkpoint=checkpoint, device="cpu")
    assert encoder.name == f"efficientnet_lite0@{checkpoint.stem}"


def test_finetune_from_an_unlabeled_catalog_says_what_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "empty"
    data_dir.mkdir()
    with pytest.raises(DatasetError, match="index labeled cases"):
        load_catalog_dataset(IndexerSettings(data_dir=data_dir).resolved_database_url)
    result = CliRunner().invoke(app, ["finetune", "--data-dir", str(data_dir), "--epochs", "1"])
    assert result.exit_code == 2 and "index labeled cases" in result.output
    both = CliRunner().invoke(app, ["finetune", "--data", str(tmp_path), "--from-catalog"])
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_catalog_images_inside_archives_are_re_read(tmp_path: Path, kind: str) -> None:
    import tarfile
    import zipfile

    from tests.indexer.evaluation.conftest import write_png

    folder = tmp_path / "pngs"
    rows = []
    for i in range(4):
        write_png(folder / f"img{i}.png", 40 + 50 * i, size=24, seed=i)
        rows.append([f"img{i}.png", f"P{i // 2}", "dark" if i < 2 else "light"])
    packed = tmp_path / f"upload.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(packed, "w") as archive:
            for path in sorted(folder.iterdir()):
                archive.write(path, path.name)
    else:
        with tarfile.open(packed, "w:gz") as archive:
            for path in sorted(folder.iterdir()):
                archive.add(path, path.name)
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["filename", "patient_id", "diagnosis"], *rows])
    settings = IndexerSettings(data_dir=tmp_path / "data")
    archive = Archive.open(settings, encoder=ThumbnailEncoder())
    report = ingest_path(
        archive, packed, load_manifest(manifest, ManifestColumns()), progress=False, workers=0
    )
    archive.close()
    assert report.indexed == 4
    shutil.rmtree(folder)  # only the archive holds the images now
    dataset = load_catalog_dataset(settings.resolved_database_url)
    assert len(dataset) == 4 and dataset.class_names == ["dark", "light"]
    assert dataset.patients is not None and len(set(dataset.patients)) == 2
    means = [float(dataset.image(i).mean()) for i in range(4)]
    assert means == sorted(means) and means[0] < 0.25 < 0.6 < means[3]  # the right member, decoded
