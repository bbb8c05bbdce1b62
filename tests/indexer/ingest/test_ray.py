"""The Ray engine on a local Ray: the same catalog, failures, vectors and index as the local engine."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embeddings import create_encoder
from indexer.archive import Archive
from indexer.catalog import Image
from indexer.ingest.local import IngestReport, ingest_path
from indexer.ingest.manifest import ManifestColumns, load_manifest
from indexer.ingest.ray import RayIngestor, RayNotInstalledError, RayOptions, import_ray, ingest_path_ray
from indexer.settings import IndexerSettings
from tests.conftest import ARCHIVE_ROWS
from tests.helpers import ThumbnailEncoder, dicom_testfile, free_port

# Ray Data's own context copies deprecated fields; that is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

BATCH = 4
# bad files beside the small archive: (name, expected failure type or None when not an image)
BAD_FILES = {
    "bad/junk.dcm": "UnsupportedFormatError",
    "bad/truncated.dcm": "CorruptImageError",
    "bad/empty.png": "UnsupportedFormatError",
}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """One local Ray for the module (2 CPUs), shut down after."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=400 * 1024**2,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_folder(small_archive: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small real archive with its manifest, plus bad files, a same-bytes copy and a text file."""
    folder = tmp_path_factory.mktemp("mixed")
    shutil.copytree(small_archive[0], folder, dirs_exist_ok=True)
    (folder / "bad").mkdir()
    (folder / "bad" / "junk.dcm").write_bytes(b"this is not an image at all" * 10)
    (folder / "bad" / "truncated.dcm").write_bytes(dicom_testfile("CT_small.dcm").read_bytes()[:2000])
    (folder / "bad" / "empty.png").write_bytes(b"")
    (folder / "bad" / "notes.txt").write_text("not an image, not expected to be one")
    # same bytes, later in walk order: a duplicate of the first copy
    shutil.copyfile(folder / "dicom" / "CT_small.dcm", folder / "dicom" / "CT_small_copy.dcm")
    return folder


def _settings(data_dir: Path) -> IndexerSettings:
    return IndexerSettings(data_dir=data_dir, batch_size=BATCH)


def _rows(archive: Archive) -> dict[str, Image]:
    rows = archive.catalog.images_by_ids([int(i) for i in archive.index.ids()])
    return {Path(r.source_uri).name: r for r in rows.values()}


def _counts(report: IngestReport) -> tuple[int, int, int, int, int]:
    return report.seen, report.indexed, report.already_indexed, report.failed, report.not_images


def _assert_index_equals_catalog(archive: Archive) -> None:
    with archive.catalog.session() as session:
        catalog_ids = sorted(session.scalars(Image.__table__.select().with_only_columns(Image.id)))
    assert sorted(int(i) for i in archive.index.ids()) == catalog_ids
    assert len(archive.index) == len(catalog_ids)


