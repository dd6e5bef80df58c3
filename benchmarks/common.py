"""Shared by the benchmarks: describe the machine, show a spread, append a result section to RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags]
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({os.cpu_count()} cores; {', '.join(isa) or 'no AVX-512'}), {gpu}, "
            f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """min / median / max, as every table here shows a repeated measurement."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def record(title: str, command: str, table: str, notes: str = "", save: bool = True) -> None:
    """Print a result and, unless `save` is off (a script's --no-record), append it to
    benchmarks/RESULTS.md."""
    section = (f"\n## {title}\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {machine()}.\n\n"
               f"```\n{command}\n```\n\n{table}\n{notes}\n")
    print(section)
    if not save:
        return
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by a script under "
                           "`benchmarks/`; the command that produced it is shown.\n")
    with RESULTS.open("a") as f:
        f.write(section)


def paired_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The options of a script whose variants take turns round by round (`take_turns`)."""
    def at_least_one(text: str) -> int:
        if int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
        return int(text)

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least_one, default=rounds)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    return parser


def take_turns(steps: dict[str, Callable[[], None]], rounds: int, images: int) -> dict[str, list[float]]:
    """Images per second of each step (which handles `images` images), round by round, after one
    untimed call each (compilation, warm-up). The steps take turns within each round, their order
    rotating, so that the VM's drift hits them alike and each round's ratio pairs runs next to
    each other in time."""
    for step in steps.values():
        step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            steps[name]()
            rates[name].append(images / (time.perf_counter() - start))
    return rates


def training_rate(history: list[dict]) -> float:
    """Images per second of training over a run's epochs after the first (which pays for start-up
    and compilation), each weighted by its length: a budget run's last epoch is usually short."""
    steady = history[1:] or history
    return sum(h["img_per_s"] * h["train_seconds"] for h in steady) / sum(h["train_seconds"] for h in steady)


def this_command() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def vitkit(*args: str) -> tuple[dict, float]:
    """Run the `vitkit` command as a user would (`--json` added): its result and its wall time."""
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "vitkit", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vitkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), time.time() - start
