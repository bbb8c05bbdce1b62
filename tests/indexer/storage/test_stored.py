"""Source uris are made and parsed in one place; stored sources and their pixels are read back from anywhere."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from imaging import load_image
from indexer.errors import IndexerError
from indexer.storage.sources import iter_source
from indexer.storage.stored import (
    SourceUri,
    StoredSourceGoneError,
    UnreadableSourceUriError,
    load_stored_image,
    local_path,
    read_stored,
    read_stored_if_present,
    stored_exists,
)
from tests.helpers import dicom_testfile


def _ct() -> bytes:
    return dicom_testfile("CT_small.dcm").read_bytes()


def test_file_uri_round_trips_and_matches_path_as_uri(tmp_path: Path) -> None:
    path = tmp_path / "a folder" / "scan #1%20?.dcm"
    uri = SourceUri.of_file(path)
    assert str(uri) == path.as_uri()
    assert SourceUri.parse(str(uri)) == uri
    assert not uri.is_member and uri.path == path


def test_member_uri_round_trips_with_awkward_member_names(tmp_path: Path) -> None:
    archive = tmp_path / "odd!dir" / "up load.zip"
    for member in ("study/ct.dcm", "a b/%20#?.dcm", "x!/y.dcm", "../../escape.dcm"):
        uri = SourceUri.of_member(archive, member)
        assert str(uri) == f"{archive.as_uri()}!/{member}"
        parsed = SourceUri.parse(str(uri))
        assert parsed == uri and parsed.path == archive and parsed.member == member


def test_uris_from_the_sources_are_the_ones_parsed(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(_ct())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("study/ct.dcm", _ct())
    for root in (folder, tmp_path / "a.zip"):
        (item,) = iter_source(root)
        assert str(SourceUri.parse(item.uri)) == item.uri
        assert read_stored(item.uri) == item.read_bytes() == _ct()


def test_other_schemes_cannot_be_read_back() -> None:
    uri = "dicomweb://pacs/studies/1/series/2/instances/3"
    with pytest.raises(UnreadableSourceUriError, match="re-index"):
        SourceUri.parse(uri)
    with pytest.raises(IndexerError):
        read_stored(uri)
    assert not stored_exists(uri) and local_path(uri) is None and read_stored_if_present(uri) is None


def test_files_and_archive_members_are_read_and_their_loss_says_what_to_do(tmp_path: Path) -> None:
    plain = tmp_path / "ct.dcm"
    plain.write_bytes(_ct())
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("study/ct.dcm", _ct())
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("study/ct.dcm")
        info.size = len(_ct())
        archive.addfile(info, io.BytesIO(_ct()))
    member = str(SourceUri.of_member(tmp_path / "a.zip", "study/ct.dcm"))
    tar_member = str(SourceUri.of_member(tmp_path / "a.tar.gz", "study/ct.dcm"))
    for uri in (plain.as_uri(), member, tar_member):
        assert stored_exists(uri) and read_stored(uri) == _ct()
    assert local_path(plain.as_uri()) == plain and local_path(member) is None

    missing_member = str(SourceUri.of_member(tmp_path / "a.zip", "gone.dcm"))
    with pytest.raises(StoredSourceGoneError, match="no longer has the member"):
        read_stored(missing_member)
    with pytest.raises(StoredSourceGoneError, match="no longer has the member"):
        read_stored(str(SourceUri.of_member(tmp_path / "a.tar.gz", "gone.dcm")))
    plain.unlink()
    (tmp_path / "a.zip").unlink()
    for uri in (plain.as_uri(), member):
        assert not stored_exists(uri) and read_stored_if_present(uri) is None
        with pytest.raises(StoredSourceGoneError, match=r"put .* back") as caught:
            read_stored(uri)
        assert isinstance(caught.value, FileNotFoundError)  # old `except OSError` handlers still apply
    assert local_path(plain.as_uri()) is None


def test_stored_pixels_decode_as_at_ingest_even_for_bare_dicom(tmp_path: Path) -> None:
    ds = dcmread(dicom_testfile("MR_small.dcm"))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)  # no preamble, no File Meta: the ingest reads it, so must the re-read
    bare = tmp_path / "bare"
    bare.write_bytes(fp.getvalue())
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        archive.writestr("bare", fp.getvalue())
    reference = load_image(fp.getvalue())
    for uri in (bare.as_uri(), str(SourceUri.of_member(tmp_path / "b.zip", "bare"))):
        image = load_stored_image(uri, 0)
        assert np.array_equal(image.pixels, reference.pixels)


def test_a_stored_frame_is_the_frame_read_back() -> None:
    path = dicom_testfile("emri_small.dcm")  # 10 frames
    uri = str(SourceUri.of_file(path))
    for frame in (0, 7):
        assert np.array_equal(load_stored_image(uri, frame).pixels, load_image(path, frame=frame).pixels)
        assert load_stored_image(uri, frame).metadata.frame_index == frame


def test_every_member_uri_starts_with_the_archive_members_prefix(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "up load.zip", "w") as archive:
        archive.writestr("a/ct.dcm", _ct())
        archive.writestr("b.dcm", _ct())
    prefix = SourceUri.members_prefix((tmp_path / "up load.zip").resolve())
    uris = [item.uri for item in iter_source(tmp_path / "up load.zip")]
    assert uris and all(uri.startswith(prefix) for uri in uris)
    assert [uri.removeprefix(prefix) for uri in uris] == ["a/ct.dcm", "b.dcm"]
