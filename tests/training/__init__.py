"""Tests of embeddings.training (fine-tuning) and of reindexing with a new encoder."""
