"""Where and how vitkit computes, decided once for every command: the default device, whether bf16
pays, autocast, and the allocator setting.

The allocator: keep the memory that tensors free for the next ones, on Linux with glibc. glibc's
malloc serves large blocks with mmap and gives them back to the kernel when freed (and trims the
heap's free top likewise). A training step frees its activations and allocates the same sizes
again in the next step, so every step page-faults its memory back in, and the kernel zeroes each
page: on a 2-core CPU, about 145,000 faults and 18% of the CPU time of a compiled `vit_ti4_32`
training step at batch 128. With freed blocks of up to 32 MiB kept in the process, the next step
reuses them. PyTorch's CPU tuning guide makes the same point with jemalloc or tcmalloc; this
needs no library. What it costs: the process keeps the memory of its largest step (each thread's
malloc arena its own), and a long-running `vitkit serve` that of its largest burst; forked
loader workers inherit the setting. Tensors above 32 MiB are still mapped afresh each time.
"""

from __future__ import annotations

import ctypes
import os
import platform
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
KEEP_UP_TO = 32 << 20  # freed blocks up to this size stay: the most glibc accepts on 64-bit systems
TRIM_ABOVE = 2**31 - 1  # the heap's free top goes back to the kernel only beyond 2 GiB
# The user's own settings of the same knobs, which then stay in charge
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
GLIBC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold", "glibc.malloc.top_pad")
MALLOC_ENV = (*GLIBC_ENV, "GLIBC_TUNABLES", "LD_PRELOAD")  # every variable that can choose or tune malloc


def keep_freed_memory() -> bool:
    """Make malloc keep freed blocks of up to 32 MiB for reuse. Returns whether it did: not on
    other C libraries, nor under another malloc (jemalloc, tcmalloc, ... in LD_PRELOAD), nor where
    the user sets these knobs through glibc's environment (GLIBC_ENV, GLIBC_TUNABLES). Process-wide
    and lasting."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    tunables = [t.split("=")[0] for t in os.environ.get("GLIBC_TUNABLES", "").split(":")]
    if (any(v in os.environ for v in GLIBC_ENV) or any(t in tunables for t in GLIBC_TUNABLES)
            or "malloc" in os.environ.get("LD_PRELOAD", "")):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))


def device(name: str | torch.device | None = None) -> torch.device:
    """The device a command runs on: the one asked for, else the first GPU when there is one."""
    if isinstance(name, torch.device):
        return name
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def bf16_pays(dev: torch.device, config: object) -> bool:
    """Whether bf16 is the faster choice for a model (its config: a ViT's width; a CNN counts as
    wide) on `dev`. On CPU it pays only with AMX or AVX512-BF16, and (measured) only for models of
    width >= 128: a width-64 model trains at 3300 img/s in fp32 but 1600 img/s under bf16 autocast."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if getattr(config, "dim", 128) < 128:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast(dev: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on `dev`, or nothing."""
    return torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()
