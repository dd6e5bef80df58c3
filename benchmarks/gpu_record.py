"""The record of a `benchmarks/gpu.sh` run, made from the files its steps wrote to its folder.

    python benchmarks/gpu_record.py OUT "benchmarks/gpu.sh ARGS" [--no-record]

gpu.sh calls this at its end (not with --quick, whose small steps check the script, not the
machine). It appends one record to benchmarks/results/gpu.jsonl: the device tests passed and
failed, every `vitkit bench` row and comparison (inference and training), the CIFAR-10 run's
held-out top-1 and img/s, and whether torchrun ran.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_figures, figure, record, training_rate


def json_in(path: Path) -> dict | None:
    """The JSON object a step printed (`--json`), among the log lines it also wrote there."""
    if not path.exists():
        return None
    text = path.read_text()
    for match in re.finditer(r"^\{", text, re.MULTILINE):
        try:
            found, _ = json.JSONDecoder().raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict):
            return found
    return None


def figures_of(out: Path) -> tuple[dict, str]:
    """The figures of every step that left its output, and the device the bench ran on."""
    figures: dict = {}
    tests = (out / "tests.txt").read_text() if (out / "tests.txt").exists() else ""
    for outcome in ("passed", "failed", "skipped"):
        found = re.findall(rf"(\d+) {outcome}", tests)
        figures[f"device tests {outcome}"] = int(found[-1]) if found else 0
    benches = [b for b in (json_in(out / "bench-infer.txt"), json_in(out / "bench-train.txt")) if b]
    figures |= bench_figures(benches)
    cifar, run = json_in(out / "cifar.txt"), out / "cifar-run"
    if cifar and (run / "metrics.jsonl").exists():
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        budget = json.loads((run / "config.json").read_text())["recipe"]["time_budget"]
        name = f"CIFAR-10 default recipe, {budget:.0f} s" if budget else "CIFAR-10 default recipe"
        figures |= {f"{name}: held-out top-1": figure(100 * cifar["val_top1"], "%"), f"{name}: epochs": cifar["epochs"],
                    f"{name}: img/s": figure([h["img_per_s"] for h in history[1:]] or training_rate(history), "img/s",
                                             0)}
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    figures["torchrun, one process"] = "ok" if re.search(r"== torchrun.*\n   ok", summary) else "failed or not run"
    return figures, benches[0]["device"] if benches else "cuda"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="gpu.sh's --out folder")
    parser.add_argument("command", help="gpu.sh's command line, as the record shows it")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    figures, device = figures_of(args.out)
    summary = (args.out / "summary.txt").read_text() if (args.out / "summary.txt").exists() else ""
    record("gpu", "The GPU check (benchmarks/gpu.sh)", figures, "Steps: " + "; ".join(
        line.strip() for line in summary.splitlines() if line.startswith("   ")), save=not args.no_record,
        device=device, command=args.command)


if __name__ == "__main__":
    main()
