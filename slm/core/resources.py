"""What a process used: its peak resident memory; what a file or folder takes on disk. Stdlib only
and self-contained (bench/peers/ loads this file by path from foreign virtual environments)."""
from __future__ import annotations

import sys
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: Linux's VmHWM (unlike ru_maxrss it is not inherited across
    fork+exec), else getrusage's ru_maxrss (KiB on Linux, bytes on macOS), else NaN (Windows)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def size_mib(path: str | Path) -> float:
    """A file's size, or the sum of a folder's files, in MiB."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2 ** 20


def release_freed_heap() -> bool:
    """Give the C heap's free pages back to the OS (glibc's malloc_trim). Opening a package frees what
    ONNX Runtime folded and packed from and what the tokenizer's JSON parse built, but glibc keeps
    those pages, and they count in the process's RSS until something reuses them (~15 MB of the
    default package's peak, docs/BENCHMARKS.md). True where it ran; elsewhere (musl, macOS, Windows)
    it does nothing and says False."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    if trim is None:
        return False
    trim(0)
    return True
