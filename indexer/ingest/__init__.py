"""Ingest: decode, embed and write rows then vectors (local and Ray engines, manifests, uploads, reindex)."""
