"""How a process keeps its freed memory: the allocator tuning for large CPU arrays made again and again (batched
forwards, the generator's volumes). No torch here: the generator's workers use it too."""
from __future__ import annotations


def keep_freed_cpu_memory() -> bool:
    """Serve large CPU arrays from the heap and keep what is freed there for reuse (glibc mallopt: no mmap,
    no trimming below 1 GiB); True when applied.

    By default glibc maps every allocation over 32 MB afresh and the kernel zeroes its pages each time: at a
    batch of 64+ slices that doubles the CPU time of inference, and costs the generator a tenth of its time
    (docs/BENCHMARKS.md). Memory is then returned to the system only at exit.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to tune
        return False
