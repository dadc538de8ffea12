"""PoP management server: turns policies into forwarding-table buckets in Redis."""
