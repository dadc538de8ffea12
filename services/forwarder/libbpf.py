"""ctypes binding to the system libbpf (libbpf.so.1), only the calls the forwarder needs.

Why ctypes over the system library: it is the same libbpf the C side is built against (Debian's
libbpf-dev), it needs no compiler or extra Python package, and every call here is a plain C
function. The maintained Python options either bundle their own BPF toolchain (bcc) or are thin,
unmaintained wrappers. Every failing call raises BpfError with the errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_uint32 = ctypes.c_uint32
c_char_p = ctypes.c_char_p


class BpfError(OSError):
    """A libbpf call failed; `log` holds the verifier log when a load failed."""

    def __init__(self, op: str, err: int, log: str = "") -> None:
        super().__init__(err, f"{op}: {os.strerror(err)}" + (f"\n{log}" if log else ""))
        self.op = op
        self.log = log


class TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.x)."""

    __test__ = False  # not a pytest class
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info; the kernel fills what fits."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to the program's name."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


def _proto(name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_proto("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
_proto("bpf_object__load", c_int, c_void_p)
_proto("bpf_object__close", None, c_void_p)
_proto("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
_proto("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
_proto("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
_proto("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
_proto("bpf_program__name", c_char_p, c_void_p)
_proto("bpf_program__fd", c_int, c_void_p)
_proto("bpf_program__set_log_buf", c_int, c_void_p, c_void_p, ctypes.c_size_t)
_proto("bpf_program__set_log_level", c_int, c_void_p, c_uint32)
_proto("bpf_map__name", c_char_p, c_void_p)
_proto("bpf_map__fd", c_int, c_void_p)
_proto("bpf_map__inner_map", c_void_p, c_void_p)
_proto("bpf_map__max_entries", c_uint32, c_void_p)
_proto("bpf_obj_pin", c_int, c_int, c_char_p)
_proto("bpf_obj_get", c_int, c_char_p)
_proto("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, ctypes.POINTER(c_uint32))
_proto("bpf_map_create", c_int, c_int, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p)
_proto("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, ctypes.c_uint64)
_proto("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_proto("bpf_map_delete_elem", c_int, c_int, c_void_p)
_proto("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
_proto("bpf_map_update_batch", c_int, c_int, c_void_p, c_void_p, ctypes.POINTER(c_uint32), c_void_p)
_proto(
    "bpf_map_lookup_batch",
    c_int,
    c_int,
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    ctypes.POINTER(c_uint32),
    c_void_p,
)
_proto("bpf_prog_test_run_opts", c_int, c_int, c_void_p)
_proto("bpf_xdp_attach", c_int, c_int, c_int, c_uint32, c_void_p)
_proto("bpf_xdp_detach", c_int, c_int, c_uint32, c_void_p)
_proto("bpf_xdp_query_id", c_int, c_int, c_int, ctypes.POINTER(c_uint32))
_proto("libbpf_num_possible_cpus", c_int)


def _check(op: str, rc: int) -> int:
    """libbpf 1.x returns -errno (and sets errno) on failure."""
    if rc < 0:
        raise BpfError(op, ctypes.get_errno() or -rc)
    return rc


def possible_cpus() -> int:
    return _check("libbpf_num_possible_cpus", _lib.libbpf_num_possible_cpus())


class BpfObject:
    """An opened and loaded BPF ELF object. Close it once its fds are pinned or duplicated."""

    LOG_SIZE = 16 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._obj = self._open()
        self.inner_entries = self._inner_entries()
        """max_entries of each map-in-map's inner map (libbpf drops it at load)."""
        rc = _lib.bpf_object__load(self._obj)
        if rc < 0:
            err = ctypes.get_errno() or -rc
            log = self._verifier_log()
            raise BpfError(f"load {path}", err, log)

    def _open(self) -> int:
        obj = _lib.bpf_object__open_file(str(self.path).encode(), None)
        if not obj:
            raise BpfError(f"open {self.path}", ctypes.get_errno())
        return int(obj)

    def _inner_entries(self) -> dict[str, int]:
        out = {}
        m = _lib.bpf_object__next_map(self._obj, None)
        while m:
            inner = _lib.bpf_map__inner_map(m)
            if inner:
                out[_lib.bpf_map__name(m).decode()] = int(_lib.bpf_map__max_entries(inner))
            m = _lib.bpf_object__next_map(self._obj, m)
        return out

    def _verifier_log(self) -> str:
        """Reload in a fresh object with verbose logs: libbpf gives the log only when asked."""
        self.close()
        obj = self._open()
        bufs = []
        prog = _lib.bpf_object__next_program(obj, None)
        while prog:
            buf = ctypes.create_string_buffer(self.LOG_SIZE)
            bufs.append((_lib.bpf_program__name(prog).decode(), buf))
            _lib.bpf_program__set_log_buf(prog, buf, self.LOG_SIZE)
            _lib.bpf_program__set_log_level(prog, 1)
            prog = _lib.bpf_object__next_program(obj, prog)
        _lib.bpf_object__load(obj)
        _lib.bpf_object__close(obj)
        return "\n".join(
            f"--- {name} ---\n{buf.value.decode(errors='replace')}" for name, buf in bufs
        )

    def program_fds(self) -> dict[str, int]:
        out = {}
        prog = _lib.bpf_object__next_program(self._obj, None)
        while prog:
            out[_lib.bpf_program__name(prog).decode()] = _lib.bpf_program__fd(prog)
            prog = _lib.bpf_object__next_program(self._obj, prog)
        return out

    def map_fds(self) -> dict[str, int]:
        out = {}
        m = _lib.bpf_object__next_map(self._obj, None)
        while m:
            name = _lib.bpf_map__name(m).decode()
            if not name.startswith("."):  # skip .rodata/.bss
                out[name] = _lib.bpf_map__fd(m)
            m = _lib.bpf_object__next_map(self._obj, m)
        return out

    def close(self) -> None:
        if self._obj:
            _lib.bpf_object__close(self._obj)
            self._obj = 0


def dup(fd: int) -> int:
    """An fd of our own that outlives the object it came from."""
    return os.dup(fd)


def obj_pin(fd: int, path: Path) -> None:
    _check(f"pin {path}", _lib.bpf_obj_pin(fd, str(path).encode()))


def obj_get(path: Path) -> int:
    return _check(f"get {path}", _lib.bpf_obj_get(str(path).encode()))


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = c_uint32(ctypes.sizeof(info))
    _check("map info", _lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    size = c_uint32(ctypes.sizeof(info))
    _check("prog info", _lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    return info


def prog_id(fd: int) -> int:
    return int(prog_info(fd).id)


def prog_name(fd: int) -> str:
    """The program's name as the kernel keeps it (the first 15 bytes)."""
    name: bytes = prog_info(fd).name
    return name.decode()


MAP_TYPE_ARRAY = 2
MAP_TYPE_ARRAY_OF_MAPS = 12


def map_create(map_type: int, name: str, key_size: int, value_size: int, entries: int) -> int:
    """A new map without a program behind it (a map-in-map's inner map); returns its fd."""
    return _check(
        f"map create {name}",
        _lib.bpf_map_create(map_type, name.encode(), key_size, value_size, entries, None),
    )


def map_update(fd: int, key: ctypes._CData, value: ctypes._CData) -> None:
    _check("map update", _lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0))


def map_lookup(fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
    """True if found (value filled), False if absent."""
    rc = _lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if rc < 0:
        err = ctypes.get_errno() or -rc
        if err == 2:  # ENOENT
            return False
        raise BpfError("map lookup", err)
    return True


def map_delete(fd: int, key: ctypes._CData) -> bool:
    rc = _lib.bpf_map_delete_elem(fd, ctypes.byref(key))
    if rc < 0:
        err = ctypes.get_errno() or -rc
        if err == 2:
            return False
        raise BpfError("map delete", err)
    return True


def map_keys(fd: int, key_type: type[ctypes.Structure]) -> list[bytes]:
    """All keys of a hash or trie map, as raw bytes."""
    keys: list[bytes] = []
    cur = None
    nxt = key_type()
    while True:
        prev = None if cur is None else ctypes.byref(cur)
        rc = _lib.bpf_map_get_next_key(fd, prev, ctypes.byref(nxt))
        if rc < 0:
            err = ctypes.get_errno() or -rc
            if err == 2:
                return keys
            raise BpfError("map next key", err)
        keys.append(bytes(nxt))
        cur = key_type.from_buffer_copy(bytes(nxt))


def map_update_batch_ptr(fd: int, keys: int, values: int, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH on raw buffers (e.g. numpy ``arr.ctypes.data``): `count` packed
    keys at address `keys`, `count` packed values at `values`. No Python object per element.
    """
    if count <= 0:
        return
    n = c_uint32(count)
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    rc = _lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(n), ctypes.byref(opts))
    _check(f"map update batch ({n.value} of {count} written)", rc)


def map_lookup_batch_ptr(
    fd: int, after: int | None, keys: int, values: int, count: int
) -> tuple[int, int]:
    """BPF_MAP_LOOKUP_BATCH into raw buffers, for maps with 4-byte keys: up to `count` elements
    following key `after` (None: from the first). Returns (elements read, last key read); fewer
    than `count` means the map ended.
    """
    in_batch = c_uint32(after or 0)
    out_batch = c_uint32(0)
    n = c_uint32(count)
    opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
    rc = _lib.bpf_map_lookup_batch(
        fd,
        None if after is None else ctypes.byref(in_batch),
        ctypes.byref(out_batch),
        keys,
        values,
        ctypes.byref(n),
        ctypes.byref(opts),
    )
    if rc < 0:
        err = ctypes.get_errno() or -rc
        if err != 2:  # ENOENT: the map ended; n holds what was read
            raise BpfError("map lookup batch", err)
    return int(n.value), int(out_batch.value)


def test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> tuple[int, bytes, int]:
    """BPF_PROG_TEST_RUN: (return value, output packet, duration in ns per repetition)."""
    out = ctypes.create_string_buffer(len(packet) + 512)
    inp = ctypes.create_string_buffer(packet, len(packet))
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts),
        data_in=ctypes.cast(inp, c_void_p),
        data_out=ctypes.cast(out, c_void_p),
        data_size_in=len(packet),
        data_size_out=len(out),
        repeat=repeat,
    )
    _check("prog test run", _lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)))
    return int(opts.retval), out.raw[: opts.data_size_out], int(opts.duration)


def xdp_attach(ifindex: int, prog_fd: int, flags: int = 0) -> None:
    _check(f"xdp attach ifindex {ifindex}", _lib.bpf_xdp_attach(ifindex, prog_fd, flags, None))


def xdp_detach(ifindex: int, flags: int = 0) -> None:
    _check(f"xdp detach ifindex {ifindex}", _lib.bpf_xdp_detach(ifindex, flags, None))


def xdp_query_id(ifindex: int, flags: int = 0) -> int:
    pid = c_uint32(0)
    _check("xdp query", _lib.bpf_xdp_query_id(ifindex, flags, ctypes.byref(pid)))
    return int(pid.value)
