"""FAISS vector index (a rebuildable cache keyed by catalog ids) and the pure index-kind chooser."""
