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

import numpy as np
import pytest

from schemas.bucket import Bucket, Flag
from services.forwarder import libbpf, loader
from services.forwarder import packets as P
from services.forwarder.layout import MapBucket, Verdict, XdpAction, addr16
from services.forwarder.loader import Forwarder, PinError, Role, bucket_array, table_names
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
    return MapBucket.from_buffer_copy(fwd.read_table(tier)[index].tobytes())


def _tables(fwd: Forwarder, tier: int) -> tuple[bytes, bytes]:
    """Both pinned tables of a tier, whichever is in force."""
    a, b = table_names(fwd.tiers)[tier]
    return (
        loader._read_rows(fwd.maps[a]).tobytes(),
        loader._read_rows(fwd.maps[b]).tobytes(),
    )


def _in_force(fwd: Forwarder, tier: int) -> int:
    map_id = ctypes.c_uint32()
    libbpf.map_lookup(fwd.maps["table_map"], ctypes.c_uint32(tier), map_id)
    return int(map_id.value)


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


def test_a_write_swaps_tables_and_leaves_both_equal(edge_fwd: Forwarder) -> None:
    """The table in force is never written: a write lands in the other one, which is swapped
    in, then repeated on the old one."""
    edge_fwd.apply_table_diff(3, {1: Bucket(primary="10.0.1.1")})
    before = _in_force(edge_fwd, 3)
    edge_fwd.apply_table_diff(3, {1: Bucket(primary="10.0.1.2"), 2: Bucket(primary="10.0.1.3")})
    assert _in_force(edge_fwd, 3) != before
    a, b = _tables(edge_fwd, 3)
    assert a == b == edge_fwd.read_table(3).tobytes()
    assert bytes(_bucket(edge_fwd, 3, 1).primary) == addr16("10.0.1.2")


def test_a_write_cut_short_is_healed_by_the_next(edge_fwd: Forwarder) -> None:
    """A writer that died between its two writes leaves the tier dirty: the next write first
    copies the table in force over the other, so no stale bucket is ever swapped in."""
    edge_fwd.apply_table_diff(3, {5: Bucket(primary="10.0.2.1")})
    held = edge_fwd.read_table(3)[6].tobytes()
    in_force = edge_fwd._tables[3][edge_fwd._active(3)]
    spare = edge_fwd._tables[3][1 - edge_fwd._active(3)]
    stale = bucket_array([Bucket(primary="10.9.9.9")])
    loader._write_rows(spare, np.array([6], dtype=np.uint32), stale)  # as if cut short
    edge_fwd._set_dirty(3, True)
    edge_fwd.apply_table_diff(3, {7: Bucket(primary="10.0.2.2")})
    table = edge_fwd.read_table(3)
    assert table[6].tobytes() == held
    assert bytes(table[7]["primary"]) == addr16("10.0.2.2")
    assert len(set(_tables(edge_fwd, 3))) == 1
    assert not edge_fwd._dirty(3)
    assert in_force != edge_fwd._tables[3][edge_fwd._active(3)]


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
    (edge_fwd.pin_dir / "table_0_1").rename(edge_fwd.pin_dir / "table_0_1_moved")
    try:
        with pytest.raises(PinError, match="tables in place"):
            Forwarder.open(Role.EDGE, name, pin_root=root, defines=TEST_DEFINES)
    finally:
        (edge_fwd.pin_dir / "table_0_1_moved").rename(edge_fwd.pin_dir / "table_0_1")


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
