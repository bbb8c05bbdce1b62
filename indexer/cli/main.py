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
    path: Annotated[
        Path, typer.Argument(help="Folder, zip or tar archive (or one file) of DICOM, PNG and JPEG images")
    ],
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
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes (0: decode in a thread) [default: cores - 1]")
    ] = None,
    frames: Annotated[
        str, typer.Option(help="Multi-frame policy: 'representative' (middle frame) or 'all' (every frame)")
    ] = "representative",
    engine: Annotated[
        str, typer.Option(help="'local' (processes on this machine) or 'ray' (Ray Data over a cluster)")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto (from a cluster node) or HEAD:6379 [default: a local Ray here]"
        ),
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="Ray embedding actors [default: one per GPU, else half the CPUs]")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per embedding batch [default: MEDCBIR_BATCH_SIZE or 32]")
    ] = None,
) -> None:
    """Index every image under PATH; files already indexed are skipped, bad files are recorded."""
    if frames not in ("representative", "all"):
        raise _fail(f"--frames must be 'representative' or 'all', not {frames!r}")
    if engine not in ("local", "ray"):
        raise _fail(f"--engine must be 'local' or 'ray', not {engine!r}")
    if engine == "local" and (address is not None or actors is not None):
        raise _fail("--address and --actors need --engine ray")
    if engine == "ray" and workers is not None:
        raise _fail("--workers is for --engine local: with --engine ray, Ray schedules the decode tasks")
    _setup_logging()
    from indexer.archive import Archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest

    settings = _settings(data_dir, encoder, checkpoint)
    if batch_size is not None:
        settings.batch_size = max(1, batch_size)
    try:
        if engine == "ray":
            from indexer.ingest.ray import import_ray

            import_ray()  # before loading the model: a missing extra is said at once
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
            if engine == "ray":
                from indexer.ingest.ray import RayOptions, ingest_path_ray

                report = ingest_path_ray(
                    archive,
                    path,
                    loaded,
                    options=RayOptions(address=address, actors=actors),
                    progress=progress,
                    frames=frames,  # type: ignore[arg-type]
                )
            else:
                report = ingest_path(
                    archive,
                    path,
                    loaded,
                    progress=progress,
                    workers=workers,
                    frames=frames,  # type: ignore[arg-type]
                )
            _cli_audit(archive.catalog, "ingest", f"images:{report.indexed} failed:{report.failed}")
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
    from indexer.vectors.index import VectorIndex

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
def rebuild_index(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    kind: Annotated[
        str, typer.Option(help="Index kind: auto, flat, hnsw, ivf_flat, ivf_sq8 or ivf_pq")
    ] = "auto",
    memory_budget_gib: Annotated[
        float | None, typer.Option(help="Memory budget for auto [default: half the RAM]")
    ] = None,
) -> None:
    """Rebuild the FAISS index from the embeddings stored in the catalog (no re-encoding)."""
    _setup_logging()
    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.catalog import Catalog
    from indexer.vectors.index import VectorIndex
    from indexer.vectors.kinds import spec_for_kind

    settings = _settings(data_dir, encoder, checkpoint)
    enc = create_encoder(settings.encoder, checkpoint=settings.checkpoint)
    catalog = Catalog(settings.resolved_database_url)
    budget = int(memory_budget_gib * 2**30) if memory_budget_gib else None
    try:
        spec = None
        if kind != "auto":
            spec = spec_for_kind(kind, int(catalog.image_ids_where(encoder=enc.name).size), enc.dim)
        vindex = VectorIndex.build_from_catalog(
            catalog, encoder=enc.name, dim=enc.dim, spec=spec, memory_budget_bytes=budget
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    vindex.save(index_path(settings, enc))
    tuning = vindex.tuning
    detail = f", {tuning.param}={tuning.value}, recall@10 {tuning.recall_at_10:.3f}" if tuning.param else ""
    typer.echo(f"rebuilt: {len(vindex)} vectors ({vindex.kind}{detail})")


db_app = typer.Typer(
    help="Catalog database schema (Alembic migrations; SQLite or PostgreSQL).", no_args_is_help=True
)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Migrate the catalog (MEDCBIR_DATABASE_URL, or the SQLite file in the data folder) to REVISION."""
    _setup_logging()
    from sqlalchemy import create_engine

    from indexer.catalog import postgres_driver_url
    from indexer.catalog.migrations import upgrade_database

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(postgres_driver_url(settings.resolved_database_url))
    try:
        before, after = upgrade_database(engine, revision)
    except Exception as exc:
        raise _fail(f"migration failed: {exc}") from exc
    finally:
        engine.dispose()
    typer.echo(f"catalog schema: {before or 'unversioned'} -> {after}")


@db_app.command("current")
def db_current(data_dir: DataDir = None) -> None:
    """Print the catalog's schema revision and the newest one this medcbir ships."""
    from sqlalchemy import create_engine

    from indexer.catalog import postgres_driver_url
    from indexer.catalog.migrations import current_revision, head_revision

    engine = create_engine(postgres_driver_url(_settings(data_dir).resolved_database_url))
    try:
        typer.echo(f"current: {current_revision(engine) or 'unversioned'}  head: {head_revision()}")
    finally:
        engine.dispose()


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
    # Serving takes the fastest forward pass that gives the same vectors (ONNX Runtime on CPU when the
    # `onnx` extra is installed; measured in benchmarks/RESULTS.md); an explicit setting wins.
    env.setdefault("MEDCBIR_EMBEDDINGS_BACKEND", "auto")
    if settings.checkpoint is not None:
        env["MEDCBIR_CHECKPOINT"] = str(settings.checkpoint)
    return env


def _accounts(settings: IndexerSettings) -> list[object]:
    from indexer.catalog import Catalog
    from indexer.governance.accounts import list_accounts

    catalog = Catalog(settings.resolved_database_url)
    try:
        return list(list_accounts(catalog))
    finally:
        catalog.dispose()


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
    os.environ["MEDCBIR_API_HOST"] = host  # the API refuses non-loopback hosts without authentication
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
    from indexer.cli.demo import build_demo_archive
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest

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
    env = _api_env(settings)
    env["MEDCBIR_API_HOST"] = host
    if not any(True for _ in _accounts(settings)):
        # A fresh demo has no accounts: serve it in the explicit development mode, which the API
        # honours on loopback only (it refuses to start with it on any other address).
        env["MEDCBIR_API_AUTH_DISABLED"] = "1"
        typer.secho("no user accounts: demo API in development mode (loopback only, no sign-in)", fg="yellow")
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
        env=env,
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


# -- evaluation and training (indexer.evaluation, embeddings.training) ------------------------------


def _include_filters(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    filters = []
    for value in values or []:
        column, sep, wanted = value.partition("=")
        if not sep:
            raise _fail(f"--include takes COLUMN=VALUE, got {value!r}")
        filters.append((column.strip(), wanted.strip()))
    return tuple(filters)


@app.command("eval")
def eval_command(
    data: Annotated[
        Path, typer.Option(help="Labeled data: a folder per class, a folder + --manifest, or a .npz")
    ],
    manifest: Annotated[
        Path | None, typer.Option(help="CSV naming each file's label (and patient, split)")
    ] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with the file path or name")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with the class label")] = "label",
    patient_column: Annotated[str | None, typer.Option(help="Manifest column with the patient id")] = None,
    split_column: Annotated[
        str | None,
        typer.Option(help="Manifest column with train/val/test (train = database, test = queries)"),
    ] = None,
    hash_column: Annotated[
        str | None,
        typer.Option(help="Manifest column with a content hash (e.g. md5) [default: sha256 of the file]"),
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Keep only rows where COLUMN=VALUE (repeatable)")
    ] = None,
    ignore_label: Annotated[list[str] | None, typer.Option(help="Label values meaning 'unlabeled'")] = None,
    dedupe: Annotated[bool, typer.Option(help="Drop byte-identical images (keeping the train copy)")] = False,
    min_class_count: Annotated[int, typer.Option(help="Leave out classes with fewer images")] = 1,
    k: Annotated[int, typer.Option(help="Neighbours for the kNN vote and the per-class table")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the patient-grouped split (without a split column)")] = 0,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    image_size: Annotated[
        int | None, typer.Option(help="Model input size in px [default: the encoder's]")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a markdown report here")] = None,
    plots: Annotated[
        Path | None, typer.Option(help="Folder for the confusion and precision-recall plots")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Reuse embeddings saved here (keyed by data, encoder, size)")
    ] = None,
) -> None:
    """Measure retrieval quality on a labeled dataset (precision@k, mAP@k, mMV@k, kNN vote, F1, AUC)."""
    _setup_logging()
    from indexer.evaluation.datasets import ManifestSpec
    from indexer.evaluation.report import to_markdown, write_json, write_markdown, write_plots
    from indexer.evaluation.runner import EvaluationConfig, run_evaluation

    config = EvaluationConfig(
        data=data,
        manifest=manifest,
        spec=ManifestSpec(
            path_column=path_column,
            label_column=label_column,
            patient_column=patient_column,
            split_column=split_column,
            hash_column=hash_column,
            include=_include_filters(include),
            ignore_labels=tuple(ignore_label or ()),
        ),
        k=k,
        encoder=encoder or IndexerSettings().encoder,
        checkpoint=checkpoint,
        image_size=image_size,
        seed=seed,
        dedupe=dedupe,
        min_class_count=min_class_count,
        cache_dir=cache_dir,
    )
    try:
        result = run_evaluation(config)
    except (IndexerError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    if json_path is not None:
        write_json(result, json_path)
    if markdown is not None:
        write_markdown(result, markdown)
    if plots is not None:
        write_plots(result, plots)
    typer.echo(to_markdown(result))


@app.command()
def finetune(
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labeled data: a folder per class, a folder + --manifest, or a .npz [default: --from-catalog]"
        ),
    ] = None,
    from_catalog: Annotated[
        bool,
        typer.Option(
            "--from-catalog",
            help="Train on the catalog's images labeled with their case diagnosis (single-label cases), "
            "held out by patient; the default without --data",
        ),
    ] = False,
    manifest: Annotated[
        Path | None, typer.Option(help="CSV naming each file's label (and patient, split)")
    ] = None,
    path_column: Annotated[str, typer.Option(help="Manifest column with the file path or name")] = "path",
    label_column: Annotated[str, typer.Option(help="Manifest column with the class label")] = "label",
    patient_column: Annotated[str | None, typer.Option(help="Manifest column with the patient id")] = None,
    split_column: Annotated[str | None, typer.Option(help="Manifest column with train/val/test")] = None,
    hash_column: Annotated[
        str | None, typer.Option(help="Manifest column with a content hash (e.g. md5)")
    ] = None,
    include: Annotated[list[str] | None, typer.Option(help="Keep only rows where COLUMN=VALUE")] = None,
    ignore_label: Annotated[list[str] | None, typer.Option(help="Label values meaning 'unlabeled'")] = None,
    dedupe: Annotated[bool, typer.Option(help="Drop byte-identical images (keeping the train copy)")] = False,
    min_class_count: Annotated[int, typer.Option(help="Leave out classes with fewer images")] = 1,
    max_images: Annotated[
        int | None, typer.Option(help="Use a fixed random subsample of this many images (CPU budgets)")
    ] = None,
    loss: Annotated[str, typer.Option(help="proxy_nca or supcon")] = "proxy_nca",
    epochs: Annotated[int, typer.Option(help="Training epochs (the best on validation is kept)")] = 10,
    image_size: Annotated[int, typer.Option(help="Training input size in px (small is fast on CPU)")] = 128,
    trainable_stages: Annotated[int, typer.Option(help="How many of the last stages to train")] = 2,
    batch_size: Annotated[int, typer.Option(help="Images per step")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the trained stages")] = 3e-4,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the batches")] = 0,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the checkpoint and its card go [default: DATA_DIR/encoders]")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Keep frozen-trunk features here for re-runs")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the card (with test scores) here")
    ] = None,
) -> None:
    """Fine-tune the encoder on labeled data (metric learning), validate on held-out patients, save it.

    Without --data it trains on the catalog itself (--from-catalog): every image of a case with exactly
    one diagnosis label, re-decoded from its source; multi-label and unlabeled cases, and images whose
    source is gone, are left out and counted in the card."""
    _setup_logging()
    import json

    from embeddings import EmbeddingsError
    from embeddings.training.finetune import FinetuneConfig
    from indexer.evaluation.datasets import ManifestSpec
    from indexer.evaluation.finetuning import run_finetune
    from indexer.evaluation.runner import EvaluationConfig

    if data is not None and from_catalog:
        raise _fail("pass either --data or --from-catalog, not both")
    settings = _settings(data_dir, encoder, checkpoint)
    catalog_url = settings.resolved_database_url if data is None else None
    if catalog_url is not None and manifest is not None:
        raise _fail("--manifest goes with --data; the catalog already knows its labels")
    eval_config = EvaluationConfig(
        data=data if data is not None else settings.data_dir,
        from_catalog=catalog_url,
        manifest=manifest,
        spec=ManifestSpec(
            path_column=path_column,
            label_column=label_column,
            patient_column=patient_column,
            split_column=split_column,
            hash_column=hash_column,
            include=_include_filters(include),
            ignore_labels=tuple(ignore_label or ()),
        ),
        encoder=settings.encoder,
        checkpoint=settings.checkpoint,
        seed=seed,
        dedupe=dedupe,
        min_class_count=min_class_count,
        max_images=max_images,
        device=settings.device,
    )
    try:
        config = FinetuneConfig(
            input_size=image_size,
            trainable_stages=trainable_stages,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            seed=seed,
        )
        report = run_finetune(
            eval_config,
            config,
            output_dir=output_dir or settings.data_dir / "encoders",
            trunk_cache_dir=cache_dir,
        )
    except (IndexerError, EmbeddingsError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps({**report.card, "checkpoint_path": str(report.checkpoint)}, indent=2) + "\n"
        )
    card = report.card
    typer.echo(
        f"held-out test mAP@10: {card['test_map@10_before']:.4f} before -> {card['test_map@10_after']:.4f} after "
        f"(val mAP@10 {card['val_map@10_before']:.4f} -> {card['val_map@10']:.4f}, best epoch {card['best_epoch']})"
    )
    if "used_images" in card:
        typer.echo(
            f"catalog: {card['used_images']} of {card['catalog_images']} images used; left out "
            f"{card['left_out_multi_label']} of multi-label cases, {card['left_out_unlabeled']} unlabeled, "
            f"{card['left_out_source_missing']} whose source is gone"
        )
    typer.echo(f"checkpoint: {report.checkpoint}")
    typer.echo(f"use it: medcbir reindex --encoder {eval_config.encoder} --checkpoint {report.checkpoint}")


