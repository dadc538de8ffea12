"""Forwarder test fixtures: quiet scapy, root gating, and one loaded edge and server per session.

Objects are built with small tables (BUCKET_BITS=4) so that a full table rewrite per example is
cheap; the programs are the same code as production.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

logging.getLogger("scapy").setLevel(logging.ERROR)

from services.forwarder.loader import Forwarder, Role  # noqa: E402

TEST_DEFINES = {"BUCKET_BITS": 4}


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for BPF, bpffs and network namespaces")


def _open(role: Role) -> Iterator[Forwarder]:
    require_root()
    fwd = Forwarder.open(role, f"t_{role.value}_{uuid.uuid4().hex[:8]}", defines=TEST_DEFINES)
    try:
        yield fwd
    finally:
        fwd.unpin()
        fwd.close()


@pytest.fixture(scope="session")
def edge_fwd() -> Iterator[Forwarder]:
    yield from _open(Role.EDGE)


@pytest.fixture(scope="session")
def server_fwd() -> Iterator[Forwarder]:
    yield from _open(Role.SERVER)
