"""Lab test fixtures: deploy/lab's modules on the path, root gating, one XDP lab per module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "deploy" / "lab"
sys.path.insert(0, str(LAB_DIR))  # deploy/lab is a directory of scripts, not a package

from lab import DEFAULT_NETWORK, DataPlane, Lab  # noqa: E402
from lab_topology import build  # noqa: E402

from popshift.network import load_network  # noqa: E402

TABLE_BITS = 8  # 256 buckets: the same programs, a table that loads in milliseconds


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the live lab needs root: network namespaces, veths and XDP")


def make_lab(dataplane: DataPlane) -> Lab:
    net = load_network(DEFAULT_NETWORK)
    return Lab(build(net, table_bits=TABLE_BITS), net, dataplane)


@pytest.fixture(scope="module")
def xdp_lab() -> Iterator[Lab]:
    """The whole lab with the forwarder's XDP programs attached; torn down after the module."""
    require_root()
    lab = make_lab(DataPlane.XDP)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
