"""Keeping freed memory in the process between training steps (glibc malloc tuning)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest glibc accepts on 64-bit: half its heap size


TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a training step frees for the next step to reuse.

    A step allocates the same large tensors every time (logits and their gradients: 12 MB for nanoGPT's
    CPU settings) and frees them again. By default glibc serves such blocks with fresh mmap pages and
    hands freed memory back to the kernel, so every step pays page faults to get it again. Kept, the
    loop ran 14% faster at nanoGPT's CPU settings (docs/performance.md); it is the lever PyTorch's CPU
    tuning guide pulls with tcmalloc or jemalloc. Blocks up to 32 MB now come from the heap, and up to
    1 GiB of freed heap stays in the process: memory the stage already peaked at, never more. Only
    on glibc (Linux); elsewhere nothing changes. Returns whether it applied."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):
        return False
