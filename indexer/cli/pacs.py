"""`medcbir pacs`: configure PACS connections, test them, and sync a PACS into the archive."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from indexer.cli.options import DataDir, Encoder, Progress, settings_from
from indexer.cli.runtime import cli_audit, fail, opened_archive, opened_catalog, setup_logging
from indexer.errors import IndexerError

pacs_app = typer.Typer(
    help="Connect a PACS (DICOMweb): add, list, test, sync. Credentials come from "
    "MEDCBIR_PACS_<NAME>_USERNAME / _PASSWORD (or _TOKEN), never from a flag.",
    no_args_is_help=True,
)

KINDS = ("dicomweb", "orthanc")
# The OHIF viewer's study link; {viewer} is the viewer's base URL given with --viewer-url.
OHIF_TEMPLATE = "{viewer}/viewer?StudyInstanceUIDs={study}&initialSeriesInstanceUID={series}"
_DATE = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")

PacsName = Annotated[str, typer.Argument(help="The PACS's name in medcbir (letters, digits, '-', '_')")]


def _date(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    if not _DATE.match(value):
        raise fail(f"{flag} must be a date like 2024-01-31, not {value!r}")
    return value.replace("-", "")


@pacs_app.command("add")
def add(
    name: PacsName,
    url: Annotated[str, typer.Option(help="The DICOMweb root, e.g. http://pacs:8042/dicom-web")],
    kind: Annotated[
        str, typer.Option(help="'dicomweb', or 'orthanc' (also follows its /changes feed)")
    ] = "dicomweb",
    viewer_url_template: Annotated[
        str | None,
        typer.Option(
            help="Viewer deep link with {study}, {series}, {sop} (default: OHIF form at --viewer-url)"
        ),
    ] = None,
    viewer_url: Annotated[
        str | None, typer.Option(help="Base URL of an OHIF viewer for the default link template")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure-skip-tls-verify", help="Do not verify the PACS's TLS certificate (unsafe)"),
    ] = False,
    write_back: Annotated[
        bool, typer.Option(help="Allow writing similar-case documents (KOS/SR) back into this PACS")
    ] = False,
    replace: Annotated[bool, typer.Option(help="Replace a connection of that name")] = False,
    data_dir: DataDir = None,
) -> None:
    """Configure a PACS connection (its credentials come from the environment, never from a flag)."""
    from indexer.catalog.pacs_rows import PacsConnectionRow
    from indexer.storage.dicomweb import check_pacs_name, env_prefix

    if kind not in KINDS:
        raise fail(f"--kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not url.startswith(("http://", "https://")):
        raise fail(f"--url must be an http(s) DICOMweb root, e.g. http://pacs:8042/dicom-web, not {url!r}")
    template = viewer_url_template
    if template is None and viewer_url is not None:
        template = OHIF_TEMPLATE.replace("{viewer}", viewer_url.rstrip("/"))
    try:
        row = PacsConnectionRow(
            name=check_pacs_name(name),
            url=url.rstrip("/"),
            kind=kind,
            viewer_url_template=template,
            verify_tls=not insecure,
            write_back=write_back,
        )
        with opened_catalog(settings_from(data_dir), create_data_dir=True) as catalog:
            catalog.add_pacs_connection(row, replace=replace)
            cli_audit(catalog, "pacs-add", f"pacs:{name}")
    except IndexerError as exc:
        raise fail(str(exc)) from exc
    typer.echo(
        f"added PACS {name} at {row.url}; set {env_prefix(name)}USERNAME and _PASSWORD if it needs an account"
    )
    typer.echo(f"check it: medcbir pacs test {name}")


@pacs_app.command("list")
def list_pacs(data_dir: DataDir = None) -> None:
    """List the configured PACS connections."""
    with opened_catalog(settings_from(data_dir)) as catalog:
        rows = catalog.pacs_connections()
    if not rows:
        typer.echo("no PACS configured: medcbir pacs add NAME --url http://host:8042/dicom-web")
    for row in rows:
        flags = ("" if row.verify_tls else " tls-unverified") + (" write-back" if row.write_back else "")
        typer.echo(f"{row.name}\t{row.kind}\t{row.url}\tviewer: {row.viewer_url_template or '-'}{flags}")


@pacs_app.command("test")
def test(name: PacsName, data_dir: DataDir = None) -> None:
    """Query the PACS (QIDO-RS) and say what it can reach."""
    from indexer.storage.dicomweb import DicomwebPacs

    try:
        with opened_catalog(settings_from(data_dir)) as catalog:
            connection = catalog.pacs_connection(name)
        studies = DicomwebPacs(connection).reachable_studies()
    except IndexerError as exc:
        raise fail(str(exc)) from exc
    more = "+" if studies >= 1000 else ""
    typer.echo(f"PACS {name} answers at {connection.url}: QIDO-RS sees {studies}{more} studies")


@pacs_app.command("sync")
def sync(
    name: PacsName,
    since: Annotated[str | None, typer.Option(help="Only studies on or after this date (2024-01-31)")] = None,
    until: Annotated[str | None, typer.Option(help="Only studies on or before this date")] = None,
    modality: Annotated[str | None, typer.Option(help="Only series of these modalities, e.g. CT,MR")] = None,
    study: Annotated[str | None, typer.Option(help="Only this Study Instance UID")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="WADO-RS retrievals at once (default: MEDCBIR_PACS_CONCURRENCY or 4)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes (--engine local) (default: cores - 1)")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="'local' (processes on this machine) or 'ray' (decode and embed on Ray Data; fetched and "
            "written here)"
        ),
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
    data_dir: DataDir = None,
    encoder: Encoder = None,
    progress: Progress = True,
) -> None:
    """Index the PACS's instances (QIDO-RS + WADO-RS); a re-run (after a kill, too) only does what is missing."""
    from indexer.ingest.pacs_sync import sync_pacs
    from indexer.storage.dicomweb import DicomwebPacs, StudyFilter
    from indexer.storage.pacs_reader import install_pacs_reader

    if engine not in ("local", "ray"):
        raise fail(f"--engine must be 'local' or 'ray', not {engine!r}")
    if engine == "local" and (address is not None or actors is not None):
        raise fail("--address and --actors need --engine ray")
    if engine == "ray" and workers is not None:
        raise fail("--workers is for --engine local: with --engine ray, Ray schedules the decode tasks")
    ray_options = None
    if engine == "ray":
        from indexer.ingest.ray import RayOptions, import_ray

        try:
            import_ray()  # before the PACS is asked: a missing extra is said at once
        except IndexerError as exc:
            raise fail(str(exc)) from exc
        ray_options = RayOptions(address=address, actors=actors)

    wanted = StudyFilter(
        since=_date(since, "--since"),
        until=_date(until, "--until"),
        modalities=frozenset(m.strip().upper() for m in (modality or "").split(",") if m.strip()),
        study=study,
    )
    setup_logging()
    try:
        with opened_archive(settings_from(data_dir, encoder)) as archive:
            reader = install_pacs_reader(archive.catalog)
            pacs: DicomwebPacs = reader.client(name)
            report = sync_pacs(
                archive,
                pacs,
                wanted,
                concurrency=concurrency,
                progress=progress,
                workers=workers,
                engine="ray" if engine == "ray" else "local",
                ray_options=ray_options,
            )
            cli_audit(archive.catalog, "pacs-sync", f"pacs:{name} images:{report.ingest.indexed}")
    except IndexerError as exc:
        raise fail(f"{exc} (run the same command again to resume)") from exc
    ingest = report.ingest
    typer.echo(
        f"PACS {name}: {report.studies} studies, {report.listed} instances; {report.already_here} already here; "
        f"indexed {ingest.indexed}, already indexed {ingest.already_indexed}, failed {ingest.failed}, "
        f"not images {ingest.not_images} ({report.elapsed_s:.1f} s, {report.rate:.1f} instances/s)"
    )
    if ingest.failed:
        typer.echo("see `medcbir failures` for the reasons")


