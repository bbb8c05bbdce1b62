"""The `medcbir` command line: one typer app (app.py) with commands and sub-apps grouped by concept."""

from indexer.cli.app import app

__all__ = ["app"]
