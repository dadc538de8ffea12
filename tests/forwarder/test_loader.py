"""Loader: pin, adopt after a restart (and refuse another role's pin), attachment that outlives
its process, batch table diffs, counters, and verifier logs on a failed load."""

from __future__ import annotations

import ctypes
import ipaddress as ia
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.bucket import Bucket, Flag
from services.forwarder import libbpf
from services.forwarder import packets as P
from services.forwarder.layout import MapBucket, Verdict, XdpAction, addr16
from services.forwarder.loader import Forwarder, PinError, Role
from tests.forwarder.conftest import TEST_DEFINES, require_root

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    name = f"psl{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(
        ["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1"], check=True
    )
    subprocess.run(["ip", "-n", name, "link", "set", "d0", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _bucket(fwd: Forwarder, tier: int, index: int) -> MapBucket:
    b = MapBucket()
    libbpf.map_lookup(fwd.maps["table_map"], ctypes.c_uint32(tier * fwd.buckets + index), b)
    return b


def test_table_diff_lands_in_the_map(edge_fwd: Forwarder) -> None:
    entry = Bucket(
        primary="10.0.1.1",
        secondary="fd07::1",
        inter_pop=True,
        away=True,
        secondary_pop=7,
        modified_at=1.0,
    )
    edge_fwd.apply_table_diff(2, {3: entry, 4: None})
    b = _bucket(edge_fwd, 2, 3)
    assert bytes(b.primary) == addr16(ia.ip_address("10.0.1.1"))
    assert bytes(b.secondary) == addr16(ia.ip_address("fd07::1"))
    assert b.flags == Flag.VALID | Flag.HAS_SECONDARY | Flag.INTER_POP | Flag.AWAY
    assert b.secondary_pop == 7
    assert _bucket(edge_fwd, 2, 4).flags == 0
    with pytest.raises(ValueError):
        edge_fwd.apply_table_diff(0, {edge_fwd.buckets: None})


def test_counters_per_tier_and_verdict(edge_fwd: Forwarder) -> None:
    edge_fwd.configure(P.EDGE_CFG)
    edge_fwd.load_state(P.state(Bucket(primary=P.SERVER4)))
    before = edge_fwd.read_counters()[0][Verdict.FWD_INTRA]
    frame = bytes(P.client())
    for _ in range(3):
        assert edge_fwd.test_run(frame)[0] == XdpAction.TX
    after = edge_fwd.read_counters()[0][Verdict.FWD_INTRA]
    assert after.packets - before.packets == 3
    assert after.bytes - before.bytes == 3 * len(frame)


def test_restarted_process_adopts_pinned_program_still_attached(netns: str) -> None:
    name = f"t_adopt_{uuid.uuid4().hex[:8]}"
    script = textwrap.dedent(f"""
        from services.forwarder.loader import Forwarder, Role
        f = Forwarder.open(Role.SERVER, {name!r}, defines={TEST_DEFINES!r})
        f.attach("d0", netns={netns!r})
        f.apply_table_diff(1, {{5: None}})
        print(f.adopted)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "False"
    fwd = Forwarder.open(Role.SERVER, name, defines=TEST_DEFINES)
    try:
        assert fwd.adopted
        assert fwd.attached_here("d0", netns=netns)
        assert fwd.buckets == 1 << TEST_DEFINES["BUCKET_BITS"]
        Forwarder.detach("d0", netns=netns)
        assert not fwd.attached_here("d0", netns=netns)
    finally:
        fwd.unpin()
        fwd.close()


def test_a_pin_of_another_role_or_layout_is_refused(edge_fwd: Forwarder) -> None:
    root, name = edge_fwd.pin_dir.parent, edge_fwd.pin_dir.name
    with pytest.raises(PinError, match="popshift_edge"):
        Forwarder.open(Role.SERVER, name, pin_root=root, defines=TEST_DEFINES)
    (edge_fwd.pin_dir / "peer_map").rename(edge_fwd.pin_dir / "peer_map_moved")
    try:
        with pytest.raises(PinError, match="no peer_map"):
            Forwarder.open(Role.EDGE, name, pin_root=root, defines=TEST_DEFINES)
    finally:
        (edge_fwd.pin_dir / "peer_map_moved").rename(edge_fwd.pin_dir / "peer_map")


def test_verifier_failure_carries_its_log(tmp_path: Path) -> None:
    require_root()
    src = tmp_path / "bad.bpf.c"
    src.write_text(
        textwrap.dedent("""
        #include <linux/bpf.h>
        #include <bpf/bpf_helpers.h>
        SEC("xdp") int bad(struct xdp_md *ctx) {
            unsigned char *p = (void *)(long)ctx->data;
            return p[100];  /* no bounds check */
        }
        char LICENSE[] SEC("license") = "GPL";
    """)
    )
    from services.forwarder.build import _arch_include

    obj = tmp_path / "bad.o"
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", *_arch_include(), "-c", str(src), "-o", str(obj)],
        check=True,
    )
    with pytest.raises(libbpf.BpfError) as err:
        libbpf.BpfObject(obj)
    assert "invalid access to packet" in err.value.log
    assert "invalid access to packet" in str(err.value)


def test_both_programs_load_on_this_kernel() -> None:
    """Default-size objects (2^16 buckets) pass the verifier."""
    require_root()
    from services.forwarder import build

    for name in ("edge", "server", "baseline"):
        libbpf.BpfObject(build.ensure(name)).close()
