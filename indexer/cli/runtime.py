"""What commands share at run time: logging, failing with exit code 2, audit rows, and what they open (closed on exit)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from indexer.settings import IndexerSettings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from embeddings import ImageEncoder
    from indexer.archive import Archive
    from indexer.catalog import Catalog


def setup_logging(verbose: bool = False) -> None:
    """Log records to standard error, INFO and up (DEBUG when verbose)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # which SIMD build faiss picked is noise outside --verbose
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def fail(message: str) -> typer.Exit:
    """Say what went wrong on standard error; the caller raises the returned exit (code 2)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@contextmanager
def opened_catalog(settings: IndexerSettings, *, create_data_dir: bool = False) -> Iterator[Catalog]:
    """The settings' catalog, its connections closed when the block ends (whatever way it ends)."""
    from indexer.catalog import Catalog

    if create_data_dir:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(settings.resolved_database_url)
    try:
        yield catalog
    finally:
        catalog.dispose()


@contextmanager
def opened_archive(settings: IndexerSettings, encoder: ImageEncoder | None = None) -> Iterator[Archive]:
    """The settings' archive (catalog, encoder, index), closed when the block ends."""
    from indexer.archive import Archive

    archive = Archive.open(settings, encoder)
    try:
        yield archive
    finally:
        archive.close()


@contextmanager
def opened_engine(settings: IndexerSettings) -> Iterator[Engine]:
    """A bare SQLAlchemy engine on the catalog's database (for migrations), disposed when the block ends."""
    from sqlalchemy import create_engine

    from indexer.catalog import postgres_driver_url

    engine = create_engine(postgres_driver_url(settings.resolved_database_url))
    try:
        yield engine
    finally:
        engine.dispose()


def cli_audit(catalog: Catalog, action: str, obj: str | None, outcome: str = "success") -> None:
    """Record an audit row for a command, attributed to `cli:<operating-system user>`."""
    import getpass

    from indexer.governance.audit import record_audit

    try:
        operator = getpass.getuser()
    except (KeyError, OSError):
        operator = "unknown"
    record_audit(
        catalog, action=action, outcome=outcome, username=f"cli:{operator}", object=obj, client="cli"
    )
