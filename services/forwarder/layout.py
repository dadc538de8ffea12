"""Python mirror of bpf/consts.h and bpf/structs.h: the one place Python learns C layouts.

The bucket flags (enum popshift_flags) are :class:`schemas.bucket.Flag`, shared with Redis.

tests/forwarder/test_layout.py compiles the C headers on the host and proves that every size,
offset and enum value here matches, so a change on one side cannot silently drift.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import struct

import numpy as np

# Defaults of the compile-time constants (bpf/consts.h). The loader reads the real table
# geometry from the loaded maps, so an object built with -DBUCKET_BITS=8 works too.
BUCKET_BITS = 16
TIERS = 4
GUE_PORT = 6080
HASH_SEED = 0x5EED1E55
MAX_HOPS = 2
OUTER_TTL = 64
GUE_PRIV_VERSION = 1
GUE_HLEN_WORDS = 7
GUE_LEN = 4 + 4 * GUE_HLEN_WORDS
ENCAP_OVERHEAD_V4 = 20 + 8 + GUE_LEN
ENCAP_OVERHEAD_V6 = 40 + 8 + GUE_LEN
UDP_SPORT_BASE = 0xC000
VIP4_SLOT_BITS = 12
ICMP4_QUOTE = 28
ICMP6_QUOTE = 48

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


GUE_FLAGS_MASK = 0x0F
"""The bits of :class:`schemas.bucket.Flag` a GUE header may carry."""


class TierFlag(enum.IntFlag):
    HASH_ADDRS = 0x01


class CfgFlag(enum.IntFlag):
    FIB = 0x01
    SYNCOOKIES = 0x02


class PeerKind(enum.IntEnum):
    LOCAL = 1
    REMOTE = 2


class Verdict(enum.IntEnum):
    """enum popshift_verdict: exactly one per packet, counted per tier."""

    LOCAL = 0
    FWD_INTRA = 1
    FWD_INTER = 2
    SECOND_CHANCE = 3
    RECEIVED_PEER = 4
    LOCAL_HOPS_EXHAUSTED = 5
    LOCAL_SELF_SECONDARY = 6
    PASS_NOT_OURS = 7
    PASS_UNSUPPORTED = 8
    PASS_FIB_MISS = 9
    TOO_BIG_ICMP = 10
    DROP_TOO_BIG = 11
    DROP_BLOCKLIST = 12
    DROP_MALFORMED = 13
    DROP_GUE_UNKNOWN_SRC = 14
    DROP_GUE_BAD = 15
    DROP_NO_BUCKET = 16
    DROP_ERROR = 17
    SECOND_CHANCE_INTER = 18


VERDICTS = len(Verdict)


class Vip4SlotKind(enum.IntEnum):
    """enum popshift_vip4_slot_kind: one slot of the direct-mapped IPv4 host-VIP array."""

    EMPTY = 0
    ONE = 1
    MANY = 2


class FilterRow(enum.IntEnum):
    """enum popshift_filter_row: the rows of the blocklist prefilter."""

    V4 = 0
    V6 = 1


class XdpAction(enum.IntEnum):
    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


Addr16 = ctypes.c_uint8 * 16


class Addr(ctypes.Structure):
    _fields_ = [("addr", Addr16)]


class LpmKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", Addr16)]


class VipValue(ctypes.Structure):
    _fields_ = [("tier", ctypes.c_uint32)]


class Vip4Slot(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint8 * 4),  # network order, as on the wire
        ("kind", ctypes.c_uint32),
        ("value", VipValue),
    ]


class Bitmap16(ctypes.Structure):
    """2^16 bits; bit i is bit i % 64 of words[i // 64]."""

    _fields_ = [("words", ctypes.c_uint64 * 1024)]


class TierCfg(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32)]


class PeerValue(ctypes.Structure):
    _fields_ = [
        ("pop_id", ctypes.c_uint16),
        ("kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class MapBucket(ctypes.Structure):
    """struct bucket: one element of the table map (the Python type is schemas.bucket.Bucket)."""

    _fields_ = [
        ("primary", Addr16),
        ("secondary", Addr16),
        ("secondary_pop", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
    ]


BUCKET_DTYPE = np.dtype(MapBucket)
"""struct bucket as a numpy structured dtype: an array of it is the table map's exact bytes."""


class Config(ctypes.Structure):
    _fields_ = [
        ("self4", Addr16),
        ("self6", Addr16),
        ("nexthop_mac", ctypes.c_uint8 * 6),
        ("pop_id", ctypes.c_uint16),
        ("mtu", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
    ]


class Counter(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class GueHeader(ctypes.BigEndianStructure):
    """struct gue_hdr; multi-byte fields are big-endian on the wire (schemas/gue.md)."""

    _fields_ = [
        ("ver_c_hlen", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("priv_version", ctypes.c_uint8),
        ("priv_flags", ctypes.c_uint8),
        ("hop_index", ctypes.c_uint8),
        ("hop_count", ctypes.c_uint8),
        ("landing_pop", ctypes.c_uint16),
        ("secondary_pop", ctypes.c_uint16),
        ("tier", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 3),
        ("secondary", Addr16),
    ]


GUE_STRUCT = struct.Struct("!BBHBBBBHHB3x16s")
"""The same GUE header as a struct format: what the model packs and unpacks."""


def addr16(addr: IpAddress | str | None) -> bytes:
    """16-byte form used in every map and in the GUE header: IPv4 is IPv4-mapped."""
    if addr is None:
        return bytes(16)
    if isinstance(addr, str):
        addr = ipaddress.ip_address(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


def lpm_key(net: IpNetwork) -> LpmKey:
    """LPM key of a prefix; IPv4 prefixes live under ::ffff:0:0/96."""
    extra = 96 if net.version == 4 else 0
    key = LpmKey(prefixlen=net.prefixlen + extra)
    key.addr[:] = addr16(net.network_address)
    return key
