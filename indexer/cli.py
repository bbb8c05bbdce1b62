"""The `medcbir` command line: index, stats, failures, verify, rebuild-index, serve, ui, demo."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer

from indexer.errors import IndexerError
from indexer.settings import IndexerSettings

app = typer.Typer(
    name="medcbir",
    help="Content-based medical image retrieval: index an archive, then search it by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="MEDCBIR_DATA_DIR",
        help="Folder holding the catalog, index and thumbnails [default: ~/.medcbir]",
        show_default=False,
    ),
]
Encoder = Annotated[
    str | None,
    typer.Option(
        "--encoder", envvar="MEDCBIR_ENCODER", help="Encoder name (see list-encoders)", show_default=False
    ),
]
Checkpoint = Annotated[
    Path | None, typer.Option("--checkpoint", help="Local weights file for the encoder (offline use)")
]


def _settings(
    data_dir: Path | None, encoder: str | None = None, checkpoint: Path | None = None
) -> IndexerSettings:
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir.expanduser().resolve()
    if encoder is not None:
        overrides["encoder"] = encoder
    if checkpoint is not None:
        overrides["checkpoint"] = checkpoint
    return IndexerSettings(**overrides)  # type: ignore[arg-type]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="Folder (or file) of DICOM, PNG and JPEG images")],
    manifest: Annotated[
        Path | None, typer.Option(help="CSV mapping files to cases, reports and diagnoses")
    ] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with the file path or name")] = "filename",
    case_column: Annotated[
        str | None, typer.Option(help="Manifest column with the case id [default: case_id if present]")
    ] = None,
    patient_column: Annotated[
        str | None, typer.Option(help="Manifest column with the patient id [default: patient_id if present]")
    ] = None,
    report_column: Annotated[
        str | None, typer.Option(help="Manifest column with the report text [default: report if present]")
    ] = None,
    diagnosis_column: Annotated[
        str | None, typer.Option(help="Manifest column with diagnosis labels [default: diagnosis if present]")
    ] = None,
    label_separators: Annotated[
        str, typer.Option(help="Characters that separate several labels in one cell")
    ] = ";|,",
    ignore_label: Annotated[
        list[str] | None, typer.Option(help="Label values meaning 'unlabeled' (repeatable)")
    ] = None,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Index every image under PATH; files already indexed are skipped, bad files are recorded."""
    _setup_logging()
    from indexer.archive import Archive
    from indexer.manifest import ManifestColumns, load_manifest
    from indexer.pipeline import ingest_path

    settings = _settings(data_dir, encoder, checkpoint)
    try:
        loaded = None
        if manifest is not None:
            columns = ManifestColumns(
                path=path_column,
                case=case_column,
                patient=patient_column,
                report=report_column,
                diagnosis=diagnosis_column,
                label_separators=label_separators,
                ignore_labels=tuple(ignore_label or ()),
            )
            loaded = load_manifest(manifest, columns)
        archive = Archive.open(settings)
        try:
            report = ingest_path(archive, path, loaded, progress=progress)
        finally:
            archive.close()
    except (IndexerError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"indexed {report.indexed}, already indexed {report.already_indexed}, failed {report.failed}, "
        f"not images {report.not_images} ({report.seen} files in {report.elapsed_s:.1f} s, {report.rate:.1f} files/s)"
    )
    if report.failed:
        typer.echo("see `medcbir failures` for the reasons")


@app.command()
def stats(data_dir: DataDir = None) -> None:
    """Print what the catalog holds."""
    from indexer.catalog import Catalog

    settings = _settings(data_dir)
    catalog = Catalog(settings.resolved_database_url)
    s = catalog.stats()
    typer.echo(f"data dir:      {settings.data_dir}")
    typer.echo(f"cases:         {s.cases} ({s.labeled_cases} with a diagnosis)")
    typer.echo(f"images:        {s.images}")
    typer.echo(f"failures:      {s.failures}")
    for name, count in sorted(s.images_by_encoder.items()):
        typer.echo(f"encoder:       {name}: {count} vectors")
    for modality, count in sorted(s.images_by_modality.items()):
        typer.echo(f"modality:      {modality}: {count}")
    for label, count in list(s.labels.items())[:20]:
        typer.echo(f"label:         {label}: {count}")
    catalog.dispose()


@app.command()
def failures(
    data_dir: DataDir = None, limit: Annotated[int, typer.Option(help="How many to show")] = 50
) -> None:
    """List files that could not be ingested, with the reason."""
    from indexer.catalog import Catalog

    catalog = Catalog(_settings(data_dir).resolved_database_url)
    for failure in catalog.failures(limit):
        typer.echo(
            f"{failure.created_at:%Y-%m-%d %H:%M:%S}  {failure.error_type}  {failure.source_uri}\n    {failure.reason}"
        )
    catalog.dispose()


