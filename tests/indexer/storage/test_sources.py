"""Archive sources: zip and tar streamed without unpacking; unsafe members refused and recorded."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from indexer.archive import Archive
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from indexer.storage.sources import UnsafeSourceError, iter_source, safe_member_name
from tests.helpers import ThumbnailEncoder, dicom_testfile


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("a/b.dcm", "a/b.dcm"),
        ("./a//b.dcm", "a/b.dcm"),
        ("/etc/passwd", None),
        ("../../x.dcm", None),
        ("a/../../x.dcm", None),
        ("C:/windows/x.dcm", None),
        ("a\\..\\..\\x.dcm", None),
    ],
)
def test_safe_member_name(name: str, safe: str | None) -> None:
    assert safe_member_name(name) == safe


def _zip(path: Path) -> Path:
    ct = dicom_testfile("CT_small.dcm").read_bytes()
    mr = dicom_testfile("MR_small.dcm").read_bytes()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("study/ct.dcm", ct)
        archive.writestr("study/mr", mr)
        archive.writestr("../../escape.dcm", ct)
        archive.writestr("/abs.dcm", ct)
        archive.writestr("bomb.dcm", b"\x00" * 5_000_000)  # inflates ~5000x
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = 0o120777 << 16  # a symlink entry
        archive.writestr(link, "/etc/passwd")
    return path


def test_zip_members_are_streamed_and_unsafe_ones_refused(tmp_path: Path) -> None:
    items = {item.relative: item for item in iter_source(_zip(tmp_path / "a.zip"))}
    assert items["study/ct.dcm"].read_bytes() == dicom_testfile("CT_small.dcm").read_bytes()
    assert items["study/ct.dcm"].uri.endswith("a.zip!/study/ct.dcm")
    for bad, reason in [("../../escape.dcm", "unsafe path"), ("/abs.dcm", "unsafe path"),
                        ("bomb.dcm", "zip bomb"), ("link.dcm", "link")]:  # fmt: skip
        with pytest.raises(UnsafeSourceError, match=reason):
            items[bad].read_bytes()
    assert not (tmp_path.parent / "escape.dcm").exists()


def _tar(path: Path, mode: str) -> Path:
    ct = dicom_testfile("CT_small.dcm").read_bytes()
    with tarfile.open(path, mode) as archive:
        for name in ("ok/ct.dcm", "../up.dcm", "/abs.dcm"):
            info = tarfile.TarInfo(name)
            info.size = len(ct)
            archive.addfile(info, io.BytesIO(ct))
        link = tarfile.TarInfo("ok/link.dcm")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        archive.addfile(link)
        dev = tarfile.TarInfo("ok/dev")
        dev.type = tarfile.CHRTYPE
        archive.addfile(dev)
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_members_are_streamed_and_unsafe_ones_refused(tmp_path: Path, mode: str) -> None:
    items = list(iter_source(_tar(tmp_path / "a.tar", mode)))
    by_name = {i.relative: i for i in items}
    assert by_name["ok/ct.dcm"].read_bytes() == dicom_testfile("CT_small.dcm").read_bytes()
    for bad, reason in [("../up.dcm", "unsafe path"), ("/abs.dcm", "unsafe path"),
                        ("ok/link.dcm", "link"), ("ok/dev", "link or special")]:  # fmt: skip
        with pytest.raises(UnsafeSourceError, match=reason):
            by_name[bad].read_bytes()


def test_member_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        archive.writestr("big.png", b"x" * 5000)
    (item,) = iter_source(tmp_path / "b.zip", max_member_bytes=1000)
    with pytest.raises(UnsafeSourceError, match="over the limit"):
        item.read_bytes()


def test_ingesting_a_hostile_zip_records_each_refusal_and_indexes_the_rest(tmp_path: Path) -> None:
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(archive, _zip(tmp_path / "a.zip"), progress=False, workers=1)
    assert report.indexed == 2 and report.failed == 4
    failures = {f.source_uri.split("!/")[1]: f for f in archive.catalog.failures()}
    assert set(failures) == {"../../escape.dcm", "/abs.dcm", "bomb.dcm", "link.dcm"}
    assert {f.error_type for f in failures.values()} == {"UnsafeSourceError"}
    again = ingest_path(archive, tmp_path / "a.zip", progress=False, workers=0)
    assert again.indexed == 0 and again.already_indexed == 2
    archive.close()
