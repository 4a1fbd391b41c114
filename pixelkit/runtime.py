"""Process-level settings for running pixelkit on the CPU.

**Freed memory stays in the process.** glibc's ``malloc`` serves blocks above its mmap
threshold (128 KiB, raised dynamically up to the largest block freed so far) with
``mmap`` and gives them back to the kernel on ``free``; it also trims free memory at the top
of the heap beyond its trim threshold. A batched forward pass allocates and frees many
activation buffers of about a megabyte (32 prompts x 81 tokens x 128 floats), so every
call faults those pages in again: on the tiny preset a 32-prompt ``caption_boxes`` call
took about 7,000 minor page faults and 14 ms of system time out of about 140 ms. With both
thresholds raised (:func:`retain_freed_memory`) it takes none. This is the allocator
behaviour PyTorch's CPU performance guide gets from jemalloc / TCMalloc, set through
glibc's own ``mallopt`` instead of a preloaded library.

The ``pixelkit`` command applies it at start (so ``pixelkit eval``, ``demo``,
``quickstart`` and ``bench`` all run with it); in a notebook or script call
:func:`retain_freed_memory` once. Set ``PIXELKIT_KEEP_FREED_MEMORY=0`` to leave the
allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

ENV_VAR = "PIXELKIT_KEEP_FREED_MEMORY"
_applied = False


def retain_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep freed buffers in the process for reuse (glibc only; a no-op elsewhere).

    Blocks below ``mmap_threshold`` come from the heap, and up to ``trim_threshold`` bytes
    of free heap are kept instead of being returned to the kernel. Larger blocks (model
    weights, big batches) are still mapped and unmapped on their own. Setting a threshold
    turns off glibc's dynamic adjustment of both, for the rest of the process.

    Args:
        mmap_threshold: bytes (some glibc versions refuse more than 32 MiB on 64-bit
            systems; then this returns False).
        trim_threshold: bytes of free memory at the top of the heap kept for reuse.

    Returns:
        True if both settings were applied; False where the C library is not glibc, where
        ``PIXELKIT_KEEP_FREED_MEMORY=0``, or where glibc refused a value.
    """
    if os.environ.get(ENV_VAR, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    libc = ctypes.CDLL(path)
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
              and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    global _applied
    _applied = _applied or ok
    return ok


def keeps_freed_memory() -> bool:
    """Whether :func:`retain_freed_memory` has been applied in this process (bench metadata)."""
    return _applied
