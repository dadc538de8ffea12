"""Building the XDP objects: several processes may build the same one at once (a node's syncs
starting together on a fresh checkout) and each must get a complete object."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from services.forwarder import build

DEFINES = {"BUCKET_BITS": 5}


def _build(_: int) -> str:
    return str(build.compile_program("server", DEFINES))


def test_concurrent_builds_of_one_object_all_succeed() -> None:
    with ProcessPoolExecutor(6) as pool:
        paths = set(pool.map(_build, range(6)))
    out = build.object_path("server", DEFINES)
    assert paths == {str(out)}
    assert out.read_bytes()[:4] == b"\x7fELF"
    assert not list(out.parent.glob("*.tmp"))
