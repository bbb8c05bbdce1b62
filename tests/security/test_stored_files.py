"""What the server stores is owner-only under any umask, and a failed upload request leaves no file behind."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from indexer.archive import Archive
from indexer.governance.accounts import create_user
from search_api.app import create_app
from search_api.routes import admin
from search_api.settings import ApiSettings
from tests.security.conftest import PASSWORD, build_secured_archive


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _client(archive: Archive) -> tuple[TestClient, dict[str, str]]:
    create_user(archive.catalog, "files-admin", PASSWORD, "admin")
    client = TestClient(
        create_app(archive=archive, api_settings=ApiSettings()), raise_server_exceptions=False
    )
    client.__enter__()
    token = client.post("/token", data={"username": "files-admin", "password": PASSWORD}).json()[
        "access_token"
    ]
    return client, {"Authorization": f"Bearer {token}"}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_everything_stored_is_owner_only_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # made earlier, under the usual umask: opened, it is tightened
    (data / "catalog.sqlite3").touch(mode=0o644)
    archive, _ = build_secured_archive(tmp_path)
    try:
        client, headers = _client(archive)
        with client:
            added = client.post(
                "/cases", files={"files": ("a.png", _png(1))}, data={"report": "r"}, headers=headers
            )
            assert added.status_code == 201, added.text
            ingest = client.post(
                "/admin/ingest", files={"archive": ("a.zip", _zip(b_png=_png(2)))}, headers=headers
            )
            assert ingest.status_code == 201, ingest.text
        archive.save_index()
        loose = {
            str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in [data, *data.rglob("*")]
            if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
        }
        assert loose == {}
        names = {p.relative_to(data).parts[0] for p in _files(data)}
        # what the check covered: the catalog (and SQLite's WAL), keys, thumbnails, uploads, the index
        assert {
            "catalog.sqlite3",
            "catalog.sqlite3-wal",
            "jwt.key",
            "thumbnails",
            "uploads",
            "index",
        } <= names
        assert "uploaded_archives" in names
    finally:
        archive.close()


def test_a_case_upload_that_fails_midway_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = build_secured_archive(tmp_path)
    try:
        client, headers = _client(archive)

        def broken_embed(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("the encoder crashed")  # after the uploads were written, before any row

        monkeypatch.setattr(archive.encoder, "embed", broken_embed)
        uploads = archive.settings.data_dir / "uploads"
        before = _files(uploads) if uploads.exists() else []
        with client:
            files = [("files", ("a.png", _png(3))), ("files", ("b.png", _png(4)))]
            answer = client.post("/cases", files=files, data={"report": "r"}, headers=headers)
        assert answer.status_code >= 400 and isinstance(answer.json()["detail"], str)
        assert (_files(uploads) if uploads.exists() else []) == before
    finally:
        archive.close()


def test_an_archive_upload_that_fails_leaves_no_file_unless_stored_images_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = build_secured_archive(tmp_path)
    kept_dir = archive.settings.data_dir / "uploaded_archives"
    real_ingest = admin.ingest_upload
    try:
        client, headers = _client(archive)
        with client:

            def fails_before_any_row(*_args: Any, **_kwargs: Any) -> Any:
                raise RuntimeError("the ingest crashed")

            monkeypatch.setattr(admin, "ingest_upload", fails_before_any_row)
            answer = client.post(
                "/admin/ingest", files={"archive": ("a.zip", _zip(a_png=_png(5)))}, headers=headers
            )
            assert answer.status_code == 500 and "internal error" in answer.json()["detail"]
            assert _files(kept_dir) == []

            def fails_after_storing_rows(*args: Any, **kwargs: Any) -> Any:
                real_ingest(*args, **kwargs)
                raise RuntimeError("the ingest crashed after committing rows")

            monkeypatch.setattr(admin, "ingest_upload", fails_after_storing_rows)
            answer = client.post(
                "/admin/ingest", files={"archive": ("b.zip", _zip(b_png=_png(6)))}, headers=headers
            )
            assert answer.status_code == 500
            assert len(_files(kept_dir)) == 1  # its stored image reads from it: kept
    finally:
        archive.close()


def test_a_failed_request_keeps_an_upload_that_an_identical_request_still_reads(tmp_path: Path) -> None:
    from indexer.ingest.uploads import keep_upload_for_ingest, release_upload

    archive, _ = build_secured_archive(tmp_path)
    try:
        data = _zip(c_png=_png(7))
        (tmp_path / "first").write_bytes(data)
        (tmp_path / "second").write_bytes(data)
        kept = keep_upload_for_ingest(archive, tmp_path / "first")
        assert keep_upload_for_ingest(archive, tmp_path / "second") == kept  # one kept file, two readers
        assert (
            release_upload(archive, kept, failed=True) is False and kept.exists()
        )  # the other still reads it
        assert release_upload(archive, kept, failed=True) is True and not kept.exists()
    finally:
        archive.close()
