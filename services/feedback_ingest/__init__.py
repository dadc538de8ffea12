"""Compute-server agent and the ingest that validates and aggregates its feedback."""
