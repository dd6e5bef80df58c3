"""Resolution robustness: a model trained at random resolutions under a token budget (NaFlex)
against today's fixed-size default, in the same time budget, each evaluated at several sizes.

    python benchmarks/resolution.py [--data ../shared/data/cifar10/cifar10-train-jpg.tar.gz] [--time-budget 600]
                                    [--sizes 16,24,32,48,64] [--max-tokens 144] [--min-tokens 16] [--no-record]

Two `vitkit train` runs of --time-budget seconds each: the default recipe (a fixed 32 px for
CIFAR-10), and the same with --max-tokens 144 --min-tokens 16 (each batch at a budget between 16
and 144 tokens of 4 px patches: 16 to 48 px). Each is then evaluated on its held-out split with
every image resized to each of --sizes (the whole image; the position table resampled to the grid),
by the same code for both (`accuracy_at`). A quick check that the script works:

    python benchmarks/resolution.py --data digits --time-budget 8 --sizes 8,16,24 --max-tokens 36 \
        --min-tokens 4 --no-record
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, training_rate, vitkit
from vitkit.data import spec as data_spec
from vitkit.data.loader import eval_loader
from vitkit.data.transforms import Fit
from vitkit.evaluate import evaluate
from vitkit.infer import default_split, open_run

SHARED = Path(__file__).parents[2] / "shared"


def accuracy_at(run: Path, spec: str, size: int, workers: int = 2) -> float:
    """Top-1 on the run's held-out split with every image resized to size x size."""
    loaded = open_run(run)
    model = loaded.model
    model.config = model.config.replace(dynamic_size=True)  # any grid: the position table resampled
    dataset, _ = data_spec.load_for_eval(spec, default_split(spec), loaded.classes, model.config.in_channels)
    loader = eval_loader(dataset, Fit((size, size)), 256, workers)
    return evaluate(model, loader, len(loaded.classes), torch.device("cpu"), normalization=loaded.normalize)["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--time-budget", type=float, default=600.0)
    parser.add_argument("--sizes", default="16,24,32,48,64")
    parser.add_argument("--max-tokens", type=int, default=144)
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = {"fixed size (default)": [], f"NaFlex, {args.min_tokens}-{args.max_tokens} tokens":
            ["--max-tokens", str(args.max_tokens), "--min-tokens", str(args.min_tokens)]}
    figures, lines = {}, [f"| run | {' | '.join(f'{s} px' for s in sizes)} | img/s |", "|---" * (len(sizes) + 2) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(runs.items()):
            vitkit("train", args.data, "--time-budget", str(args.time_budget), "--out", f"{tmp}/{i}", *extra)
            accuracy = {s: 100 * accuracy_at(Path(f"{tmp}/{i}"), args.data, s) for s in sizes}
            history = [json.loads(line) for line in Path(f"{tmp}/{i}/metrics.jsonl").read_text().splitlines()]
            rate = training_rate(history)
            for s, a in accuracy.items():
                figures[f"{name}: top-1 at {s} px"] = figure(a, "%", 2)
            figures[f"{name}: training img/s"] = figure(rate, "img/s", 1)
            lines.append(f"| {name} | {' | '.join(f'{a:.1f}%' for a in accuracy.values())} | {rate:.0f} |")
            print(lines[-1], flush=True)
    record("resolution", f"Resolution robustness: fixed size against NaFlex, {args.time_budget:.0f} s each", figures,
           "Each run's held-out split, every image resized to the size (the position table resampled).",
           "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
