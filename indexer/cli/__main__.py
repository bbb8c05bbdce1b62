"""`python -m indexer.cli`: run the medcbir command line."""

from indexer.cli.app import app

app()
