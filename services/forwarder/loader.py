"""Load, pin, adopt, attach and feed the XDP programs: the thin adapter around the maps.

Pinned under /sys/fs/bpf/popshift/<name>/ (program `prog` plus one file per map), an attached
program keeps forwarding with its last table while this process restarts; `Forwarder.open`
adopts what is pinned instead of loading anew. Loading is crash-safe: pin into a temporary
directory, then rename it into place, under a lock.

Tables are swapped whole (docs/forwarding-tables.md): each tier has two inner maps, pinned as
``table_<tier>_0`` and ``table_<tier>_1``; ``table_map`` points at the one in force. A write goes
to the other, which is then swapped in (the kernel returns from that update only when no
program still runs on the old one), and is then repeated on the old one, so both hold the same
table again. ``table_dirty`` marks a tier whose two tables may differ (a writer died between the
two writes); the next write copies the table in force over the other first.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import fcntl
import ipaddress
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from schemas.bucket import Bucket
from services.forwarder import build, libbpf
from services.forwarder.layout import (
    BUCKET_DTYPE,
    VERDICTS,
    Addr,
    Bitmap16,
    CfgFlag,
    Config,
    Counter,
    FilterRow,
    IpNetwork,
    LpmKey,
    MapBucket,
    PeerKind,
    PeerValue,
    TierCfg,
    TierFlag,
    Verdict,
    Vip4Slot,
    Vip4SlotKind,
    VipValue,
    XdpAction,
    addr16,
    lpm_key,
)
from services.forwarder.types import NodeConfig, TableState

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/popshift")
LOCK_DIR = Path("/run/lock")
MAP_NAMES = (
    "config_map",
    "table_map",
    "tier_map",
    "vip_host_map",
    "vip_map",
    "vip4_slot_map",
    "blocklist_map",
    "blocklist_filter_map",
    "peer_map",
    "counter_map",
)
DIRTY_MAP = "table_dirty"
CLONE_NEWNET = 0x40000000
R = TypeVar("R")


Buckets = npt.NDArray[Any]
"""Buckets exactly as the table map holds them: a numpy array of dtype BUCKET_DTYPE."""
VIP4_SLOT_DTYPE = np.dtype(Vip4Slot)
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _mapped(net: IpNetwork) -> ipaddress.IPv6Network:
    """The prefix as the trie sees it: IPv4 under ::ffff:0:0/96."""
    if isinstance(net, ipaddress.IPv4Network):
        return ipaddress.IPv6Network(
            (int(_MAPPED_V4.network_address) | int(net.network_address), 96 + net.prefixlen)
        )
    return net


def _cover(row: npt.NDArray[np.bool_], selector: int, prefixlen: int) -> None:
    """Mark the 16-bit selectors an address prefix of `prefixlen` bits (within them) covers."""
    if prefixlen >= 16:
        row[selector] = True
        return
    span = 1 << (16 - prefixlen)
    start = selector & ~(span - 1) & 0xFFFF
    row[start : start + span] = True


def blocklist_filter(prefixes: Iterable[IpNetwork]) -> npt.NDArray[np.uint8]:
    """The prefilter rows (FilterRow.V4, FilterRow.V6) as Bitmap16 bytes, shape (2, 8192).

    Conservative by construction: a bit is clear only when no prefix can match an address with
    that selector, so a clear bit never hides a trie match (the C side skips the trie on it).
    """
    bits = np.zeros((len(FilterRow), 1 << 16), dtype=np.bool_)
    for net in prefixes:
        m = _mapped(net)
        a, plen = int(m.network_address), m.prefixlen
        _cover(bits[FilterRow.V6], a >> 112, plen)
        if plen <= 96:
            if _MAPPED_V4.subnet_of(m):
                bits[FilterRow.V4, :] = True
        elif m.subnet_of(_MAPPED_V4):
            _cover(bits[FilterRow.V4], (a >> 16) & 0xFFFF, plen - 96)
    return np.packbits(bits, axis=1, bitorder="little")


def vip4_slots(hosts: Mapping[bytes, int], slots: int) -> npt.NDArray[Any]:
    """The direct-mapped IPv4 host-VIP array for host VIPs {16-byte address: tier}."""
    out = np.zeros(slots, dtype=VIP4_SLOT_DTYPE)
    for raw, tier in hosts.items():
        if raw[:12] != _MAPPED_PREFIX:
            continue
        i = int.from_bytes(raw[12:], "big") & (slots - 1)
        if out["kind"][i] == Vip4SlotKind.EMPTY:
            out["addr"][i] = np.frombuffer(raw[12:], np.uint8)
            out["kind"][i] = Vip4SlotKind.ONE
            out["value"][i] = tier
        else:
            out[i] = np.zeros(1, dtype=VIP4_SLOT_DTYPE)[0]
            out["kind"][i] = Vip4SlotKind.MANY
    return out


def table_names(tiers: int) -> list[tuple[str, str]]:
    """Pin names of each tier's two tables."""
    return [(f"table_{t}_0", f"table_{t}_1") for t in range(tiers)]


