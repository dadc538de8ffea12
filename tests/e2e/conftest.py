"""End-to-end fixtures: deploy/lab's modules on the path, and the gate for the live scenario."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "deploy" / "lab"
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))  # deploy/lab is a directory of scripts, not a package


def require_lab() -> None:
    """The scenario needs root (namespaces, XDP) and writable cgroup v1 cpu/cpuacct."""
    if os.geteuid() != 0:
        pytest.skip("the overload scenario needs root: namespaces, XDP, cgroups")
    import lab_work

    if not lab_work.available():
        pytest.skip("needs writable cgroup v1 cpu and cpuacct hierarchies")
