"""The popshift services: one subpackage per part of the system (docs/architecture.md)."""
