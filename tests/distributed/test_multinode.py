"""Two nodes, played by two torchrun launchers on this machine (c10d rendezvous on the loopback
address only), training on WebDataset shards: they end with the weights of the same two processes
on one node; and with one node's process killed mid-epoch, both nodes restart their workers, which
resume from the last checkpoint (the epoch's end) and end the same again."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_same_run
from vitkit.cli import main

pytestmark = pytest.mark.slow
FAULTS = str(Path(__file__).parents[1] / "faults.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["--epochs", "3", "--batch-size", "32", "--workers", "1", "--seed", "3", "--precision", "fp32",
        "--lr", "1e-3", "--json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(data: str, out: Path, *, fault: str | None = None) -> list[subprocess.CompletedProcess]:
    """One launcher per node, both at once; with `fault`, through the fault hook, restarts allowed."""
    port, launched = free_port(), []
    for _ in range(2):
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", out.name,
                    "--local-addr", "127.0.0.1", "--max-restarts", "1" if fault else "0"]
        program = [FAULTS, fault] if fault else ["-m", "vitkit"]
        launched.append(subprocess.Popen([*torchrun, *program, "train", data, *ARGS, "--out", str(out)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                                         start_new_session=True))
    done = []
    try:
        for process in launched:
            stdout, stderr = process.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:  # a launcher that hangs takes its workers with it
        for process in launched:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return done


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("nodes")
    assert main(["shard", "digits", "--out", str(root / "wds"), "--shard-size", "20KB"]) == 0
    one_node = subprocess.run([sys.executable, "-m", "vitkit", "train", f"wds:{root / 'wds'}", *ARGS,
                               "--out", str(root / "one-node"), "--nproc", "2"], capture_output=True, text=True,
                              env=ENV, timeout=600)
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    return f"wds:{root / 'wds'}", root


def test_two_nodes_end_as_two_processes_on_one_node(shards):
    data, root = shards
    done = two_nodes(data, root / "two-nodes")
    assert all(d.returncode == 0 for d in done), [d.stderr[-2000:] for d in done]
    assert_same_run(root / "one-node", root / "two-nodes")


def test_a_node_killed_mid_epoch_restarts_and_ends_the_same(shards):
    data, root = shards
    done = two_nodes(data, root / "killed", fault="1:2:5")  # rank 1 SIGKILLed before epoch 2's sixth step
    stderr = "".join(d.stderr for d in done)
    assert all(d.returncode == 0 for d in done), stderr[-3000:]
    assert "restart: resuming" in stderr and "at epoch 2, step 0" in stderr  # from epoch 1's checkpoint
    assert_same_run(root / "one-node", root / "killed")
