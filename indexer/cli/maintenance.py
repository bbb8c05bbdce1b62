"""Looking after an archive: stats, verify, rebuild-index, list-encoders, and the `db` schema sub-app."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from indexer.cli.options import Checkpoint, DataDir, Encoder, settings_from
from indexer.cli.runtime import fail, opened_catalog, opened_engine, setup_logging
from indexer.errors import IndexerError
from indexer.settings import IndexerSettings


def stats(data_dir: DataDir = None) -> None:
    """Print what the catalog holds."""
    settings = settings_from(data_dir)
    with opened_catalog(settings) as catalog:
        s = catalog.stats()
    typer.echo(f"data dir:      {settings.data_dir}")
    typer.echo(f"cases:         {s.cases} ({s.labeled_cases} with a diagnosis)")
    typer.echo(f"images:        {s.images}")
    typer.echo(f"failures:      {s.failures}")
    for name, count in sorted(s.images_by_encoder.items()):
        typer.echo(f"encoder:       {name}: {count} vectors")
    typer.echo(f"backend:       {backend_summary()}")
    for line in index_summaries(settings):
        typer.echo(f"index:         {line}")
    for modality, count in sorted(s.images_by_modality.items()):
        typer.echo(f"modality:      {modality}: {count}")
    for label, count in list(s.labels.items())[:20]:
        typer.echo(f"label:         {label}: {count}")


def backend_summary() -> str:
    """Which forward pass the embedding commands run, as configured (MEDCBIR_EMBEDDINGS_BACKEND)."""
    from importlib.util import find_spec

    from embeddings import EmbeddingsError
    from embeddings.settings import configured_backend

    try:
        asked = configured_backend()
    except EmbeddingsError as exc:
        return f"invalid ({exc})"
    if asked == "torch":
        return "torch (MEDCBIR_EMBEDDINGS_BACKEND=torch)"
    if find_spec("onnxruntime") is None:
        return f'{asked}: torch (ONNX Runtime is not installed: pip install "medcbir[onnx]")'
    return f"{asked}: onnxruntime on CPU when it agrees with torch (checked at each start), else torch"


def verify(data_dir: DataDir = None, encoder: Encoder = None, checkpoint: Checkpoint = None) -> None:
    """Check that the saved index holds exactly the catalog's image ids (exit 1 when not)."""
    import numpy as np

    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.vectors.index import VectorIndex
    from indexer.vectors.persistence import index_file_lock

    settings = settings_from(data_dir, encoder, checkpoint)
    enc = create_encoder(settings.encoder, checkpoint=settings.checkpoint)
    with opened_catalog(settings) as catalog:
        stored = np.sort(catalog.image_ids_where(encoder=enc.name))
    path = index_path(settings, enc)
    try:
        with index_file_lock(path):  # never a file half-way through being replaced by a writer
            vindex = VectorIndex.load(path, encoder=enc.name, dim=enc.dim)
    except IndexerError as exc:
        raise fail(f"{exc}; run `medcbir rebuild-index`") from exc
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