def changed(held: Buckets, wanted: Buckets) -> npt.NDArray[np.intp]:
    """Indices of the buckets whose bytes differ (compared as 64-bit words)."""
    words = BUCKET_DTYPE.itemsize // 8
    a = held.view(np.uint64).reshape(-1, words)
    b = wanted.view(np.uint64).reshape(-1, words)
    return np.flatnonzero((a != b).any(axis=1))


def _bucket_bytes(b: Bucket) -> bytes:
    row = MapBucket(secondary_pop=b.secondary_pop, flags=b.flags)
    row.primary[:] = addr16(b.primary)
    row.secondary[:] = addr16(b.secondary)
    return bytes(row)


def bucket_array(buckets: Iterable[Bucket | None]) -> Buckets:
    """Buckets (None = cleared) as the map's bytes, dtype BUCKET_DTYPE.

    Each distinct bucket is converted once: a table has few (its servers times the
    secondaries), so the cost is a dict lookup per bucket. ``modified_at`` is not in the map.
    """
    rows: dict[tuple[str, str | None, int, int], int] = {}
    raw: list[bytes] = [bytes(BUCKET_DTYPE.itemsize)]
    index: list[int] = []
    for b in buckets:
        if b is None:
            index.append(0)
            continue
        key = (b.primary, b.secondary, b.secondary_pop, b.flags)
        row = rows.get(key)
        if row is None:
            row = rows[key] = len(raw)
            raw.append(_bucket_bytes(b))
        index.append(row)
    uniq = np.frombuffer(b"".join(raw), dtype=BUCKET_DTYPE)
    return uniq[np.asarray(index, dtype=np.intp)]


def _new_tables(maps: Mapping[str, int], buckets: int) -> dict[str, int]:
    """Two empty tables per tier, the first in force, and the all-clean dirty map."""
    tiers = libbpf.map_info(maps["tier_map"]).max_entries
    out = {DIRTY_MAP: libbpf.map_create(libbpf.MAP_TYPE_ARRAY, DIRTY_MAP, 4, 4, tiers)}
    for tier, names in enumerate(table_names(tiers)):
        for n in names:
            out[n] = libbpf.map_create(libbpf.MAP_TYPE_ARRAY, n, 4, BUCKET_DTYPE.itemsize, buckets)
        libbpf.map_update(maps["table_map"], ctypes.c_uint32(tier), ctypes.c_uint32(out[names[0]]))
    return out


def _write_rows(fd: int, keys: Any, values: Buckets, batch_size: int = 1 << 20) -> None:
    """BPF_MAP_UPDATE_BATCH of one table in calls of at most `batch_size` rows."""
    for start in range(0, len(keys), batch_size):
        k, v = keys[start : start + batch_size], values[start : start + batch_size]
        libbpf.map_update_batch_ptr(fd, k.ctypes.data, v.ctypes.data, len(k))


