"""C, Python, schemas/gue.md and schemas/redis-table.md agree on every size, offset and constant.

The C side is the headers themselves, compiled for the host by clang: no hand-copied numbers.
The Redis record (schemas/redis_table.h) is checked against codec.py's numpy dtype, and the flow
hash of hashing.h against the model's, so the oracle's hash is not taken on trust.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from schemas.bucket import Flag
from services.forwarder import layout
from services.forwarder.build import BPF_DIR
from services.forwarder.model import flow_hash
from services.table_writer import codec

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
STRUCTS = {
    "lpm_key": layout.LpmKey,
    "addr": layout.Addr,
    "vip_value": layout.VipValue,
    "tier_cfg": layout.TierCfg,
    "peer_value": layout.PeerValue,
    "bucket": layout.MapBucket,
    "config": layout.Config,
    "counter": layout.Counter,
    "gue_hdr": layout.GueHeader,
    "vip4_slot": layout.Vip4Slot,
    "bitmap16": layout.Bitmap16,
}
ENUMS = {
    "V_": layout.Verdict,
    "FLAG_": Flag,
    "TIER_": layout.TierFlag,
    "CFG_": layout.CfgFlag,
    "PEER_": layout.PeerKind,
    "VIP4_SLOT_": layout.Vip4SlotKind,
    "FILTER_": layout.FilterRow,
}
CONSTANTS = (
    "BUCKET_BITS",
    "TIERS",
    "GUE_PORT",
    "HASH_SEED",
    "MAX_HOPS",
    "OUTER_TTL",
    "GUE_PRIV_VERSION",
    "GUE_HLEN_WORDS",
    "GUE_LEN",
    "ENCAP_OVERHEAD_V4",
    "ENCAP_OVERHEAD_V6",
    "UDP_SPORT_BASE",
    "ICMP4_QUOTE",
    "ICMP6_QUOTE",
    "VERDICTS",
    "GUE_FLAGS_MASK",
    "VIP4_SLOT_BITS",
)
RECORDS: dict[str, np.dtype[np.void]] = {"table_record": codec.RECORD}
"""C structs mirrored by a numpy dtype rather than ctypes."""
PREFIX_FIELDS = ("magic", "format", "header_len")
HASH_KEYS = [bytes(range(40)), bytes(40), bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1]) * 7]


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Compile and run a host program printing every size, offset and constant as JSON."""
    clang = shutil.which("clang") or pytest.skip("clang not installed")
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <string.h>",
        "#define __always_inline inline",
        '#include "consts.h"',
        '#include "structs.h"',
        '#include "hashing.h"',
        '#include "redis_table.h"',
        "int main(void) {",
        "struct flow_key key;",
        'printf("{");',
    ]

    def emit(key: str, expr: str) -> None:
        lines.append(f'printf("\\"{key}\\": %lld, ", (long long)({expr}));')

    def emit_fields(name: str, fields: list[str]) -> None:
        emit(f"sizeof {name}", f"sizeof(struct {name})")
        for field in fields:
            emit(f"{name}.{field}", f"offsetof(struct {name}, {field})")
            emit(f"{name}.{field}.size", f"sizeof(((struct {name} *)0)->{field})")

    for name, cls in STRUCTS.items():
        emit_fields(name, [field for field, *_ in cls._fields_])
    for name, dtype in RECORDS.items():
        emit_fields(name, list(dtype.names or ()))
    emit_fields("table_prefix", list(PREFIX_FIELDS))
    for prefix, enum_cls in ENUMS.items():
        for member in enum_cls:
            emit(f"{prefix}{member.name}", f"{prefix}{member.name}")
    for const in (*CONSTANTS, "TABLE_FORMAT", "TABLE_NO_ADDRESS"):
        emit(const, const)
    emit(
        "TABLE_MAGIC",
        "TABLE_MAGIC[0] | TABLE_MAGIC[1] << 8 | TABLE_MAGIC[2] << 16 | "
        "(long long)TABLE_MAGIC[3] << 24",
    )
    for i, raw in enumerate(HASH_KEYS):
        literal = "".join(f"\\x{b:02x}" for b in raw)
        lines.append(f'memcpy(&key, "{literal}", sizeof(key));')
        emit(f"hash {i}", "flow_hash(&key)")
    lines += ['printf("\\"end\\": 0}");', "return 0; }"]
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "dump.c").write_text("\n".join(lines))
    include = ["-I", str(BPF_DIR), "-I", str(SCHEMAS)]
    subprocess.run([clang, *include, str(tmp / "dump.c"), "-o", str(tmp / "dump")], check=True)
    out = subprocess.run([str(tmp / "dump")], check=True, capture_output=True, text=True)
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("name", list(STRUCTS))
def test_struct_matches(c_layout: dict[str, int], name: str) -> None:
    cls = STRUCTS[name]
    assert ctypes.sizeof(cls) == c_layout[f"sizeof {name}"]
    for field, *_ in cls._fields_:
        desc = getattr(cls, field)
        assert (desc.offset, desc.size) == (
            c_layout[f"{name}.{field}"],
            c_layout[f"{name}.{field}.size"],
        ), field


