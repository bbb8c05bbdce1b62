"""Retrieval-quality evaluation: labeled dataset loaders, pure metrics, the protocol and its reports."""
