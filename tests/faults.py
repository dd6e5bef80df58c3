"""The vitkit command with a fault injected or a probe installed, for the tests:

    python tests/faults.py RANK:EPOCH:STEP[:SIGNAL] train ...     (or under torchrun)

sends the process of that rank SIGNAL (default KILL: a crashed machine; TERM: a scheduler's stop)
just before that training step (epoch counted from 1, step from 0), once a run: a marker next to
the run's folder says it has fired (torchrun's count of restarts is per node, and a restart may
give that rank to another node's process). The fault comes from a hook installed here, not from
code in the training loop.

    python tests/faults.py draws:FOLDER train ...

writes FOLDER/rank-R.json: for each step, four numbers drawn from torch's random stream just
before the model's forward pass, i.e. the stream that dropout, drop-path and MixUp/CutMix use.

    python tests/faults.py heartbeat:FILE train ...

writes "EPOCH STEP" to FILE before every step (how far a run has got, seen from outside).

    python tests/faults.py poison:RANK:EPOCH:STEP:MARKER train ...

once a run (as above), just before that step, overwrites the run's sharded checkpoint index
(`checkpoint-shards/*/.metadata`) with a pickle that would create the file MARKER if unpickled,
then kills that rank's process (SIGKILL): torchrun's restart then resumes from that checkpoint.

    python tests/faults.py clock:RANK:LEFT:SECONDS train ...

runs every process's --time-budget on a fake clock on which each step takes 1/16 s, and on which
the steps of the process of that rank take SECONDS once less than LEFT seconds are left before
its deadline (a machine that slows down near a run's end); nothing else takes time on it.
"""

import json
import os
import pickle
import signal
import sys
from pathlib import Path

import torch

from vitkit.cli import main
from vitkit.train import trainer


def first_time(run: trainer.Run) -> bool:
    """True for the one process, of all nodes and attempts, that first claims this run's fault."""
    try:
        os.close(os.open(run.paths.root.parent / f".{run.paths.root.name}.fault", os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def install(spec: str) -> None:
    parts = spec.split(":")
    name = parts.pop() if len(parts) == 4 else "KILL"
    at = tuple(int(v) for v in parts)

    def fault(run: trainer.Run) -> None:
        if (run.world.rank, run.progress.epoch + 1, run.progress.step) == at and first_time(run):
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    trainer.STEP_HOOKS.append(fault)


def record_draws(folder: str) -> None:
    draws: list[list[float]] = []

    def probe(run: trainer.Run) -> None:
        if not draws and not hasattr(run, "_probed"):
            model_forward, run._probed = run.parts.forward, True

            def forward(x, **kwargs):
                draws.append(torch.rand(4).tolist())
                Path(folder, f"rank-{run.world.rank}.json").write_text(json.dumps(draws))
                return model_forward(x, **kwargs)

            run.parts.forward = forward

    trainer.STEP_HOOKS.append(probe)


def heartbeat(path: str) -> None:
    trainer.STEP_HOOKS.append(lambda run: Path(path).write_text(f"{run.progress.epoch} {run.progress.step}"))


class RunsCode:
    """Unpickled, it creates a file: what a hostile pickle in a run folder could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poison(spec: str) -> None:
    rank, epoch, step, marker = spec.split(":", 3)

    def fault(run: trainer.Run) -> None:
        if (run.world.rank, run.progress.epoch + 1, run.progress.step) == (int(rank), int(epoch), int(step)) \
                and first_time(run):
            for index in (run.paths.root / "checkpoint-shards").glob("*/.metadata"):
                index.write_bytes(pickle.dumps(RunsCode(marker)))
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.STEP_HOOKS.append(fault)


def fake_clock(spec: str) -> None:
    rank, left, seconds = spec.split(":")
    now = [0.0]
    real_start = trainer.start

    def start(*args, **kwargs) -> trainer.Run:  # every run of this process on the fake clock
        return real_start(*args, **{**kwargs, "clock": lambda: now[0]})

    def step(run: trainer.Run) -> None:
        slow = run.world.rank == int(rank) and run.budget.deadline - run.budget.elapsed() < float(left)
        now[0] += float(seconds) if slow else 0.0625  # 1/16: exact in binary

    trainer.start = start
    trainer.STEP_HOOKS.append(step)


if __name__ == "__main__":
    kind, _, rest = sys.argv[1].partition(":")
    hooks = {"draws": record_draws, "heartbeat": heartbeat, "clock": fake_clock, "poison": poison}
    hooks.get(kind, lambda _: install(sys.argv[1]))(rest)
    sys.exit(main(sys.argv[2:]))