def _read_rows(fd: int) -> Buckets:
    """Every row of one table (BPF_MAP_LOOKUP_BATCH), in key order."""
    n = libbpf.map_info(fd).max_entries
    out = np.zeros(n, dtype=BUCKET_DTYPE)
    keys = np.zeros(n, dtype=np.uint32)
    done = 0
    while done < n:
        got, _ = libbpf.map_lookup_batch_ptr(
            fd,
            done - 1 if done else None,
            keys[done:].ctypes.data,
            out[done:].ctypes.data,
            n - done,
        )
        if got <= 0:
            raise libbpf.BpfError("map lookup batch", 61)  # ENODATA: the map ended early
        done += got
    if not np.array_equal(keys, np.arange(n, dtype=np.uint32)):
        raise libbpf.BpfError("map lookup batch", 74)  # EBADMSG: keys out of order
    return out


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


class PinError(RuntimeError):
    """A pinned program this forwarder must not adopt: another role, or an older layout."""


class BpffsError(RuntimeError):
    """bpffs is not mounted and could not be mounted, so nothing can be pinned."""


def _mount_bpffs(root: Path) -> None:
    """Pins need bpffs at /sys/fs/bpf (docs/packet-path.md, kernel notes)."""
    base = Path("/sys/fs/bpf")
    if not os.path.ismount(base):
        try:
            subprocess.run(
                ["mount", "-t", "bpf", "bpf", str(base)], check=True, capture_output=True, text=True
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            why = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
            raise BpffsError(f"bpffs is not mounted at {base}; mounting it failed: {why}") from exc
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
        self._tables = [(maps[a], maps[b]) for a, b in table_names(self.tiers)]
        self._table_ids = [tuple(libbpf.map_info(fd).id for fd in t) for t in self._tables]
        self.buckets = libbpf.map_info(self._tables[0][0]).max_entries
        self.vip4_slots = libbpf.map_info(maps["vip4_slot_map"]).max_entries
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
                return cls._adopt(role, name, pin_dir)
            obj = libbpf.BpfObject(build.ensure(role.value, defines))
            try:
                prog = libbpf.dup(obj.program_fds()[PROGRAM_NAME[role]])
                maps = {m: libbpf.dup(fd) for m, fd in obj.map_fds().items()}
                buckets = obj.inner_entries["table_map"]
            finally:
                obj.close()
            maps |= _new_tables(maps, buckets)
            tmp = pin_root / f"_tmp_{name}_{os.getpid()}"  # bpffs names may not contain dots
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            libbpf.obj_pin(prog, tmp / "prog")
            for m in maps:
                libbpf.obj_pin(maps[m], tmp / m)
            tmp.rename(pin_dir)
            return cls(role, name, prog, maps, pin_dir, adopted=False)

    @classmethod
    def _adopt(cls, role: Role, name: str, pin_dir: Path) -> Forwarder:
        """The pinned program and maps, if they are this role's and this layout's."""
        missing = [m for m in MAP_NAMES if not (pin_dir / m).exists()]
        if missing:
            raise PinError(
                f"{pin_dir} was pinned by an older forwarder (no {', '.join(missing)}): "
                "detach, unpin and open again"
            )
        prog = libbpf.obj_get(pin_dir / "prog")
        pinned = libbpf.prog_name(prog)
        if pinned != PROGRAM_NAME[role]:
            os.close(prog)
            raise PinError(f"{pin_dir} holds {pinned!r}, not the {role} program")
        maps = {m: libbpf.obj_get(pin_dir / m) for m in MAP_NAMES}
        tiers = libbpf.map_info(maps["tier_map"]).max_entries
        tables = [DIRTY_MAP, *(n for pair in table_names(tiers) for n in pair)]
        kind = libbpf.map_info(maps["table_map"]).type
        if kind != libbpf.MAP_TYPE_ARRAY_OF_MAPS or not all((pin_dir / m).exists() for m in tables):
            for fd in [prog, *maps.values()]:
                os.close(fd)
            raise PinError(
                f"{pin_dir} was pinned by a forwarder that wrote its tables in place: "
                "detach, unpin and open again"
            )
        maps |= {m: libbpf.obj_get(pin_dir / m) for m in tables}
        fwd = cls(role, name, prog, maps, pin_dir, adopted=True)
        rows = libbpf.map_info(maps["counter_map"]).max_entries
        expected = (fwd.tiers + 1) * VERDICTS
        if rows != expected:
            fwd.close()
            raise PinError(
                f"{pin_dir} was pinned by a forwarder with other verdicts ({rows} counter "
                f"rows, expected {expected}): detach, unpin and open again"
            )
        return fwd

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
        """Host VIPs go to the exact-match map (the fast path), prefixes to the trie; IPv4 host
        VIPs also to their direct-mapped slots, written after the host map gains its new keys
        and before it loses the old ones, so a slot never points at a VIP the map lacks.
        """
        host = {n: t for n, t in vips.items() if n.prefixlen == n.max_prefixlen}
        prefixes = {n: VipValue(tier=t) for n, t in vips.items() if n not in host}
        self._replace_lpm("vip_map", prefixes)
        fd = self.maps["vip_host_map"]
        wanted = {addr16(n.network_address): t for n, t in host.items()}
        for raw, tier in wanted.items():
            libbpf.map_update(fd, Addr.from_buffer_copy(raw), VipValue(tier=tier))
        slots = vip4_slots(wanted, self.vip4_slots)
        keys = np.arange(self.vip4_slots, dtype=np.uint32)
        libbpf.map_update_batch_ptr(
            self.maps["vip4_slot_map"], keys.ctypes.data, slots.ctypes.data, len(keys)
        )
        for raw in libbpf.map_keys(fd, Addr):
            if raw not in wanted:
                libbpf.map_delete(fd, Addr.from_buffer_copy(raw))

    def _filter(self) -> npt.NDArray[np.uint8]:
        rows = np.zeros((len(FilterRow), ctypes.sizeof(Bitmap16)), dtype=np.uint8)
        for row in FilterRow:
            value = Bitmap16.from_buffer(rows[row])
            libbpf.map_lookup(self.maps["blocklist_filter_map"], ctypes.c_uint32(row), value)
        return rows

    def _write_filter(self, rows: npt.NDArray[np.uint8]) -> None:
        rows = np.ascontiguousarray(rows)
        keys = np.arange(len(FilterRow), dtype=np.uint32)
        libbpf.map_update_batch_ptr(
            self.maps["blocklist_filter_map"], keys.ctypes.data, rows.ctypes.data, len(keys)
        )

    def set_blocklist(self, prefixes: set[IpNetwork] | frozenset[IpNetwork]) -> None:
        """The trie holds exactly `prefixes`; the prefilter covers the old and the new list
        while the trie changes, then exactly the new one.
        """
        new = blocklist_filter(prefixes)
        self._write_filter(new | self._filter())
        self._replace_lpm("blocklist_map", {n: ctypes.c_uint32(1) for n in prefixes})
        self._write_filter(new)

    def set_peers(self, peers: Mapping[IpNetwork, tuple[PeerKind, int]]) -> None:
        self._replace_lpm(
            "peer_map", {n: PeerValue(kind=k, pop_id=pop) for n, (k, pop) in peers.items()}
        )

    def apply_table_diff(self, tier: int, diff: Mapping[int, Bucket | None]) -> None:
        """Write changed buckets of one tier in one batch; None clears a bucket.

        Each distinct bucket is converted once (:func:`bucket_array`); the rest is numpy and one
        BPF_MAP_UPDATE_BATCH. Callers holding map images should use :meth:`write_buckets`.
        """
        if not diff:
            return
        self._check_tier(tier)
        indices = np.fromiter(diff.keys(), dtype=np.int64, count=len(diff))
        self.write_buckets(tier, indices, bucket_array(diff.values()))

    def _check_tier(self, tier: int) -> None:
        if not 0 <= tier < self.tiers:
            raise ValueError(f"tier {tier} outside 0..{self.tiers - 1}")

    def write_buckets(
        self,
        tier: int,
        indices: npt.ArrayLike,
        buckets: Buckets,
        batch_size: int = 1 << 20,
    ) -> None:
        """The fast path: bucket `indices[k]` of `tier` := `buckets[k]` (dtype BUCKET_DTYPE,
        e.g. rows of a map image), straight from the numpy buffers in BPF_MAP_UPDATE_BATCH
        calls of at most `batch_size`. A packet sees the table before or after the whole call,
        never a mix (the module docstring says how). Nothing is written when an index or the
        tier is out of range.
        """
        self._check_tier(tier)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        values = np.ascontiguousarray(buckets).reshape(-1)
        if values.dtype.itemsize != BUCKET_DTYPE.itemsize or len(values) != len(idx):
            raise ValueError(f"{len(idx)} indices need {len(idx)} buckets of {BUCKET_DTYPE}")
        if not len(idx):
            return
        if idx.min() < 0 or idx.max() >= self.buckets:
            bad = idx[(idx < 0) | (idx >= self.buckets)][0]
            raise ValueError(f"bucket {bad} outside 0..{self.buckets - 1}")
        keys = idx.astype(np.uint32)
        with _locked(self.name):
            active = self._active(tier)
            in_force, spare = self._tables[tier][active], self._tables[tier][1 - active]
            if self._dirty(tier):
                _write_rows(spare, np.arange(self.buckets, dtype=np.uint32), _read_rows(in_force))
            self._set_dirty(tier, True)
            _write_rows(spare, keys, values, batch_size)
            libbpf.map_update(self.maps["table_map"], ctypes.c_uint32(tier), ctypes.c_uint32(spare))
            _write_rows(in_force, keys, values, batch_size)
            self._set_dirty(tier, False)

    def write_table(self, tier: int, image: Buckets) -> int:
        """Make the tier's table equal to `image`, writing only the buckets that differ (none:
        no swap); returns how many were written."""
        idx = changed(self.read_table(tier), image)
        self.write_buckets(tier, idx, image[idx])
        return len(idx)

    def read_table(self, tier: int) -> Buckets:
        """All buckets of the tier's table in force (BPF_MAP_LOOKUP_BATCH, a few ms)."""
        self._check_tier(tier)
        return _read_rows(self._tables[tier][self._active(tier)])

    def _active(self, tier: int) -> int:
        """Which of the tier's two tables is in force (0 or 1)."""
        map_id = ctypes.c_uint32()
        libbpf.map_lookup(self.maps["table_map"], ctypes.c_uint32(tier), map_id)
        try:
            return self._table_ids[tier].index(map_id.value)
        except ValueError:
            raise PinError(f"{self.pin_dir}: tier {tier} forwards by a table not pinned") from None

    def _dirty(self, tier: int) -> bool:
        flag = ctypes.c_uint32()
        libbpf.map_lookup(self.maps[DIRTY_MAP], ctypes.c_uint32(tier), flag)
        return bool(flag.value)

    def _set_dirty(self, tier: int, dirty: bool) -> None:
        libbpf.map_update(self.maps[DIRTY_MAP], ctypes.c_uint32(tier), ctypes.c_uint32(dirty))

    def load_state(self, st: TableState) -> None:
        """Make every map but the config equal to a model state (tests, cold start)."""
        self.set_vips(st.vips)
        self.set_blocklist(st.blocklist)
        self.set_peers(st.peers)
        for tier in range(self.tiers):
            self.set_tier_hash(tier, bool(st.tier_flags.get(tier, 0) & TierFlag.HASH_ADDRS))
            self.write_table(
                tier, bucket_array(st.table.get((tier, i)) for i in range(self.buckets))
            )

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
