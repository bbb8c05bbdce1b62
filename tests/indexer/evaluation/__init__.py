"""Tests of indexer.evaluation: metrics, loaders, protocol, eval CLI."""
