"""benchmarks/gpu.sh, the GPU check, in its quick CPU mode: every step runs and succeeds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow  # every step of gpu.sh, small (~2.5 min)
def test_gpu_check_runs_quickly_on_the_cpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--quick", "--no-install",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert summary.count("   ok in ") == 5, summary
    assert "FAILED" not in summary
    for name in ("tests", "bench-infer", "bench-train", "cifar", "torchrun"):
        assert (tmp_path / "out" / f"{name}.txt").stat().st_size > 0, name
