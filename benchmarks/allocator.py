"""What keeping freed memory buys (`vitkit.runtime.keep_freed_memory`): the compiled training step
with glibc's default malloc against the same step with freed blocks kept for reuse.

    python benchmarks/allocator.py [--rounds 4] [--no-record]

malloc's settings are process-wide and cannot be put back, so each measurement is a fresh process
(the same model, step and seed; the second and later compile from inductor's cache), and the two
settings take turns round by round, alternating which goes first. Each process reports its rate
and, from getrusage, the page faults and the share of its CPU time spent in the kernel. Each run
appends a record to benchmarks/results/allocator.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, paired_parser, record, spread
from cpu_kernels import BATCH, MODELS, STEPS, training_step, with_gelu
from vitkit.runtime import MALLOC_ENV, keep_freed_memory

SETTINGS = ("glibc default", "kept")
CHUNKS = 4  # timed chunks of STEPS steps per process


def child(model: str, keep: bool, threads: int) -> dict:
    """One process's measurement: img/s of each chunk, faults per step, kernel share of CPU time."""
    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory did not apply here (not glibc, or malloc tuned by the environment)")
    torch.set_num_threads(threads)
    steps = training_step(with_gelu(MODELS[model](), "AtenGELU"))
    steps()
    steps()  # compiled, and the allocator has seen a whole step
    rates = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(CHUNKS):
        start = time.perf_counter()
        steps()
        rates.append(STEPS * BATCH / (time.perf_counter() - start))
    after = resource.getrusage(resource.RUSAGE_SELF)
    system, user = after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime
    return {"rates": rates, "faults": (after.ru_minflt - before.ru_minflt) / (CHUNKS * STEPS),
            "system": system / (system + user)}


def measure(model: str, keep: bool, threads: int) -> dict:
    """`child` in a fresh process, whose malloc is glibc's default unless `keep`."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    done = subprocess.run([sys.executable, __file__, "--child", model, "--threads", str(threads)]
                          + ["--keep"] * keep, capture_output=True, text=True, env=env)
    if done.returncode or not done.stdout.strip():
        raise SystemExit(f"the {model} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = paired_parser(__doc__, rounds=4)
    parser.add_argument("--child", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.keep, args.threads)))
        return
    lines = ["| model | malloc | img/s (min / median / max) | page faults per step (min / median / max) | "
             "kernel's share of CPU time | kept / default, per round (min / median / max) |",
             "|---|---|---|---|---|---|"]
    figures: dict = {}
    for model in MODELS:
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for r in range(args.rounds):
            for setting in SETTINGS[::-1] if r % 2 else SETTINGS:
                runs[setting].append(measure(model, setting == "kept", args.threads))
        medians = {s: [statistics.median(run["rates"]) for run in runs[s]] for s in SETTINGS}
        ratios = [k / d for k, d in zip(medians["kept"], medians["glibc default"], strict=True)]
        for setting, rows in runs.items():
            rates = [rate for run in rows for rate in run["rates"]]
            paired = spread(ratios, "{:.2f}x") if setting == "kept" else "-"
            lines.append(f"| {model} | {setting} | {spread(rates)} | {spread([run['faults'] for run in rows])} | "
                         f"{spread([100 * run['system'] for run in rows], '{:.1f}%')} | {paired} |")
            figures |= {f"{model}, {setting}: img/s": figure(rates, "img/s", 1),
                        f"{model}, {setting}: page faults per step": figure([run["faults"] for run in rows], "faults"),
                        f"{model}, {setting}: kernel's share of CPU time": figure(
                            [100 * run["system"] for run in rows], "%", 2)}
        figures[f"{model}: kept / default, per round"] = figure(ratios, "x", 3)
        print("\n".join(lines[-2:]), flush=True)
    notes = (f"Compiled training step (forward, backward, AdamW; bf16 autocast, batch {BATCH}, {args.threads} "
             f"threads), {args.rounds} rounds; in each, one fresh process per setting timing {CHUNKS} chunks of "
             f"{STEPS} steps after two untimed ones. img/s: every chunk of every process; page faults and the "
             "kernel's share: per process; the per-round ratio pairs the two processes' median rates.")
    record("allocator", "The allocator: glibc's default malloc against freed memory kept", figures, notes,
           "\n".join(lines), save=not args.no_record, device="cpu")


if __name__ == "__main__":
    main()
