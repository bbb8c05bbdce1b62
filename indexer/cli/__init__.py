"""The `medcbir` command line: one typer app with sub-apps."""

from indexer.cli.main import app

__all__ = ["app"]