@pacs_app.command("follow")
def follow(
    name: PacsName,
    once: Annotated[bool, typer.Option(help="Read the feed to its end (one poll), then stop")] = False,
    poll_s: Annotated[
        float | None, typer.Option(help="Seconds between looks (default: 1 for Orthanc, 30 for QIDO polling)")
    ] = None,
    reconcile_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds between full study listings that find studies deleted in the PACS "
            "(default: 60 for Orthanc, 3600 for QIDO polling; 0 or less with QIDO polling: never)"
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="QIDO polling: start from this study date (2024-01-31) (default: the stored cursor, or today)"
        ),
    ] = None,
    lookback_days: Annotated[
        int, typer.Option(help="QIDO polling: also ask for studies dated this many days before the cursor")
    ] = 2,
    data_dir: DataDir = None,
    encoder: Encoder = None,
) -> None:
    """Follow a PACS: new studies are indexed as they arrive (Ctrl-C stops; a restart resumes).

    An Orthanc (--kind orthanc) is followed through its /changes feed: stable studies are indexed, deleted
    ones leave the index. A plain DICOMweb server (--kind dicomweb) is polled with QIDO-RS for studies dated
    from the stored cursor minus --lookback-days; it cannot report deletions, and polling cannot see a study
    that arrives with an older Study Date than that window or with none (use `pacs sync --since` for those).
    Deleted studies are found by listing all the server's studies every --reconcile-s seconds.
    """
    import signal
    import threading

    from indexer.ingest.follow import OrthancFollower, follower_for
    from indexer.storage.pacs_reader import install_pacs_reader

    setup_logging()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start_date = _date(since, "--since")
    if lookback_days < 0:
        raise fail(f"--lookback-days must be 0 or more, not {lookback_days}")
    try:
        with opened_archive(settings_from(data_dir, encoder)) as archive:
            pacs = install_pacs_reader(archive.catalog).client(name)
            follower = follower_for(
                archive, pacs, reconcile_s=reconcile_s, since=start_date, lookback_days=lookback_days
            )
            orthanc = isinstance(follower, OrthancFollower)
            if isinstance(follower, OrthancFollower):
                typer.echo(f"following PACS {name} from change {follower.report.cursor}")
            else:
                typer.echo(
                    f"polling PACS {name} (QIDO-RS) for studies dated from {follower.window_start} on; "
                    "deletions are seen only by the periodic full listing (--reconcile-s)"
                )
            try:
                if once:
                    while not follower.step():
                        pass
                else:
                    follower.run(stop, poll_s if poll_s is not None else (1.0 if orthanc else 30.0))
            except KeyboardInterrupt:
                pass
            report = follower.report
            cli_audit(archive.catalog, "pacs-follow", f"pacs:{name} images:{report.images_indexed}")
    except IndexerError as exc:
        raise fail(f"{exc} (run the same command again: it resumes from the stored cursor)") from exc
    read = (
        f"{report.changes} changes read, {report.studies_ingested} stable studies"
        if orthanc
        else f"{report.polls} polls, {report.changes} studies looked at, {report.studies_ingested} studies ingested"
    )
    typer.echo(
        f"PACS {name}: {read} "
        f"({report.images_indexed} images indexed), {report.studies_deleted} deleted studies removed; "
        f"cursor at {report.cursor}"
    )


