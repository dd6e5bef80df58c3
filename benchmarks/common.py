"""Shared by the benchmarks: describe the machine, show a spread, and append one JSON record per
run to benchmarks/results/<benchmark>.jsonl (`python benchmarks/report.py` turns the latest
record of each benchmark per machine kind into the docs' benchmarks page and the README's table).

A record: {"benchmark", "title", "command", "commit", "date", "machine": {"cpu", "kind", "cores",
"gpu", "torch"}, "figures": {name: {"min", "median", "max", "unit"} | {"value", "unit"} | a plain
value}, "notes", "hand_run"}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).with_name("results")


def cpu_name() -> tuple[str, str]:
    """The CPU's model name and its flags (/proc/cpuinfo on Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or "unknown CPU")
    flags = next((line.split(":", 1)[1] for line in info.splitlines() if line.startswith("flags")), "")
    return name, flags


def machine(device: str | None = None) -> dict:
    """What a record says about the machine. `kind` names what the figures were measured on: the
    GPU where the benchmark ran on one (h100, h200, or gpu), else the CPU (amx-cpu where it has
    AMX, whose bf16 matmuls run several times faster, else cpu)."""
    cpu, flags = cpu_name()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    on_gpu = gpu is not None and (device or "cuda").startswith("cuda")
    if on_gpu:
        kind = "h100" if "H100" in gpu else "h200" if "H200" in gpu else "gpu"
    else:
        kind = "amx-cpu" if "amx_bf16" in flags.split() else "cpu"
    return {"cpu": cpu, "kind": kind, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def describe(m: dict) -> str:
    """A record's machine as one line."""
    gpu = f", {m['gpu']}" if m.get("gpu") else ", no GPU"
    return f"{m['cpu']} ({m['cores']} cores){gpu}, torch {m['torch']}"


def commit() -> str | None:
    """The checkout's short commit, with "+changes" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return None
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """min / median / max, as every table here shows a repeated measurement."""
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def figure(values: Iterable[float] | float, unit: str, digits: int = 2) -> dict:
    """A figure of a record: min / median / max of repeated measurements, or one value."""
    if isinstance(values, (int, float)):
        return {"value": round(float(values), digits), "unit": unit}
    values = list(values)
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits), "unit": unit}


def shown(value) -> str:
    """A figure as a person reads it: min / median / max unit, or value unit."""
    if not isinstance(value, dict):
        return str(value)
    unit = value.get("unit", "")
    if "median" in value:
        return f"{value['min']:g} / {value['median']:g} / {value['max']:g} {unit}".rstrip()
    return f"{value['value']:g} {unit}".rstrip()


def of_spread(s: dict, unit: str, scale: float = 1.0) -> dict:
    """A figure from a spread as `vitkit bench` returns one ({"min", "median", "max"})."""
    return {key: round(scale * s[key], 4) for key in ("min", "median", "max")} | {"unit": unit}


def record(benchmark: str, title: str, figures: dict, notes: str = "", table: str = "", save: bool = True,
           device: str | None = None, command: str | None = None) -> dict:
    """Print the result for a person (the table, the notes) and, unless `save` is off, append it
    as one JSON line to benchmarks/results/<benchmark>.jsonl. `device`: where the figures were
    measured (default: a GPU where there is one)."""
    entry = {"benchmark": benchmark, "title": title, "command": command or this_command(), "commit": commit(),
             "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), "machine": machine(device),
             "figures": figures, "notes": notes, "hand_run": False}
    table = table or "\n".join(f"{name}: {shown(value)}" for name, value in figures.items())
    print(f"\n{title}\n{describe(entry['machine'])}\n\n{table}\n{notes}\n")
    if save:
        RESULTS.mkdir(exist_ok=True)
        with (RESULTS / f"{benchmark}.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")
        print(f"recorded in {RESULTS / f'{benchmark}.jsonl'}")
    return entry


def bench_figures(results: list[dict]) -> dict:
    """The figures of `vitkit bench` results (speed.py, gpu.sh): every row's img/s and share of
    each round's matmul peak, every comparison's ratio round by round and verdict, the peak."""
    figures: dict = {}
    for r in results:
        name = f"{r['model']} {r['mode']} {r['dtype']} batch {r['batch']}"
        for row in r["rows"]:
            figures[f"{name}: {row['library']} {row['execution']}"] = of_spread(row["img_per_s"], "img/s")
            figures[f"{name}: {row['library']} {row['execution']}, of peak by round"] = of_spread(
                row["fraction_of_round_peak"], "%", 100)
        for c in r["comparisons"]:
            label = f"{name}: vitkit / {c['peer']}, {c['kind']}"
            figures[f"{label}, round by round"] = of_spread(c["ratio_by_round"], "x")
            figures[f"{label}, verdict"] = f"{c['verdict']} ({c['rounds_won']} of {r['rounds']} rounds won)"
        figures[f"{name}: {r['matmul_peak']['dtype']} matmul peak"] = of_spread(r["matmul_peak"]["tflops"], "TFLOP/s")
    return figures


def paired_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The options of a script whose variants take turns round by round (`take_turns`)."""
    def at_least_one(text: str) -> int:
        if int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
        return int(text)

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=at_least_one, default=rounds)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
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
    """The command as typed from the repository's root: python benchmarks/NAME.py ARGS."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def vitkit(*args: str) -> tuple[dict, float]:
    """Run the `vitkit` command as a user would (`--json` added): its result and its wall time."""
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "vitkit", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vitkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), time.time() - start
