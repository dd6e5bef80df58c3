"""keep_freed_memory: blocks that tensors free are reused, not page-faulted in again.

Each check runs in a fresh interpreter: malloc's settings are process-wide and lasting. The oracle
is the kernel's count of minor page faults (getrusage) for tensors made, filled and freed over and
over, each 1 MiB larger than the one before (20 MiB, 21 MiB, ...): glibc's default malloc maps each
afresh (its threshold for mapping rises only to the size of the last block freed), kept memory
only grows the heap by the extra MiB.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

from vitkit.train import trainer

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

PATTERN = """
import json, resource, sys, torch
{setup}
faults = []
for extra in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones((20 + extra) << 18)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": faults}}))
"""
PAGES = (20 << 20) // 4096  # what the smallest of the pattern's tensors spans


def run(setup: str, env: dict | None = None) -> dict:
    code = PATTERN.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return json.loads(done.stdout.splitlines()[-1])


def test_freed_blocks_are_reused_where_glibc_would_fault_them_in_again():
    default = run("applied = None")
    kept = run("from vitkit.memory import keep_freed_memory; applied = keep_freed_memory()")
    assert kept["applied"] is True
    assert min(default["faults"][-4:]) > PAGES / 2, default  # the oracle: glibc's default faults every time
    assert sum(kept["faults"][-4:]) < PAGES, kept  # a fraction of one block, over four


def test_the_vitkit_command_keeps_freed_memory():
    kept = run("from vitkit.cli import main; main(['models']); applied = True")
    assert sum(kept["faults"][-4:]) < PAGES, kept


def test_the_trainer_keeps_freed_memory_for_library_callers(monkeypatch, tmp_path):
    """The call alone: a Run's loader threads allocate meanwhile, and the heap they share with the
    pattern above fragments, which makes the fault count of that pattern vary."""
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(True))
    trainer.Run("digits", out=tmp_path)
    assert calls == [True]


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_the_users_own_glibc_settings_stay_in_charge(env):
    theirs = run("from vitkit.memory import keep_freed_memory; applied = keep_freed_memory()", env)
    assert theirs["applied"] is False
    assert min(theirs["faults"][-4:]) > PAGES / 2, theirs  # their trim threshold, not ours
