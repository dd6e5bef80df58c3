"""keep_freed_memory: blocks that tensors free are reused, not page-faulted in again.

Each check runs in a fresh interpreter: malloc's settings are process-wide and lasting. The oracle
is the kernel's count of minor page faults (getrusage) for tensors made, filled and freed over and
over, each 1 MiB larger than the one before (20 MiB, 21 MiB, ...): glibc's default malloc maps each
afresh (its threshold for mapping rises only to the size of the last block freed); kept memory
grows the heap by the extra MiB, or, where some other allocation has landed above a block, two
regions take turns (faults of 0 and 2 MiB). The checks average over the last eight blocks.
"""

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from statistics import mean

import pytest

from vitkit import bench as bench_module
from vitkit import runtime
from vitkit.runtime import GLIBC_ENV, GLIBC_TUNABLES, MALLOC_ENV
from vitkit.train import trainer

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = [
    pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"),
    pytest.mark.skipif(THP.exists() and "[always]" in THP.read_text(),
                       reason="transparent huge pages for every mapping: a few faults a block either way"),
]

PATTERN = """
import json, resource, sys, torch
{setup}
faults = []
for extra in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones((20 + extra) << 18)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": faults}}))
"""
PAGES = (20 << 20) // resource.getpagesize()  # what the smallest of the pattern's tensors spans


def run(setup: str, env: dict | None = None) -> dict:
    code = PATTERN.format(setup=setup)
    ours = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**ours, **(env or {})})
    return json.loads(done.stdout.splitlines()[-1])


def test_freed_blocks_are_reused_where_glibc_would_fault_them_in_again():
    default = run("applied = None")
    kept = run("from vitkit.runtime import keep_freed_memory; applied = keep_freed_memory()")
    assert kept["applied"] is True
    assert min(default["faults"][1:]) > PAGES / 2, default  # the oracle: glibc's default faults every time
    assert mean(kept["faults"][-8:]) < PAGES / 2, kept  # on average under half (the heap's layout varies)


def test_the_vitkit_command_keeps_freed_memory():
    kept = run("from vitkit.cli import main; main(['models']); applied = True")
    assert mean(kept["faults"][-8:]) < PAGES / 2, kept


def test_the_trainer_and_bench_keep_freed_memory_for_library_callers(monkeypatch, tmp_path):
    """The calls alone: a Run's loader threads allocate meanwhile, and the heap they share with the
    pattern above fragments, which makes the fault count of that pattern vary."""
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1))
    trainer.start("digits", out=tmp_path)
    assert len(calls) == 1
    bench_module.bench("vit_ti16", 32, 2, "fp32", "infer",
                       measure=lambda steps, *_: ({k: [1.0] for k in steps}, [1e12], "float32"))  # no timing
    assert len(calls) == 2


THEIRS = [{name: "131072"} for name in GLIBC_ENV] + [
    {"GLIBC_TUNABLES": f"glibc.malloc.tcache_count=7:{name}=131072"} for name in GLIBC_TUNABLES] + [
    {"LD_PRELOAD": "libjemalloc.so.2"}]  # another malloc (absent here: the loader skips it, glibc's stays)


@pytest.mark.parametrize("env", THEIRS)
def test_the_users_own_glibc_settings_stay_in_charge(env):
    theirs = run("from vitkit.runtime import keep_freed_memory; applied = keep_freed_memory()", env)
    assert theirs["applied"] is False
    assert min(theirs["faults"][-8:]) > PAGES / 2, theirs  # glibc's own rules, as they set them


def test_other_malloc_knobs_and_libraries_are_not_mistaken_for_these():
    kept = run("from vitkit.runtime import keep_freed_memory; applied = keep_freed_memory()",
               {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7", "MALLOC_ARENA_MAX": "2"})
    assert kept["applied"] is True
    assert mean(kept["faults"][-8:]) < PAGES / 2, kept
