"""torchrun's shared key-value store outlives a restart, and each node counts restarts for itself
(a node whose workers did not fail restarts them at count 0): the processes of a second attempt,
counted differently on their two nodes, still meet, in keys of their own, and all of them know it
is a restart."""

import os
import socket
import subprocess
import sys

import torch.distributed as dist

JOIN = """
import torch, torch.distributed as dist
from vitkit.distributed import World, restarted
world = World.setup("cpu")
total = world.sum(torch.tensor([world.rank + 1]))
print(int(total), restarted(world))
dist.destroy_process_group()
"""


def attempt(port: int, restart_counts: tuple[int, int]) -> list[str]:
    """Two processes joining a process group through the store at `port`, as torchrun starts them."""
    launched = []
    for rank, count in enumerate(restart_counts):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
               "TORCHELASTIC_RESTART_COUNT": str(count), "OMP_NUM_THREADS": "1"}
        launched.append(subprocess.Popen([sys.executable, "-c", JOIN], env=env, stdout=subprocess.PIPE, text=True))
    try:
        return [process.communicate(timeout=120)[0].strip() for process in launched]
    finally:
        for process in launched:
            process.kill()


def test_a_restart_counted_on_one_node_only_meets_in_fresh_keys():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent_store = dist.TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True)  # torchrun's, kept
    assert attempt(port, (0, 0)) == ["3 False", "3 False"]
    assert attempt(port, (0, 1)) == ["3 True", "3 True"]  # rank 1's node failed and counts the restart
    del agent_store
