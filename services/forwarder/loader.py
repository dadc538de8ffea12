"""Load, pin, adopt, attach and feed the XDP programs: the thin adapter around the maps.

Pinned under /sys/fs/bpf/popshift/<name>/ (program `prog` plus one file per map), an attached
program keeps forwarding with its last table while this process restarts; `Forwarder.open`
adopts what is pinned instead of loading anew. Loading is crash-safe: pin into a temporary
directory, then rename it into place, under a lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from services.forwarder import build, libbpf
from services.forwarder.layout import (
    VERDICTS,
    Addr,
    Bucket,
    CfgFlag,
    Config,
    Counter,
    IpNetwork,
    LpmKey,
    PeerKind,
    PeerValue,
    TierCfg,
    TierFlag,
    Verdict,
    VipValue,
    XdpAction,
    addr16,
    lpm_key,
)
from services.forwarder.model import BucketEntry, NodeConfig, TableState

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/popshift")
LOCK_DIR = Path("/run/lock")
MAP_NAMES = (
    "config_map",
    "table_map",
    "tier_map",
    "vip_host_map",
    "vip_map",
    "blocklist_map",
    "peer_map",
    "counter_map",
)
CLONE_NEWNET = 0x40000000
R = TypeVar("R")


class Role(enum.StrEnum):
    EDGE = "edge"
    SERVER = "server"


PROGRAM_NAME = {Role.EDGE: "popshift_edge", Role.SERVER: "popshift_server"}


class Count(NamedTuple):
    packets: int
    bytes: int


def in_netns(netns: str | None, fn: Callable[[], R]) -> R:
    """Run fn in a network namespace (ip netns name) on a thread of its own.

    setns() moves only the calling thread, so the rest of the process stays where it was.
    """
    if netns is None:
        return fn()
    result: list[R] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    t = threading.Thread(target=run, name=f"netns-{netns}")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f"popshift-forwarder-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mount_bpffs(root: Path) -> None:
    """bpffs must be mounted under /sys/fs/bpf for pins (SPEC section 8)."""
    base = Path("/sys/fs/bpf")
    if not os.path.ismount(base):
        os.system("mount -t bpf bpf /sys/fs/bpf")
    root.mkdir(parents=True, exist_ok=True)


class Forwarder:
    """One pinned edge or server program and its maps."""

    def __init__(
        self,
        role: Role,
        name: str,
        prog_fd: int,
        maps: dict[str, int],
        pin_dir: Path,
        adopted: bool,
    ) -> None:
        self.role = role
        self.name = name
        self.prog_fd = prog_fd
        self.maps = maps
        self.pin_dir = pin_dir
        self.adopted = adopted
        self.tiers = libbpf.map_info(maps["tier_map"]).max_entries
        self.buckets = libbpf.map_info(maps["table_map"]).max_entries // self.tiers
        self._cpus = libbpf.possible_cpus()

    @classmethod
    def open(
        cls,
        role: Role,
        name: str,
        *,
        pin_root: Path = DEFAULT_PIN_ROOT,
        defines: Mapping[str, int] | None = None,
    ) -> Forwarder:
        """Adopt the pinned program `name`, or load, pin and return a new one."""
        _mount_bpffs(pin_root)
        pin_dir = pin_root / name
        with _locked(name):
            if (pin_dir / "prog").exists():
                prog = libbpf.obj_get(pin_dir / "prog")
                maps = {m: libbpf.obj_get(pin_dir / m) for m in MAP_NAMES}
                return cls(role, name, prog, maps, pin_dir, adopted=True)
            obj = libbpf.BpfObject(build.ensure(role.value, defines))
            try:
                prog = libbpf.dup(obj.program_fds()[PROGRAM_NAME[role]])
                maps = {m: libbpf.dup(fd) for m, fd in obj.map_fds().items()}
            finally:
                obj.close()
            tmp = pin_root / f"_tmp_{name}_{os.getpid()}"  # bpffs names may not contain dots
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            libbpf.obj_pin(prog, tmp / "prog")
            for m in MAP_NAMES:
                libbpf.obj_pin(maps[m], tmp / m)
            tmp.rename(pin_dir)
            return cls(role, name, prog, maps, pin_dir, adopted=False)

    def close(self) -> None:
        """Close our fds; pinned objects and attachments stay."""
        for fd in [self.prog_fd, *self.maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.maps = {}

    def unpin(self) -> None:
        """Remove the pins; the program lives on while attached or while fds are open."""
        shutil.rmtree(self.pin_dir, ignore_errors=True)

    # -- attachment ---------------------------------------------------------------------------

    def attach(self, ifname: str, netns: str | None = None, flags: int = 0) -> None:
        """Attach through netlink: the attachment survives this process."""
        in_netns(
            netns, lambda: libbpf.xdp_attach(socket.if_nametoindex(ifname), self.prog_fd, flags)
        )

    def attached_here(self, ifname: str, netns: str | None = None) -> bool:
        ours = libbpf.prog_id(self.prog_fd)
        return in_netns(netns, lambda: libbpf.xdp_query_id(socket.if_nametoindex(ifname))) == ours

    @staticmethod
    def detach(ifname: str, netns: str | None = None) -> None:
        in_netns(netns, lambda: libbpf.xdp_detach(socket.if_nametoindex(ifname)))

    # -- maps ---------------------------------------------------------------------------------

    def configure(self, cfg: NodeConfig) -> None:
        c = Config(pop_id=cfg.pop_id, mtu=cfg.mtu)
        c.self4[:] = addr16(cfg.self4)
        c.self6[:] = addr16(cfg.self6)
        c.nexthop_mac[:] = cfg.nexthop_mac
        c.flags = (CfgFlag.FIB if cfg.fib else 0) | (CfgFlag.SYNCOOKIES if cfg.syncookies else 0)
        libbpf.map_update(self.maps["config_map"], ctypes.c_uint32(0), c)

    def set_tier_hash(self, tier: int, addrs_only: bool) -> None:
        value = TierCfg(flags=TierFlag.HASH_ADDRS if addrs_only else 0)
        libbpf.map_update(self.maps["tier_map"], ctypes.c_uint32(tier), value)

    def _replace_lpm(self, name: str, entries: Mapping[IpNetwork, Any]) -> None:
        """Make an LPM map hold exactly `entries`: add or update first, then delete the rest."""
        fd = self.maps[name]
        wanted = {bytes(lpm_key(net)): value for net, value in entries.items()}
        for raw, value in wanted.items():
            libbpf.map_update(fd, LpmKey.from_buffer_copy(raw), value)
        for raw in libbpf.map_keys(fd, LpmKey):
            if raw not in wanted:
                libbpf.map_delete(fd, LpmKey.from_buffer_copy(raw))

    def set_vips(self, vips: Mapping[IpNetwork, int]) -> None:
        """Host VIPs go to the exact-match map (the fast path), prefixes to the trie."""
        host = {n: t for n, t in vips.items() if n.prefixlen == n.max_prefixlen}
        prefixes = {n: VipValue(tier=t) for n, t in vips.items() if n not in host}
        self._replace_lpm("vip_map", prefixes)
        fd = self.maps["vip_host_map"]
        wanted = {addr16(n.network_address): t for n, t in host.items()}
        for raw, tier in wanted.items():
            libbpf.map_update(fd, Addr.from_buffer_copy(raw), VipValue(tier=tier))
        for raw in libbpf.map_keys(fd, Addr):
            if raw not in wanted:
                libbpf.map_delete(fd, Addr.from_buffer_copy(raw))

    def set_blocklist(self, prefixes: set[IpNetwork] | frozenset[IpNetwork]) -> None:
        self._replace_lpm("blocklist_map", {n: ctypes.c_uint32(1) for n in prefixes})

    def set_peers(self, peers: Mapping[IpNetwork, tuple[PeerKind, int]]) -> None:
        self._replace_lpm(
            "peer_map", {n: PeerValue(kind=k, pop_id=pop) for n, (k, pop) in peers.items()}
        )

    def apply_table_diff(self, tier: int, diff: Mapping[int, Any]) -> None:
        """Write changed buckets of one tier in one batch; None clears a bucket.

        Entries are BucketEntry or anything with the table writer's fields (TableEntry).
        """
        if not diff:
            return
        if not 0 <= tier < self.tiers:
            raise ValueError(f"tier {tier} outside 0..{self.tiers - 1}")
        keys = (ctypes.c_uint32 * len(diff))()
        values = (Bucket * len(diff))()
        for i, (index, entry) in enumerate(sorted(diff.items())):
            if not 0 <= index < self.buckets:
                raise ValueError(f"bucket {index} outside 0..{self.buckets - 1}")
            keys[i] = tier * self.buckets + index
            if entry is not None:
                e = entry if isinstance(entry, BucketEntry) else BucketEntry.from_fields(entry)
                values[i].primary[:] = addr16(e.primary)
                values[i].secondary[:] = addr16(e.secondary)
                values[i].secondary_pop = e.secondary_pop
                values[i].flags = e.flags
        libbpf.map_update_batch(self.maps["table_map"], keys, values)

    def load_state(self, st: TableState) -> None:
        """Make every map but the config equal to a model state (tests, cold start)."""
        self.set_vips(st.vips)
        self.set_blocklist(st.blocklist)
        self.set_peers(st.peers)
        for tier in range(self.tiers):
            self.set_tier_hash(tier, bool(st.tier_flags.get(tier, 0) & TierFlag.HASH_ADDRS))
            self.apply_table_diff(tier, {i: st.table.get((tier, i)) for i in range(self.buckets)})

    def read_counters(self) -> dict[int | None, dict[Verdict, Count]]:
        """Per tier (None = no tier known) and verdict, summed over CPUs."""
        per_cpu = (Counter * self._cpus)()
        out: dict[int | None, dict[Verdict, Count]] = {}
        for row in range(self.tiers + 1):
            tier = row if row < self.tiers else None
            out[tier] = {}
            for v in Verdict:
                key = ctypes.c_uint32(row * VERDICTS + v)
                libbpf.map_lookup(self.maps["counter_map"], key, per_cpu)
                out[tier][v] = Count(sum(c.packets for c in per_cpu), sum(c.bytes for c in per_cpu))
        return out

    def test_run(self, packet: bytes) -> tuple[XdpAction, bytes]:
        """BPF_PROG_TEST_RUN once: the action and the frame as the program left it."""
        action, out, _ = libbpf.test_run(self.prog_fd, packet)
        return XdpAction(action), out
