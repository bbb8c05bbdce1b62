"""The search API: a Searcher over catalog + index + encoder, and its FastAPI routes."""