@app.command()
def verify(data_dir: DataDir = None, encoder: Encoder = None, checkpoint: Checkpoint = None) -> None:
    """Check that the saved index holds exactly the catalog's image ids (exit 1 when not)."""
    import numpy as np

    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.catalog import Catalog
    from indexer.vector_index import VectorIndex

    settings = _settings(data_dir, encoder, checkpoint)
    enc = create_encoder(settings.encoder, checkpoint=settings.checkpoint)
    catalog = Catalog(settings.resolved_database_url)
    stored = np.sort(catalog.image_ids_where(encoder=enc.name))
    try:
        vindex = VectorIndex.load(index_path(settings, enc), encoder=enc.name, dim=enc.dim)
    except IndexerError as exc:
        raise _fail(f"{exc}; run `medcbir rebuild-index`") from exc
    ids = np.sort(vindex.ids())
    if np.array_equal(ids, stored):
        typer.echo(f"ok: index and catalog agree on {len(ids)} ids")
        return
    missing = np.setdiff1d(stored, ids)
    extra = np.setdiff1d(ids, stored)
    typer.echo(
        f"MISMATCH: {len(missing)} catalog ids missing from the index, {len(extra)} index ids not in the catalog"
    )
    raise typer.Exit(code=1)


@app.command("rebuild-index")
def rebuild_index(data_dir: DataDir = None, encoder: Encoder = None, checkpoint: Checkpoint = None) -> None:
    """Rebuild the FAISS index from the embeddings stored in the catalog (no re-encoding)."""
    _setup_logging()
    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.catalog import Catalog
    from indexer.vector_index import VectorIndex

    settings = _settings(data_dir, encoder, checkpoint)
    enc = create_encoder(settings.encoder, checkpoint=settings.checkpoint)
    catalog = Catalog(settings.resolved_database_url)
    vindex = VectorIndex.build_from_catalog(catalog, encoder=enc.name, dim=enc.dim)
    vindex.save(index_path(settings, enc))
    typer.echo(f"rebuilt: {len(vindex)} vectors")


@app.command("list-encoders")
def list_encoders_command() -> None:
    """List the registered encoders (any timm model name works too)."""
    from embeddings import list_encoders

    for name in list_encoders():
        typer.echo(name)


def _api_env(settings: IndexerSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDCBIR_DATA_DIR"] = str(settings.data_dir)
    env["MEDCBIR_ENCODER"] = settings.encoder
    if settings.checkpoint is not None:
        env["MEDCBIR_CHECKPOINT"] = str(settings.checkpoint)
    return env


def _ui_script() -> Path:
    spec = find_spec("ui")
    if spec is None or spec.origin is None:
        raise _fail("the ui package is not installed; reinstall medcbir")
    return Path(spec.origin).parent / "app.py"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
) -> None:
    """Serve the search API (loads the encoder, catalog and index once)."""
    _setup_logging()
    import uvicorn

    settings = _settings(data_dir, encoder, checkpoint)
    os.environ.update(_api_env(settings))
    # The API is a higher layer: it is started by import string, never imported here.
    uvicorn.run("search_api.app:create_app", factory=True, host=host, port=port)


def _ui_command(api_url: str, host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(_ui_script()),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--", "--api-url", api_url,
    ]  # fmt: skip


@app.command()
def ui(
    api_url: Annotated[
        str, typer.Option(envvar="MEDCBIR_UI_API_URL", help="Base URL of the search API")
    ] = "http://127.0.0.1:8000",
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8501,
) -> None:
    """Start the Streamlit UI, talking to the search API over HTTP."""
    raise typer.Exit(subprocess.call(_ui_command(api_url, host, port)))


def _wait_for_api(url: str, process: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _fail(f"the API process exited with code {process.returncode}; see the log above")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise _fail(f"the API did not answer at {url} within {timeout_s:.0f} s")


@app.command()
def demo(
    data: Annotated[
        Path | None, typer.Option(help="Your own archive folder instead of the embedded demo")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest CSV for --data (same columns as `index`)")
    ] = None,
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Address for the API and UI")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="API port")] = 8000,
    ui_port: Annotated[int, typer.Option(help="UI port")] = 8501,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the API and UI after indexing")
    ] = True,
) -> None:
    """Build and index the embedded demo archive (or --data), then serve the API and the UI."""
    _setup_logging()
    from indexer.archive import Archive
    from indexer.demo import build_demo_archive
    from indexer.manifest import ManifestColumns, load_manifest
    from indexer.pipeline import ingest_path

    settings = _settings(data_dir)
    root = data
    if root is None:
        root = settings.data_dir / "demo-archive"
        files = build_demo_archive(root)
        typer.echo(f"demo archive: {len(files)} distinct images in {root}")
    loaded = load_manifest(manifest, ManifestColumns()) if manifest is not None else None
    archive = Archive.open(settings)
    try:
        report = ingest_path(archive, root, loaded)
    finally:
        archive.close()
    typer.echo(f"indexed {report.indexed}, already indexed {report.already_indexed}, failed {report.failed}")
    if not serve_after:
        return
    api_url = f"http://{host}:{api_port}"
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "search_api.app:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(api_port),
        ],
        env=_api_env(settings),
    )
    ui_process: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_api(api_url, api)
        ui_process = subprocess.Popen(_ui_command(api_url, host, ui_port))
        typer.secho(f"search API: {api_url}  (docs: {api_url}/docs)", fg=typer.colors.GREEN)
        typer.secho(f"UI:         http://{host}:{ui_port}", fg=typer.colors.GREEN)
        typer.echo("press Ctrl-C to stop")
        while api.poll() is None and ui_process.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (ui_process, api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    app()
