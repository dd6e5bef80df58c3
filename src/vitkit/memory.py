"""Keep the memory that tensors free for the next ones, on Linux with glibc.

glibc's malloc serves large blocks with mmap and gives them back to the kernel when freed (and
trims the heap's free top likewise). A training step frees its activations and allocates the
same sizes again in the next step, so every step page-faults its memory back in, and the kernel
zeroes each page: on a 2-core CPU, 160,000 faults and about a fifth of the CPU time of a
`vit_ti4_32` training step at batch 128 ("The allocator" in benchmarks/RESULTS.md). With freed
blocks of up to 32 MiB kept in the process, the next step reuses them: no faults, and the process
keeps its peak memory, which the next step needs again anyway. PyTorch's own CPU tuning guide
makes the same point with jemalloc or tcmalloc; this needs no library.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the most glibc accepts (half its 64 MiB heap size on 64-bit systems)
TRIM_THRESHOLD = 2**31 - 1  # never trim the heap's free top
GLIBC_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Make malloc keep freed blocks of up to 32 MiB for reuse. Returns whether it did: not on
    other C libraries, nor where the user tunes glibc's malloc through its own environment
    variables (GLIBC_TUNABLES or MALLOC_*_), which then stay in charge. Process-wide and lasting."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(v in os.environ for v in GLIBC_MALLOC_ENV):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
