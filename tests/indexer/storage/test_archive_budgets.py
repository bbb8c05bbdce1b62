"""Zip and tar members are streamed under per-member and per-archive inflation budgets named by their settings."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from indexer.archive import Archive
from indexer.ingest.local import ingest_path
from indexer.settings import IndexerSettings
from indexer.storage.sources import UnsafeSourceError, iter_source
from scripts.make_hostile_corpus import BOMB_MEMBER_BYTES, bomb_member, write_sparse_tar
from tests.helpers import ThumbnailEncoder

MEMBERS = 12  # 96 MiB at ~120x each: under the 200x member ratio, over the archive's 50x past 64 MiB


def _bomb(path: Path) -> Path:
    member = bomb_member(0)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for i in range(MEMBERS):
                archive.writestr(f"m/{i:02d}.dcm", member)
    else:
        with tarfile.open(path, "w:gz", compresslevel=1) as archive:
            for i in range(MEMBERS):
                info = tarfile.TarInfo(f"m/{i:02d}.dcm")
                info.size = len(member)
                archive.addfile(info, io.BytesIO(member))
    return path


def _read_all(path: Path) -> tuple[int, list[str]]:
    read, refused = 0, []
    for item in iter_source(path):
        try:
            item.read_bytes()
            read += 1
        except UnsafeSourceError as exc:
            refused.append(str(exc))
    return read, refused


@pytest.mark.parametrize("name", ["bomb.zip", "bomb.tar.gz"])
def test_a_bomb_under_the_member_ratio_is_stopped_by_the_archive_budget(tmp_path: Path, name: str) -> None:
    read, refused = _read_all(_bomb(tmp_path / name))
    assert read * BOMB_MEMBER_BYTES <= 72 * 1024**2  # stopped just past the 64 MiB floor, not 96 MiB read
    assert len(refused) == 1 and "MEDCBIR_ARCHIVE_MAX_RATIO" in refused[0] and "not read" in refused[0]


def test_a_sparse_plain_tar_member_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    write_sparse_tar(tmp_path / "sparse.tar", members=2, size=512 * 1024**2)
    read, refused = _read_all(tmp_path / "sparse.tar")
    assert read == 0 and refused and "MEDCBIR_ARCHIVE_MAX" in refused[0]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_the_member_budget_applies_to_zip_and_tar_alike(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDCBIR_ARCHIVE_MAX_MEMBER_MIB", "1")
    data = np.random.default_rng(0).bytes(3 * 1024**2)  # incompressible: no ratio trips, only the size
    path = tmp_path / f"big.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("big.dcm", data)
            archive.writestr("small.dcm", b"x" * 100)
    else:
        with tarfile.open(path, "w") as archive:
            for member, payload in (("big.dcm", data), ("small.dcm", b"x" * 100)):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    read, refused = _read_all(path)
    assert read == 1 and len(refused) == 1 and "MEDCBIR_ARCHIVE_MAX_MEMBER_MIB" in refused[0]


def test_zip_members_are_inflated_only_when_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bomb(tmp_path / "bomb.zip")
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def counting_open(self: zipfile.ZipFile, name: object, *args: object, **kwargs: object) -> object:
        opened.append(str(name))
        return real_open(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", counting_open)
    items = iter_source(path)
    first, second = next(items), next(items)
    assert opened == []
    first.read_bytes()
    assert len(opened) == 1 and second.size == BOMB_MEMBER_BYTES


def test_ingesting_a_bomb_records_one_failure_naming_the_setting(tmp_path: Path) -> None:
    archive = Archive.open(IndexerSettings(data_dir=tmp_path / "data"), encoder=ThumbnailEncoder())
    report = ingest_path(archive, _bomb(tmp_path / "bomb.tar.gz"), progress=False, workers=0)
    assert report.indexed == 0 and report.seen < MEMBERS  # the rest of the archive was never read
    (bomb,) = [f for f in archive.catalog.failures() if f.error_type == "UnsafeSourceError"]
    assert "MEDCBIR_ARCHIVE_MAX_RATIO" in bomb.reason
    archive.close()
