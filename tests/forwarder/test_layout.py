"""C, Python and schemas/gue.md agree on every size, offset and constant.

The C side is the headers themselves, compiled for the host by clang: no hand-copied numbers.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.forwarder import layout
from services.forwarder.build import BPF_DIR

REPO = Path(__file__).resolve().parents[2]
STRUCTS = {
    "lpm_key": layout.LpmKey,
    "addr": layout.Addr,
    "vip_value": layout.VipValue,
    "tier_cfg": layout.TierCfg,
    "peer_value": layout.PeerValue,
    "bucket": layout.Bucket,
    "config": layout.Config,
    "counter": layout.Counter,
    "gue_hdr": layout.GueHeader,
    "vip4_slot": layout.Vip4Slot,
    "bitmap16": layout.Bitmap16,
}
ENUMS = {
    "V_": layout.Verdict,
    "FLAG_": layout.Flag,
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


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Compile and run a host program printing every size, offset and constant as JSON."""
    clang = shutil.which("clang") or pytest.skip("clang not installed")
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        '#include "consts.h"',
        '#include "structs.h"',
        "int main(void) {",
        'printf("{");',
    ]

    def emit(key: str, expr: str) -> None:
        lines.append(f'printf("\\"{key}\\": %lld, ", (long long)({expr}));')

    for name, cls in STRUCTS.items():
        emit(f"sizeof {name}", f"sizeof(struct {name})")
        for field, *_ in cls._fields_:
            emit(f"{name}.{field}", f"offsetof(struct {name}, {field})")
            emit(f"{name}.{field}.size", f"sizeof(((struct {name} *)0)->{field})")
    for prefix, enum_cls in ENUMS.items():
        for member in enum_cls:
            emit(f"{prefix}{member.name}", f"{prefix}{member.name}")
    for const in CONSTANTS:
        emit(const, const)
    lines += ['printf("\\"end\\": 0}");', "return 0; }"]
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "dump.c").write_text("\n".join(lines))
    subprocess.run(
        [clang, "-I", str(BPF_DIR), str(tmp / "dump.c"), "-o", str(tmp / "dump")], check=True
    )
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


def _doc_table() -> list[tuple[int, int, str]]:
    text = (REPO / "schemas" / "gue.md").read_text()
    section = text.split("## GUE header, byte by byte", 1)[1].split("\n## ", 1)[0]
    return [
        (int(o), int(s), f)
        for o, s, f in re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \|", section, re.MULTILINE)
    ]


def test_gue_doc_matches_c_and_python(c_layout: dict[str, int]) -> None:
    rows = _doc_table()
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
