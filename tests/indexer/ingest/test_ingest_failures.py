"""No silent outcomes in bulk ingest: any per-file error is recorded; copies and unreadable folders say what they are."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

import indexer.ingest.local as local
from indexer.archive import Archive
from indexer.cli import app
from indexer.ingest.local import ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.ingest.ray_tasks import _COLUMNS, EmbedRows
from indexer.settings import IndexerSettings
from indexer.storage.sources import SourceItem
from tests.helpers import ThumbnailEncoder


def _png(path: Path, value: int, height: int = 32, width: int = 32) -> Path:
    pixels = np.full((height, width), value, dtype=np.uint8)
    pixels[2:6, 2:6] = 255 - value
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).save(path)
    return path


class _WideImageBreaksEncoder(ThumbnailEncoder):
    """Fails as a real model can on an odd input: not an EmbeddingsError (MemoryError, a torch error)."""

    def embed(self, images: Sequence[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        if any(image.shape[1] > 4 * image.shape[0] for image in images):
            raise MemoryError("cannot allocate 80 GB for the resize")
        return super().embed(images)


def _open(tmp_path: Path, encoder: ThumbnailEncoder | None = None, batch_size: int = 8) -> Archive:
    settings = IndexerSettings(data_dir=tmp_path / "data", batch_size=batch_size)
    return Archive.open(settings, encoder=encoder or ThumbnailEncoder())


def test_an_unexpected_embed_error_fails_that_file_and_its_batch_mates_land(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "in" / f"good{i}.png", 40 * (i + 1))
    _png(tmp_path / "in" / "wide.png", 90, height=2, width=400)
    archive = _open(tmp_path, _WideImageBreaksEncoder())
    report = ingest_path(archive, tmp_path / "in", progress=False, workers=0)
    assert (report.indexed, report.failed) == (3, 1)
    (failure,) = archive.catalog.failures()
    assert failure.source_uri.endswith("wide.png")
    assert "MemoryError" in failure.reason and "80 GB" in failure.reason
    assert len(archive.index) == 3
    archive.close()


def test_a_decoder_that_raises_fails_that_file_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        _png(tmp_path / "in" / f"img{i}.png", 50 * (i + 1))
    real = local.decode_for_ingest

    def crashing(data: bytes, max_pixels: int | None, frames: local.FramePolicy = "representative") -> object:
        if data == (tmp_path / "in" / "img1.png").read_bytes():
            raise SystemError("the decode worker died")  # what a broken process pool raises from result()
        return real(data, max_pixels, frames)

    monkeypatch.setattr(local, "decode_for_ingest", crashing)
    archive = _open(tmp_path)
    report = ingest_path(archive, tmp_path / "in", progress=False, workers=0)
    assert (report.indexed, report.failed) == (2, 1)
    (failure,) = archive.catalog.failures()
    assert failure.source_uri.endswith("img1.png") and "the decode worker died" in failure.reason
    archive.close()


def test_copies_of_a_failed_file_are_failures_that_name_the_original(tmp_path: Path) -> None:
    good = _png(tmp_path / "in" / "good.png", 80)
    broken = good.read_bytes()[:60]
    (tmp_path / "in" / "a_broken.png").write_bytes(broken)
    (tmp_path / "in" / "b_copy.png").write_bytes(broken)
    (tmp_path / "in" / "c_good_copy.png").write_bytes(good.read_bytes())
    archive = _open(tmp_path)
    report = ingest_path(archive, tmp_path / "in", progress=False, workers=0)
    assert (report.indexed, report.already_indexed, report.failed) == (1, 1, 2)
    by_name = {Path(f.source_uri).name: f for f in archive.catalog.failures()}
    assert set(by_name) == {"a_broken.png", "b_copy.png"}
    assert by_name["b_copy.png"].error_type == "CopyOfFailedFileError"
    assert "a_broken.png" in by_name["b_copy.png"].reason
    archive.close()


def test_an_unreadable_subfolder_is_a_recorded_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _png(tmp_path / "in" / "ok" / "a.png", 30)
    _png(tmp_path / "in" / "locked" / "b.png", 60)
    real_scandir = os.scandir

    def scandir(path: str = ".") -> Iterator[os.DirEntry[str]]:
        if str(path).endswith("locked"):  # as chmod 000 does for a user that is not root
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    archive = _open(tmp_path)
    report = ingest_path(archive, tmp_path / "in", progress=False, workers=0)
    assert (report.indexed, report.failed) == (1, 1)
    (failure,) = archive.catalog.failures()
    assert failure.source_uri.endswith("/in/locked")
    assert "cannot be listed" in failure.reason and "permission" in failure.reason
    archive.close()


def test_manifest_rows_that_match_no_file_are_counted(tmp_path: Path) -> None:
    _png(tmp_path / "in" / "a.png", 30)
    _png(tmp_path / "in" / "sub" / "b.png", 60)
    manifest = tmp_path / "m.csv"
    manifest.write_text("filename,case_id\na.png,c1\nsub/b.png,c2\nmissing.png,c3\nsub/typo.png,c4\n")
    archive = _open(tmp_path)
    loaded = load_manifest(manifest, ManifestColumns())
    report = ingest_path(archive, tmp_path / "in", loaded, progress=False, workers=0)
    assert report.indexed == 2 and report.manifest_unmatched == 2
    archive.close()


def test_files_are_read_as_they_are_pulled_and_chunks_close_at_a_byte_budget() -> None:
    read: list[int] = []

    def items() -> Iterator[SourceItem]:
        for i in range(7):
            assert read == list(range(i)), "the previous item must be read before the next is pulled"
            yield SourceItem(f"file:///{i}", str(i), reader=lambda i=i: read.append(i) or b"x" * 10)  # type: ignore[misc]

    chunks = list(local._read_chunks(items(), size=32, max_bytes=25))
    assert [len(c) for c in chunks] == [3, 3, 1]


def test_index_refuses_an_empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "here.png", 10)
    result = CliRunner().invoke(app, ["index", "", "--data-dir", str(tmp_path / "data"), "--no-progress"])
    assert result.exit_code != 0
    assert "PATH is empty" in result.output
    assert not (tmp_path / "data").exists()


def test_the_cli_reports_manifest_rows_that_matched_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_ingest(archive: Archive, root: Path, manifest: object, **_: object) -> local.IngestReport:
        return local.IngestReport(seen=1, indexed=1, manifest_unmatched=3)

    monkeypatch.setattr(local, "ingest_path", fake_ingest)
    monkeypatch.setattr("indexer.archive.create_encoder", lambda *a, **k: ThumbnailEncoder())
    manifest = tmp_path / "m.csv"
    manifest.write_text("filename\na.png\n")
    _png(tmp_path / "in" / "a.png", 10)
    args = ["index", str(tmp_path / "in"), "--manifest", str(manifest), "--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "3 manifest rows matched no file" in result.output


def test_the_ray_actor_falls_back_to_one_by_one_on_any_batch_error() -> None:
    encoder = _WideImageBreaksEncoder()
    actor = EmbedRows(lambda: encoder, encoder.name)
    from imaging import DecodedImage, ImageMetadata

    def frame(height: int, width: int) -> bytes:
        metadata = ImageMetadata(format="png", rows=height, columns=width)
        image = DecodedImage(np.full((height, width, 3), 0.5, np.float32), metadata)
        return pickle.dumps((image, b"thumb", "digest"))

    rows = {name: np.empty(2, dtype=bool if name == "last" else object) for name in _COLUMNS}
    rows["status"][:] = ["decoded", "decoded"]
    rows["payload"][:] = [frame(32, 32), frame(2, 400)]
    out = actor(rows)
    assert list(out["status"]) == ["embedded", "failed"]
    assert "MemoryError" in str(pickle.loads(out["payload"][1]))