@app.command()
def reindex(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    batch_size: Annotated[int, typer.Option(help="Images per embedding batch")] = 32,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Re-embed every catalog image with ENCODER into its own index; the serving index is untouched until done."""
    _setup_logging()
    from embeddings import create_encoder
    from indexer.ingest.reindex import reindex_catalog

    settings = _settings(data_dir, encoder, checkpoint)
    enc = create_encoder(
        settings.encoder, checkpoint=settings.checkpoint, device=settings.device, batch_size=batch_size
    )
    try:
        result = reindex_catalog(settings, enc, progress=progress)
    except IndexerError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"reindexed with {enc.name}: {result.embedded} embedded, {result.already} already had vectors, "
        f"{result.failed} failed; index {result.index_path} holds {result.index_size} vectors"
    )
    typer.echo(
        f"serve it: medcbir serve --encoder {settings.encoder}"
        + (f" --checkpoint {settings.checkpoint}" if settings.checkpoint else "")
    )


@app.command("train-head")
def train_head_command(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    seed: Annotated[int, typer.Option(help="Seed of the patient-grouped splits")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of patients held out for validation")] = 0.2,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write both cards (head and vote) here")
    ] = None,
) -> None:
    """Train a linear head on the stored embeddings and calibrate the kNN vote; saved as a new version."""
    _setup_logging()
    import json

    from embeddings import EmbeddingsError, create_encoder
    from indexer.catalog import Catalog
    from indexer.prediction.heads import train_predictors

    settings = _settings(data_dir, encoder, checkpoint)
    try:
        name = create_encoder(settings.encoder, checkpoint=settings.checkpoint, device="cpu").name
        catalog = Catalog(settings.resolved_database_url)
        result = train_predictors(catalog, name, settings.data_dir, seed=seed, val_fraction=val_fraction)
    except (IndexerError, EmbeddingsError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"saved {result.directory}")
    if result.head is None:
        typer.echo("head: not trained (needs >= 2 diagnoses with images of >= 2 patients each)")
    else:
        card = result.head.card
        typer.echo(
            f"head: {len(result.head.labels)} classes, {card['n_train']} train / {card['n_val']} val images "
            f"({card['n_train_patients']} / {card['n_val_patients']} patients, none shared); "
            f"val accuracy {card['val_accuracy']:.3f} (chance {card['chance_accuracy']:.3f}); "
            f"val ECE {card['val_ece_before']:.3f} -> {card['val_ece_after']:.3f} (T={result.head.temperature:.3g})"
        )
        if card["val_accuracy"] <= card["chance_accuracy"] + 0.01:
            typer.echo("  warning: the head is no better than always answering the most frequent label")
        if card["skipped_multi_label_images"] or card["left_out_classes"]:
            typer.echo(
                f"  left out: {card['skipped_multi_label_images']} multi-label images, "
                f"classes with < 2 images: {', '.join(card['left_out_classes']) or 'none'}"
            )
    vote = result.vote
    if "holdout_ece_after" in vote.card:
        typer.echo(
            f"vote: T={vote.temperature:g}, eps={vote.epsilon:g}; holdout accuracy "
            f"{vote.card['holdout_accuracy_before']:.3f} -> {vote.card['holdout_accuracy']:.3f}; "
            f"holdout ECE {vote.card['holdout_ece_before']:.3f} -> "
            f"{vote.card['holdout_ece_after']:.3f} ({vote.card['n_holdout']} held-out images)"
        )
    else:
        typer.echo(f"vote: not calibrated ({vote.card.get('note', 'too few labeled images')})")
    typer.echo(
        f"out of distribution below top similarity {vote.ood_similarity:.3f} "
        f"(the {vote.card['ood_quantile']:.0%} quantile of stored images' best match to other patients)"
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps({"head": result.head.card if result.head else None, "vote": vote.__dict__}, indent=2)
        )


# -- accounts, audit and de-identified export (indexer.governance.accounts, indexer.governance.export) --------------------

users_app = typer.Typer(help="User accounts of the search API (no default passwords).", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _catalog_of(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from indexer.catalog import Catalog

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Catalog(settings.resolved_database_url)


def _cli_audit(catalog, action: str, obj: str | None, outcome: str = "success") -> None:  # type: ignore[no-untyped-def]
    import getpass

    from indexer.governance.audit import record_audit

    try:
        operator = getpass.getuser()
    except (KeyError, OSError):
        operator = "unknown"
    record_audit(
        catalog, action=action, outcome=outcome, username=f"cli:{operator}", object=obj, client="cli"
    )


def _read_password(username: str) -> str:
    """From a hidden prompt (twice) at a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        password: str = typer.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
        return password
    return sys.stdin.readline().rstrip("\r\n")


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Option("--username", help="Login name")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the admin role")] = False,
    role: Annotated[str, typer.Option(help="radiologist or admin")] = "radiologist",
    service: Annotated[
        bool, typer.Option("--service", help="A service account: no password, prints an API key")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a user; the password is read from a prompt, or from standard input when not a terminal."""
    from indexer.governance.accounts import AccountError, create_api_key, create_user

    catalog = _catalog_of(data_dir)
    try:
        password = None if service else _read_password(username)
        account = create_user(catalog, username, password, "admin" if admin else role, service=service)
        _cli_audit(catalog, "create_user", f"user:{account.username}")
        typer.echo(f"created {account.role} {account.username}")
        if service:
            typer.echo(
                f"API key (shown once; send it as the X-API-Key header): {create_api_key(catalog, username)}"
            )
    except AccountError as exc:
        raise _fail(str(exc)) from exc
    finally:
        catalog.dispose()


@users_app.command("list")
def users_list(data_dir: DataDir = None) -> None:
    """List the accounts."""
    from indexer.governance.accounts import list_accounts

    catalog = _catalog_of(data_dir)
    for account in list_accounts(catalog):
        status = "disabled" if account.disabled else "active"
        kind = "service" if account.service else "person"
        typer.echo(f"{account.username}\t{account.role}\t{status}\t{kind}")
    catalog.dispose()


def _user_change(data_dir: Path | None, action: str, username: str, change) -> None:  # type: ignore[no-untyped-def]
    from indexer.governance.accounts import AccountError

    catalog = _catalog_of(data_dir)
    try:
        account = change(catalog)
        _cli_audit(catalog, action, f"user:{username}")
        typer.echo(f"{account.username}: {account.role}, {'disabled' if account.disabled else 'active'}")
    except AccountError as exc:
        raise _fail(str(exc)) from exc
    finally:
        catalog.dispose()


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDir = None) -> None:
    """Disable a user: their tokens and API keys stop working at once."""
    from indexer.governance.accounts import set_disabled

    _user_change(data_dir, "disable_user", username, lambda c: set_disabled(c, username, True))


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDir = None) -> None:
    """Enable a disabled user."""
    from indexer.governance.accounts import set_disabled

    _user_change(data_dir, "enable_user", username, lambda c: set_disabled(c, username, False))


@users_app.command("set-role")
def users_set_role(username: str, role: str, data_dir: DataDir = None) -> None:
    """Change a user's role (radiologist or admin)."""
    from indexer.governance.accounts import set_role

    _user_change(data_dir, "set_role", username, lambda c: set_role(c, username, role))


@users_app.command("set-password")
def users_set_password(username: str, data_dir: DataDir = None) -> None:
    """Replace a user's password (prompt, or standard input when not a terminal)."""
    from indexer.governance.accounts import AccountError, set_password

    catalog = _catalog_of(data_dir)
    try:
        set_password(catalog, username, _read_password(username))
        _cli_audit(catalog, "set_password", f"user:{username}")
        typer.echo(f"password of {username} changed")
    except AccountError as exc:
        raise _fail(str(exc)) from exc
    finally:
        catalog.dispose()


@users_app.command("api-key")
def users_api_key(username: str, data_dir: DataDir = None) -> None:
    """Issue a new API key for a (service) account; it is printed once and stored only as a hash."""
    from indexer.governance.accounts import AccountError, create_api_key

    catalog = _catalog_of(data_dir)
    try:
        key = create_api_key(catalog, username)
        _cli_audit(catalog, "create_api_key", f"user:{username}")
        typer.echo(key)
    except AccountError as exc:
        raise _fail(str(exc)) from exc
    finally:
        catalog.dispose()


@app.command("audit")
def audit_command(
    limit: Annotated[int, typer.Option(help="How many rows, newest first")] = 50,
    user: Annotated[str | None, typer.Option(help="Only this user's rows")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action (search, view_case, login, ...)")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print the audit trail: UTC time, user, role, action, object, outcome, client, request id."""
    from indexer.governance.audit import audit_records

    catalog = _catalog_of(data_dir)
    total, rows = audit_records(catalog, limit=limit, username=user, action=action)
    for r in rows:
        typer.echo(
            f"{r.at:%Y-%m-%dT%H:%M:%SZ}  {r.username or '-'}  {r.role or '-'}  {r.action}  {r.object or '-'}  "
            f"{r.outcome}({r.status or '-'})  {r.client or '-'}  {r.request_id or '-'}"
        )
    typer.echo(f"{len(rows)} of {total} rows")
    catalog.dispose()


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the DICOM files to")],
    deidentify: Annotated[
        bool, typer.Option("--deidentify", help="Required: apply the PS3.15 Basic Profile")
    ] = False,
    case: Annotated[list[int] | None, typer.Option("--case", help="Only this case id (repeatable)")] = None,
    allow_burned_in: Annotated[
        bool, typer.Option("--allow-burned-in", help="Export images flagged Burned In Annotation = YES")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Export archived DICOM images de-identified (names, ids, dates, UIDs, institutions, private tags)."""
    _setup_logging()
    from indexer.governance.export import export_deidentified
    from indexer.governance.pseudonym import load_or_create_key

    if not deidentify:
        raise _fail("medcbir only exports de-identified data: add --deidentify")
    settings = _settings(data_dir)
    catalog = _catalog_of(data_dir)
    try:
        report = export_deidentified(
            catalog,
            load_or_create_key(settings.key_path),
            out,
            case_ids=case,
            allow_burned_in=allow_burned_in,
        )
        _cli_audit(
            catalog, "export", f"images:{report.exported} cases:{','.join(map(str, case or [])) or 'all'}"
        )
    finally:
        catalog.dispose()
    typer.echo(
        f"exported {report.exported} de-identified DICOM files to {out}; skipped {report.not_dicom} non-DICOM, "
        f"{report.unreachable} unreachable; refused {report.burned_in_refused} with burned-in annotation"
    )
    if report.burned_in_refused:
        typer.echo("check those images' pixels, then re-run with --allow-burned-in to include them")


if __name__ == "__main__":
    app()
