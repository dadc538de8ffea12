"""Shared plumbing of the popshift services: settings, the Kafka bus, topics, tracing, the CLI."""
