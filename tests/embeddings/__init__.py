"""Tests for the embeddings package."""
