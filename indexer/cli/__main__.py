"""`python -m indexer.cli`: run the medcbir command line."""

from indexer.cli.main import app

app()
