"""slm.core.resources: peak RSS, sizes on disk, giving freed heap back."""
import platform

import pytest

from slm.core.resources import peak_rss_mib, release_freed_heap, size_mib


def test_peak_rss_and_sizes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 2 ** 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"x" * 2 ** 19)
    assert size_mib(tmp_path) == 1.5 and size_mib(tmp_path / "a") == 1.0
    assert 5 < peak_rss_mib() < 1e6


def test_release_freed_heap_returns_pages_where_glibc_has_malloc_trim():
    before = _rss_kib()
    junk = [bytearray(64 * 1024) for _ in range(2000)]     # ~128 MB in heap blocks (under mmap's threshold)
    pin = bytearray(64 * 1024)                             # above them: free() alone cannot shrink the heap
    del junk
    freed = _rss_kib()
    trimmed = release_freed_heap()
    del pin
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("no glibc: release_freed_heap does nothing here")
    if freed <= before + 96 * 1024:      # QEMU user mode, for one, reports its own host process's memory
        pytest.skip(f"the freed heap did not stay resident here ({(freed - before) // 1024} MiB of 128): nothing to release")
    assert trimmed and _rss_kib() < before + 32 * 1024     # glibc kept the freed pages until malloc_trim gave them back


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
