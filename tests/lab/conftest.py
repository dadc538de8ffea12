"""Lab test fixtures: root gating, and one XDP lab per module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.namespaces import DEFAULT_NETWORK, DataPlane, Lab
from lab.topology import build
from popshift.network import load_network

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
