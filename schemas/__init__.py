"""Message and table formats shared by every service.

What they mean: docs/architecture.md (messages) and docs/forwarding-tables.md (buckets).
"""