def receive(
    aet: Annotated[str, typer.Option(help="This node's AE title")] = "MEDCBIR",
    port: Annotated[int, typer.Option(help="DICOM port to listen on")] = 11112,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface)")] = "127.0.0.1",
    allow_aet: Annotated[
        list[str] | None, typer.Option(help="Calling AE title allowed to send (repeatable) (default: any)")
    ] = None,
    data_dir: DataDir = None,
    encoder: Encoder = None,
) -> None:
    """Be a DICOM node: accept C-STORE (and C-ECHO), spool each instance safely, index it (Ctrl-C stops)."""
    import signal
    import threading

    from indexer.ingest.receiver import DicomReceiver, Spool, SpoolWorker

    setup_logging()
    settings = settings_from(data_dir, encoder)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with opened_archive(settings) as archive:
            spool = Spool(settings.data_dir / "received")
            worker = SpoolWorker(archive, spool)
            worker.drain()  # what a crash left spooled comes first
            receiver = DicomReceiver(spool, aet, allow_aet or (), host=host)
            receiver.start(port)
            if not allow_aet:
                typer.echo("warning: any calling AE title may send; restrict with --allow-aet", err=True)
            typer.echo(f"listening as {aet} on {host}:{port}; received instances are indexed as they arrive")
            try:
                worker.run(stop)
            except KeyboardInterrupt:
                pass
            finally:
                receiver.stop()
                worker.drain()
            cli_audit(
                archive.catalog, "receive", f"images:{worker.report.indexed} failed:{worker.report.failed}"
            )
    except (IndexerError, OSError) as exc:
        raise fail(str(exc)) from exc
    report = worker.report
    typer.echo(
        f"received and indexed {report.indexed}, already indexed {report.already_indexed}, failed {report.failed}"
    )