def rebuild_index(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    kind: Annotated[
        str, typer.Option(help="Index kind: auto, flat, hnsw, ivf_flat, ivf_sq8 or ivf_pq")
    ] = "auto",
    memory_budget_gib: Annotated[
        float | None, typer.Option(help="Memory budget for auto (default: half the RAM)")
    ] = None,
    postprocess: Annotated[
        str | None,
        typer.Option(
            metavar="SPEC",
            help="Label-free post-processing fitted on the stored embeddings: none, or pcaw, dba, aqe, "
            "rerank joined by '+' (e.g. pcaw:power=0.25,shrink=0.1+dba:n=3) "
            "(default: MEDCBIR_INDEX_POSTPROCESS, else what the saved index serves, else none)",
        ),
    ] = None,
) -> None:
    """Rebuild the FAISS index from the embeddings stored in the catalog (no re-encoding).

    A post-processing is refitted on the catalog's current embeddings (the database only).
    """
    setup_logging()
    from embeddings import create_encoder
    from indexer.archive import index_path
    from indexer.vectors.index import VectorIndex
    from indexer.vectors.index_postprocess import parse_postprocess
    from indexer.vectors.kinds import spec_for_kind
    from indexer.vectors.persistence import saved_postprocess
    from indexer.vectors.sync import save_in_step

    settings = settings_from(data_dir, encoder, checkpoint)
    enc = create_encoder(settings.encoder, checkpoint=settings.checkpoint)
    budget = int(memory_budget_gib * 2**30) if memory_budget_gib else None
    path = index_path(settings, enc)
    asked = postprocess or settings.index_postprocess or saved_postprocess(path) or "none"
    with opened_catalog(settings) as catalog:
        try:
            post = str(parse_postprocess(asked))
            spec = None
            if kind != "auto":
                spec = spec_for_kind(kind, int(catalog.image_ids_where(encoder=enc.name).size), enc.dim)
            generation = catalog.generation()  # the build reads rows at least this new
            vindex = VectorIndex.build_from_catalog(
                catalog,
                encoder=enc.name,
                dim=enc.dim,
                spec=spec,
                memory_budget_bytes=budget,
                postprocess=post,
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc
        vindex.generation = generation
        # under the writer lock, caught up with rows written during the build (never older than disk)
        save_in_step(lambda: vindex, catalog, threading.RLock(), path)
    tuning = vindex.tuning
    detail = f", {tuning.param}={tuning.value}, recall@10 {tuning.recall_at_10:.3f}" if tuning.param else ""
    typer.echo(f"rebuilt: {len(vindex)} vectors ({vindex.kind}{detail})")
    typer.echo(f"postprocess: {postprocess_summary(vindex.describe()['postprocess'])}")


def postprocess_summary(described: dict[str, object]) -> str:
    """One line for a served post-processing: SPEC, version and the rows it was fitted on."""
    if described.get("spec", "none") == "none":
        return "none"
    return f"{described['spec']} (version {described['version']}, fitted on {described['fitted_rows']} rows)"


def index_summaries(settings: IndexerSettings) -> list[str]:
    """Each saved index's encoder, kind, size and post-processing, read from its sidecar (nothing loaded)."""
    import json

    lines = []
    for sidecar in sorted((settings.data_dir / "index").glob("*.faiss.json")):
        try:
            meta = json.loads(sidecar.read_text())
            post = meta.get("postprocess") or {"spec": "none"}
            line = (
                f"{meta['encoder']}: {meta.get('spec', {}).get('kind', 'flat')}, {meta['count']} vectors, "
                f"postprocess {postprocess_summary(post)}"
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            lines.append(f"{sidecar.name}: unreadable ({type(exc).__name__}); run `medcbir rebuild-index`")
            continue
        wanted = settings.index_postprocess
        if wanted is not None and wanted != post.get("spec", "none"):
            line += f" (MEDCBIR_INDEX_POSTPROCESS asks {wanted}: run `medcbir rebuild-index`)"
        lines.append(line)
    return lines or ["none saved yet"]


def list_encoders() -> None:
    """List the registered encoders (any timm model name works too)."""
    from embeddings import list_encoders as registered_encoders

    for name in registered_encoders():
        typer.echo(name)


db_app = typer.Typer(
    help="Catalog database schema (Alembic migrations; SQLite or PostgreSQL).", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Migrate the catalog (MEDCBIR_DATABASE_URL, or the SQLite file in the data folder) to REVISION."""
    setup_logging()
    from indexer.catalog.migrations import upgrade_database

    settings = settings_from(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with opened_engine(settings) as engine:
        try:
            before, after = upgrade_database(engine, revision)
        except Exception as exc:
            raise fail(f"migration failed: {exc}") from exc
    typer.echo(f"catalog schema: {before or 'unversioned'} -> {after}")


@db_app.command("current")
def db_current(data_dir: DataDir = None) -> None:
    """Print the catalog's schema revision and the newest one this medcbir ships."""
    from indexer.catalog.migrations import current_revision, head_revision

    with opened_engine(settings_from(data_dir)) as engine:
        typer.echo(f"current: {current_revision(engine) or 'unversioned'}  head: {head_revision()}")
