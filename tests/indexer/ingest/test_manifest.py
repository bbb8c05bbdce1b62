"""Manifest CSVs: configurable columns, several labels, merged duplicate rows, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import ManifestError
from indexer.ingest.manifest import ManifestColumns, load_manifest, split_labels


def test_split_labels() -> None:
    assert split_labels("COVID-19, ARDS", ";|,") == ["COVID-19", "ARDS"]
    assert split_labels("a; b |a", ";|,") == ["a", "b"]
    assert split_labels("todo", ";|,", ("TODO",)) == []
    assert split_labels("", ";") == []


def test_custom_columns_and_lookup(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        "patientid,finding,clinical_notes,filename\n"
        '7,"COVID-19, ARDS",Bilateral opacities.,a/x.png\n'
        "8,No Finding,,y.jpg\n"
        "7,Pneumonia,Later note.,a/x.png\n"
    )
    m = load_manifest(
        csv,
        ManifestColumns(path="filename", patient="patientid", report="clinical_notes", diagnosis="finding"),
    )
    info = m.lookup("a/x.png")
    assert info is not None
    assert info.labels == ["COVID-19", "ARDS", "Pneumonia"]
    assert info.report == "Bilateral opacities."
    assert info.patient_id == "7"
    assert m.lookup("sub/y.jpg") is not None  # matched by unambiguous file name
    assert m.lookup("zzz.png") is None


def test_conventional_columns_are_picked_up(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("filename,case_id,patient_id,report,diagnosis\nf.dcm,C1,P1,Rep,d1|d2\n")
    info = load_manifest(csv, ManifestColumns()).lookup("f.dcm")
    assert info is not None and info.case_key == "C1" and info.labels == ["d1", "d2"] and info.report == "Rep"


def test_missing_column_error_names_the_flag_and_the_columns(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("file,label\nx.png,a\n")
    with pytest.raises(ManifestError, match=r"--path-column 'filename'.*columns are: file, label"):
        load_manifest(csv, ManifestColumns())


def test_ambiguous_names_match_only_by_path(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("filename,diagnosis\na/x.png,one\nb/x.png,two\n")
    m = load_manifest(csv, ManifestColumns())
    assert m.lookup("x.png") is None
    info = m.lookup("b/x.png")
    assert info is not None and info.labels == ["two"]
