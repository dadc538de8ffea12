"""Compile the XDP programs: the one entry point (`python -m services.forwarder.build`).

Objects land in bpf/build/ (gitignored). `ensure()` rebuilds only when an object is missing or
older than any source, so tests and the loader can call it on every start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent / "bpf"
BUILD_DIR = BPF_DIR / "build"
PROGRAMS = ("edge", "server", "baseline")
CFLAGS = ("-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror")


class BuildError(RuntimeError):
    """clang failed; the message carries its output."""


def _arch_include() -> list[str]:
    """asm/ headers live under the multiarch directory on Debian."""
    for candidate in Path("/usr/include").glob("*-linux-gnu"):
        if (candidate / "asm").is_dir():
            return ["-I", str(candidate)]
    return []


def object_path(name: str, defines: Mapping[str, int] | None = None) -> Path:
    """Where the object for `name` built with `defines` lives; overrides get their own file."""
    suffix = "".join(f"-{k}{v}" for k, v in sorted((defines or {}).items()))
    return BUILD_DIR / f"{name}{suffix}.bpf.o"


def _sources() -> list[Path]:
    return sorted(BPF_DIR.glob("*.h")) + sorted(BPF_DIR.glob("*.bpf.c"))


def compile_program(name: str, defines: Mapping[str, int] | None = None) -> Path:
    """Run clang unconditionally and return the object path."""
    clang = shutil.which("clang")
    if clang is None:
        raise BuildError("clang not found: install clang, llvm and libbpf-dev")
    out = object_path(name, defines)
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # A per-process temporary: several syncs of one node start at once on a fresh checkout and
    # each builds the same object; each renames its own complete file into place.
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [clang, *CFLAGS, *_arch_include()]
    cmd += [f"-D{k}={v}" for k, v in sorted((defines or {}).items())]
    cmd += ["-c", str(BPF_DIR / f"{name}.bpf.c"), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}\n{proc.stderr}")
    tmp.replace(out)
    return out


def ensure(name: str, defines: Mapping[str, int] | None = None) -> Path:
    """The object for `name`, rebuilt if missing or stale."""
    out = object_path(name, defines)
    newest = max(p.stat().st_mtime for p in _sources())
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    return compile_program(name, defines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("programs", nargs="*", default=list(PROGRAMS))
    args = parser.parse_args(argv)
    defines = {k: int(v, 0) for k, v in (d.split("=", 1) for d in args.defines)}
    for name in args.programs:
        try:
            print(compile_program(name, defines))
        except BuildError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
