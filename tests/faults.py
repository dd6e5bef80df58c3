"""The vitkit command with a fault injected, for the fault-tolerance tests:

    python tests/faults.py RANK:EPOCH:STEP[:SIGNAL] train ...     (or under torchrun)

sends the process of that rank SIGNAL (default KILL: a crashed machine; TERM: a scheduler's stop)
just before that training step (epoch counted from 1, step from 0), in torchrun's first attempt
only. The fault comes from a hook installed here, not from code in the training loop.
"""

import os
import signal
import sys

from vitkit.cli import main
from vitkit.train import trainer


def install(spec: str) -> None:
    parts = spec.split(":")
    name = parts.pop() if len(parts) == 4 else "KILL"
    at = tuple(int(v) for v in parts)

    def fault(run: trainer.Run) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and (run.world.rank, run.progress.epoch + 1, run.progress.step) == at:
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    trainer.STEP_HOOKS.append(fault)


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
