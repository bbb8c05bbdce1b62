"""Putting images into the archive: index, failures, reindex."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from indexer.cli.options import Checkpoint, DataDir, Encoder, IgnoreLabel, PathColumn, Progress, settings_from
from indexer.cli.runtime import cli_audit, fail, opened_archive, opened_catalog, setup_logging
from indexer.errors import IndexerError


def index(
    path: Annotated[
        str, typer.Argument(help="Folder, zip or tar archive (or one file) of DICOM, PNG and JPEG images")
    ],
    manifest: Annotated[
        Path | None, typer.Option(help="CSV mapping files to cases, reports and diagnoses")
    ] = None,
    path_column: PathColumn = "filename",
    case_column: Annotated[
        str | None, typer.Option(help="Manifest column with the case id (default: case_id if present)")
    ] = None,
    patient_column: Annotated[
        str | None, typer.Option(help="Manifest column with the patient id (default: patient_id if present)")
    ] = None,
    report_column: Annotated[
        str | None, typer.Option(help="Manifest column with the report text (default: report if present)")
    ] = None,
    diagnosis_column: Annotated[
        str | None, typer.Option(help="Manifest column with diagnosis labels (default: diagnosis if present)")
    ] = None,
    modality_column: Annotated[
        str | None, typer.Option(help="Manifest column with the modality (CR, DX, CT...) of non-DICOM files")
    ] = None,
    body_part_column: Annotated[
        str | None, typer.Option(help="Manifest column with the body part of non-DICOM files")
    ] = None,
    view_column: Annotated[
        str | None, typer.Option(help="Manifest column with the view (PA, AP, LATERAL...) of non-DICOM files")
    ] = None,
    label_separators: Annotated[
        str, typer.Option(help="Characters that separate several labels in one cell")
    ] = ";|,",
    ignore_label: IgnoreLabel = None,
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    progress: Progress = True,
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes (0: decode in a thread) (default: cores - 1)")
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
            help="Ray cluster to join: auto (from a cluster node) or HEAD:6379 (default: a local Ray here)"
        ),
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="Ray embedding actors (default: one per GPU, else half the CPUs)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per embedding batch (default: MEDCBIR_BATCH_SIZE or 32)")
    ] = None,
) -> None:
    """Index every image under PATH; files already indexed are skipped, bad files are recorded."""
    if not path.strip():  # Path("") is the current folder: never index it by accident
        raise fail("PATH is empty: pass the folder, archive or file to index (`.` for the current folder)")
    root = Path(path)
    if frames not in ("representative", "all"):
        raise fail(f"--frames must be 'representative' or 'all', not {frames!r}")
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be 'local' or 'ray', not {engine!r}")
    if engine == "local" and (address is not None or actors is not None):
        raise fail("--address and --actors need --engine ray")
    if engine == "ray" and workers is not None:
        raise fail("--workers is for --engine local: with --engine ray, Ray schedules the decode tasks")
    setup_logging()
    from indexer.ingest.local import ingest_path
    from indexer.ingest.manifest import ManifestColumns, load_manifest

    settings = settings_from(data_dir, encoder, checkpoint)
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
                modality=modality_column,
                body_part=body_part_column,
                view=view_column,
                label_separators=label_separators,
                ignore_labels=tuple(ignore_label or ()),
            )
            loaded = load_manifest(manifest, columns)
        with opened_archive(settings) as archive:
            if engine == "ray":
                from indexer.ingest.ray import RayOptions, ingest_path_ray

                report = ingest_path_ray(
                    archive,
                    root,
                    loaded,
                    options=RayOptions(address=address, actors=actors),
                    progress=progress,
                    frames=frames,  # type: ignore[arg-type]
                )
            else:
                report = ingest_path(
                    archive,
                    root,
                    loaded,
                    progress=progress,
                    workers=workers,
                    frames=frames,  # type: ignore[arg-type]
                )
            cli_audit(archive.catalog, "ingest", f"images:{report.indexed} failed:{report.failed}")
            used = getattr(archive.encoder, "embedded_with", None)  # None when nothing was embedded here
    except (IndexerError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"indexed {report.indexed}, already indexed {report.already_indexed}, failed {report.failed}, "
        f"not images {report.not_images} ({report.seen} files in {report.elapsed_s:.1f} s, {report.rate:.1f} files/s)"
    )
    if used:
        typer.echo(f"embedded with the {used} forward pass")
    if report.manifest_unmatched:
        typer.echo(
            f"{report.manifest_unmatched} manifest rows matched no file under {path}: check --path-column "
            "and that its paths are relative to PATH"
        )
    if report.manifest_unlisted:
        typer.echo(f"{report.manifest_unlisted} files have no manifest row: indexed without labels or report")
    if report.manifest_patient_conflicts:
        typer.echo(
            f"{report.manifest_patient_conflicts} files are listed under two patients in the manifest: "
            "the first row's patient was kept; fix the manifest and re-run"
        )
    if report.failed:
        typer.echo("see `medcbir failures` for the reasons")


def failures(
    data_dir: DataDir = None, limit: Annotated[int, typer.Option(help="How many to show")] = 50
) -> None:
    """List files that could not be ingested, with the reason."""
    with opened_catalog(settings_from(data_dir)) as catalog:
        for failure in catalog.failures(limit):
            typer.echo(
                f"{failure.created_at:%Y-%m-%d %H:%M:%S}  {failure.error_type}  {failure.source_uri}\n    {failure.reason}"
            )


def reindex(
    data_dir: DataDir = None,
    encoder: Encoder = None,
    checkpoint: Checkpoint = None,
    batch_size: Annotated[int, typer.Option(help="Images per embedding batch")] = 32,
    progress: Progress = True,
) -> None:
    """Re-embed every catalog image with ENCODER into its own index; the serving index is untouched until done."""
    setup_logging()
    from embeddings import create_encoder
    from indexer.ingest.reindex import reindex_catalog

    settings = settings_from(data_dir, encoder, checkpoint)
    enc = create_encoder(
        settings.encoder, checkpoint=settings.checkpoint, device=settings.device, batch_size=batch_size
    )
    try:
        # reindex_catalog opens and closes its own catalog
        result = reindex_catalog(settings, enc, progress=progress)
    except IndexerError as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"reindexed with {enc.name}: {result.embedded} embedded, {result.already} already had vectors, "
        f"{result.failed} failed; index {result.index_path} holds {result.index_size} vectors"
    )
    typer.echo(
        f"serve it: medcbir serve --encoder {settings.encoder}"
        + (f" --checkpoint {settings.checkpoint}" if settings.checkpoint else "")
    )