def test_enums_and_constants_match(c_layout: dict[str, int]) -> None:
    for prefix, enum_cls in ENUMS.items():
        for member in enum_cls:
            assert member.value == c_layout[f"{prefix}{member.name}"], member
    for const in CONSTANTS:
        assert getattr(layout, const) == c_layout[const], const


def _doc_table(page: str, heading: str) -> list[tuple[int, int, str]]:
    """(offset, size, field) rows of the table under ``## heading`` of a schemas/ page."""
    text = (SCHEMAS / page).read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [
        (int(o), int(s), f)
        for o, s, f in re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \|", section, re.MULTILINE)
    ]


def test_gue_doc_matches_c_and_python(c_layout: dict[str, int]) -> None:
    rows = _doc_table("gue.md", "GUE header, byte by byte")
    fields = [f for f, *_ in layout.GueHeader._fields_]
    assert [f for _, _, f in rows] == fields
    for offset, size, field in rows:
        assert (offset, size) == (c_layout[f"gue_hdr.{field}"], c_layout[f"gue_hdr.{field}.size"])
    assert sum(size for _, size, _ in rows) == layout.GUE_STRUCT.size == layout.GUE_LEN


def test_gue_struct_format_and_ctypes_agree() -> None:
    """The model packs with GUE_STRUCT; the same bytes must read back through GueHeader."""
    from services.forwarder.model import Gue

    g = Gue(7, 41, 0, 1, 0x0D, 1, 2, 0x1234, 0xBEEF, 3, bytes(range(16)))
    h = layout.GueHeader.from_buffer_copy(g.pack())
    assert (h.ver_c_hlen, h.proto, h.priv_flags, h.hop_index, h.hop_count) == (7, 41, 0x0D, 1, 2)
    assert (h.landing_pop, h.secondary_pop, h.tier) == (0x1234, 0xBEEF, 3)
    assert bytes(h.secondary) == bytes(range(16))


def test_redis_record_matches_c_numpy_and_doc(c_layout: dict[str, int]) -> None:
    """codec.RECORD is struct table_record, and schemas/redis-table.md says so byte by byte."""
    rows = _doc_table("redis-table.md", "Record, byte by byte")
    assert [f for _, _, f in rows] == list(codec.RECORD.names or ())
    for offset, size, field in rows:
        dtype, numpy_offset = codec.RECORD.fields[field][:2]  # type: ignore[index]
        c = (c_layout[f"table_record.{field}"], c_layout[f"table_record.{field}.size"])
        assert (offset, size) == (numpy_offset, dtype.itemsize) == c, field
    assert codec.RECORD.itemsize == c_layout["sizeof table_record"] == 16
    assert (
        c_layout["TABLE_FORMAT"],
        c_layout["TABLE_NO_ADDRESS"],
    ) == (codec.FORMAT, codec.NO_ADDRESS)


def test_redis_prefix_matches_c_and_doc(c_layout: dict[str, int]) -> None:
    rows = _doc_table("redis-table.md", "Prefix")
    assert [f for _, _, f in rows] == list(PREFIX_FIELDS)
    for offset, size, field in rows:
        c = (c_layout[f"table_prefix.{field}"], c_layout[f"table_prefix.{field}.size"])
        assert (offset, size) == c, field
    assert codec.BLOB_PREFIX.size == c_layout["sizeof table_prefix"]
    assert int.from_bytes(codec.MAGIC, "little") == c_layout["TABLE_MAGIC"]
    packed = codec.BLOB_PREFIX.pack(codec.MAGIC, codec.FORMAT, 0x01020304)
    assert packed[6:10] == bytes([4, 3, 2, 1])  # little-endian, as the page says


def test_model_flow_hash_is_the_c_hash(c_layout: dict[str, int]) -> None:
    for i, raw in enumerate(HASH_KEYS):
        assert flow_hash(raw) == c_layout[f"hash {i}"] & 0xFFFFFFFF, i
