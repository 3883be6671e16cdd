"""Ingest sources: one module per external format, each writing an episode store."""
