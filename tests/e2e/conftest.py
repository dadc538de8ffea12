"""End-to-end fixtures: the gate for the live scenario."""

from __future__ import annotations

import os

import pytest

from lab import work


def require_lab() -> None:
    """The scenario needs root (namespaces, XDP) and writable cgroup v1 cpu/cpuacct."""
    if os.geteuid() != 0:
        pytest.skip("the overload scenario needs root: namespaces, XDP, cgroups")
    if not work.available():
        pytest.skip("needs writable cgroup v1 cpu and cpuacct hierarchies")