@pytest.fixture(scope="module")
def local_run(mixed_folder: Path, real_encoder, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The local engine's archive and report on the mixed folder (the reference)."""
    archive = Archive.open(_settings(tmp_path_factory.mktemp("local")), encoder=real_encoder)
    manifest = load_manifest(mixed_folder / "manifest.csv", ManifestColumns())
    report = ingest_path(archive, mixed_folder, manifest, progress=False, workers=1)
    yield archive, report
    archive.close()


def test_ray_engine_matches_the_local_engine_and_reruns_are_noops(
    ray_local: Any,
    mixed_folder: Path,
    local_run,
    real_encoder,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    local, local_report = local_run
    archive = Archive.open(_settings(tmp_path / "ray"), encoder=real_encoder)
    manifest = load_manifest(mixed_folder / "manifest.csv", ManifestColumns())
    factory = partial(create_encoder, "efficientnet_lite0", device="cpu", batch_size=BATCH)
    options = RayOptions(actors=1, batch_size=BATCH, decode_batch=3)
    report = ingest_path_ray(
        archive, mixed_folder, manifest, options=options, progress=False, factory=factory
    )

    n_images = len(ARCHIVE_ROWS)
    assert _counts(report) == _counts(local_report)
    assert (report.indexed, report.already_indexed, report.failed, report.not_images) == (
        n_images,
        1,  # the same-bytes copy
        len(BAD_FILES),
        2,  # manifest.csv and notes.txt
    )
    assert report.seen == n_images + len(BAD_FILES) + 3

    # the same failures, with the same reasons
    def failures(a: Archive) -> dict[str, tuple[str, str]]:
        return {Path(f.source_uri).name: (f.error_type, f.reason) for f in a.catalog.failures()}

    assert failures(archive) == failures(local)
    assert {name: t for name, (t, _) in failures(archive).items()} == {
        Path(k).name: v for k, v in BAD_FILES.items()
    }

    # the same images, cases, reports and labels; vectors match the local engine's
    ray_rows, local_rows = _rows(archive), _rows(local)
    assert set(ray_rows) == set(local_rows) == {Path(r[0]).name for r in ARCHIVE_ROWS}
    assert Path(ray_rows["CT_small.dcm"].source_uri).parent.name == "dicom"  # the first copy wins
    for name, row in ray_rows.items():
        ref = local_rows[name]
        assert (row.sha256, row.pixel_digest, row.modality, row.format, row.thumbnail_path) == (
            ref.sha256,
            ref.pixel_digest,
            ref.modality,
            ref.format,
            ref.thumbnail_path,
        )
        # (patient references are pseudonyms keyed per data folder, so they are not compared)
        assert row.case.case_key == ref.case.case_key and row.case.report == ref.case.report
        assert row.case.labels == ref.case.labels
        cosine = float(np.dot(row.vector(), ref.vector()))
        assert cosine >= 0.999, (name, cosine)
        assert (archive.settings.thumbnail_dir / row.thumbnail_path).is_file()

    # the FAISS index is the catalog, and search finds each image first
    _assert_index_equals_catalog(archive)
    for row in ray_rows.values():
        hit = archive.index.search(row.vector()[None, :], k=3)[0]
        assert int(hit.ids[0]) == row.id

    # a re-run decodes nothing new and writes nothing
    again = ingest_path_ray(archive, mixed_folder, manifest, options=options, progress=False, factory=factory)
    assert again.indexed == 0
    assert again.already_indexed == n_images + 1
    assert archive.catalog.stats().images == n_images
    _assert_index_equals_catalog(archive)
    archive.close()


def test_cli_engine_ray_indexes_a_zip_into_the_same_catalog(
    ray_local: Any,
    mixed_folder: Path,
    local_run,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from typer.testing import CliRunner

    from indexer.cli import app

    local, _ = local_run
    packed = tmp_path / "archive.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        for path in sorted(mixed_folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(mixed_folder).as_posix())
    data_dir = tmp_path / "data"
    args = ["index", str(packed), "--engine", "ray", "--actors", "1", "--batch-size", str(BATCH)]
    args += ["--data-dir", str(data_dir), "--manifest", str(mixed_folder / "manifest.csv"), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        f"indexed {len(ARCHIVE_ROWS)}, already indexed 1, failed {len(BAD_FILES)}, not images 2"
        in result.output
    )

    archive = Archive.open(_settings(data_dir))
    try:
        rows = _rows(archive)
        assert {n: r.sha256 for n, r in rows.items()} == {n: r.sha256 for n, r in _rows(local).items()}
        assert {n: r.case.case_key for n, r in rows.items()} == {Path(r[0]).name: r[1] for r in ARCHIVE_ROWS}
        assert all(r.source_uri.startswith(packed.resolve().as_uri() + "!/") for r in rows.values())
        _assert_index_equals_catalog(archive)
    finally:
        archive.close()

    rerun = CliRunner().invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert "indexed 0, already indexed 8" in rerun.output

    for bad, message in (
        (["--engine", "spark"], "--engine must be 'local' or 'ray'"),
        (["--actors", "2"], "--address and --actors need --engine ray"),
        (["--engine", "ray", "--workers", "2"], "--workers is for --engine local"),
    ):
        refused = CliRunner().invoke(app, ["index", str(packed), "--data-dir", str(tmp_path / "x"), *bad])
        assert refused.exit_code == 2 and message in refused.output, refused.output


def test_every_frame_policy_matches_the_local_engine(ray_local: Any, tmp_path: Path) -> None:
    # 10 frames span several batches of 4; a same-bytes copy and a big-endian re-encoding (same SOP
    # Instance UID, same pixels) are duplicates; the encoder is not under test: the fake one is used
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(dicom_testfile("emri_small.dcm"), folder / "a_emri.dcm")
    shutil.copyfile(dicom_testfile("emri_small.dcm"), folder / "b_emri_copy.dcm")
    shutil.copyfile(dicom_testfile("emri_small_big_endian.dcm"), folder / "c_emri_big_endian.dcm")
    results = {}
    for engine in ("local", "ray"):
        archive = Archive.open(_settings(tmp_path / engine), encoder=ThumbnailEncoder())
        if engine == "local":
            report = ingest_path(archive, folder, progress=False, workers=1, frames="all")
        else:
            options = RayOptions(actors=1, batch_size=BATCH, decode_batch=1)
            report = ingest_path_ray(
                archive, folder, options=options, progress=False, frames="all", factory=ThumbnailEncoder
            )
        rows = archive.catalog.images_by_ids([int(i) for i in archive.index.ids()]).values()
        frames = sorted(
            (Path(r.source_uri).name, r.frame_index, r.pixel_digest, r.vector().tobytes()) for r in rows
        )
        results[engine] = (_counts(report), frames)
        _assert_index_equals_catalog(archive)
        if engine == "ray":
            again = ingest_path_ray(
                archive, folder, options=options, progress=False, frames="all", factory=ThumbnailEncoder
            )
            assert (again.indexed, again.already_indexed) == (0, 1 + 1 + 10)
        archive.close()
    assert results["ray"] == results["local"]
    counts, frames = results["ray"]
    assert counts == (3, 10, 1 + 10, 0, 0)  # the copy as one file; the re-encoding frame by frame
    assert [(name, index) for name, index, _, _ in frames] == [("a_emri.dcm", i) for i in range(10)]


def test_a_zip_read_in_several_windows_matches_the_local_engine(
    ray_local: Any, mixed_folder: Path, tmp_path: Path
) -> None:
    packed = tmp_path / "archive.zip"
    members = sorted(p for p in mixed_folder.rglob("*") if p.is_file())
    with zipfile.ZipFile(packed, "w") as zf:
        for path in members:
            zf.write(path, path.relative_to(mixed_folder).as_posix())
    # 2 MB windows: [.. MR2_UNCI 2.1 MB], [MR_small, RG1_UNCI 7.2 MB], [the rest]: three datasets
    window = 2_000_000
    manifest = load_manifest(mixed_folder / "manifest.csv", ManifestColumns())
    local = Archive.open(_settings(tmp_path / "local"), encoder=ThumbnailEncoder())
    local_report = ingest_path(local, packed, manifest, progress=False, workers=1)
    archive = Archive.open(_settings(tmp_path / "ray"), encoder=ThumbnailEncoder())
    options = RayOptions(actors=1, batch_size=BATCH, window_bytes=window)
    report = ingest_path_ray(
        archive, packed, manifest, options=options, progress=False, factory=ThumbnailEncoder
    )
    assert _counts(report) == _counts(local_report)
    assert report.indexed == len(ARCHIVE_ROWS) and report.already_indexed == 1
    assert {r.source_uri: r.sha256 for r in _rows(archive).values()} == {
        r.source_uri: r.sha256 for r in _rows(local).values()
    }
    _assert_index_equals_catalog(archive)
    again = ingest_path_ray(
        archive, packed, manifest, options=options, progress=False, factory=ThumbnailEncoder
    )
    assert (again.indexed, again.already_indexed) == (0, len(ARCHIVE_ROWS) + 1)
    local.close()
    archive.close()


def _stop(head: subprocess.Popen[bytes]) -> None:
    """Stop a `ray start --block` head: it shuts its processes down on the second signal."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        head.send_signal(sig)
        try:
            head.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue
    os.killpg(head.pid, signal.SIGKILL)  # its own session, started below
    head.wait(timeout=30)


def test_cli_joins_a_running_ray_cluster_with_address(
    mixed_folder: Path, real_encoder, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`ray start --head` in its own processes, then `medcbir index --engine ray --address` as another driver."""
    ray = pytest.importorskip("ray")
    names = ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
    ports = {name: free_port() for name in (*names, "metrics-export-port")}
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus=2"]
        + ["--include-dashboard=false", "--disable-usage-stats", f"--object-store-memory={300 * 1024**2}"]
        + [f"--{name}={port}" for name, port in ports.items()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        data_dir = tmp_path / "data"
        address = f"{ray.util.get_node_ip_address()}:{ports['port']}"
        command = [str(Path(sys.executable).with_name("medcbir")), "index", str(mixed_folder)]
        command += ["--engine", "ray", "--address", address, "--actors", "1", "--batch-size", str(BATCH)]
        command += ["--data-dir", str(data_dir), "--no-progress"]
        env = {**os.environ, "RAY_AUTH_MODE": "token"}  # `ray start` turns token authentication on
        deadline = time.monotonic() + 90
        while True:  # the head takes a few seconds to accept drivers
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"indexed {len(ARCHIVE_ROWS)}, already indexed 1, failed {len(BAD_FILES)}" in result.stdout
        archive = Archive.open(_settings(data_dir), encoder=real_encoder)
        assert archive.catalog.stats().images == len(ARCHIVE_ROWS)
        _assert_index_equals_catalog(archive)
        archive.close()
    finally:
        _stop(head)


def test_ray_client_addresses_are_refused_with_the_way_to_run(mixed_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from indexer.cli import app

    args = ["index", str(mixed_folder), "--engine", "ray", "--address", "ray://127.0.0.1:10001"]
    result = CliRunner().invoke(app, [*args, "--data-dir", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "--address auto` on the head node" in result.output, result.output


def test_decode_runs_in_tasks_apart_from_the_embedding_actors(ray_local: Any, tmp_path: Path) -> None:
    # the encoder is not under test here: the small fake one keeps this fast
    archive = Archive.open(_settings(tmp_path / "data"), encoder=ThumbnailEncoder())
    ingestor = RayIngestor(archive, options=RayOptions(actors=1), factory=ThumbnailEncoder)
    path = dicom_testfile("CT_small.dcm")
    rows = [{"uri": path.as_uri(), "relative": path.name, "path": str(path), "data": b""}]
    dataset = ingestor._dataset(ray_local, rows, frozenset())
    assert [r["status"] for r in dataset.take_all()] == ["embedded"]
    stats = dataset.stats()
    assert "MapBatches(decode_rows)" in stats and "MapBatches(EmbedRows)" in stats
    assert "decode_rows)->MapBatches(EmbedRows" not in stats  # not fused into the actors
    archive.close()


def test_engine_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the extra is not installed
    with pytest.raises(RayNotInstalledError, match=r"pip install -e '\.\[ray\]'"):
        import_ray()
