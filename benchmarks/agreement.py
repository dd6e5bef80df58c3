"""bf16 against fp32 on a trained model and real images: how often the fast paths keep the fp32
model's top-1 class, their accuracy beside the fp32 model's, and the largest logit difference,
on the held-out split of the data (test where there is one, else the run's validation split).

    python benchmarks/agreement.py RUN [--data SPEC] [--images 2000] [--no-compile] [--no-record]

RUN is a `vitkit train` run (or any save_pretrained directory); SPEC defaults to the data the run
was trained on. For example, after
`vitkit train ../shared/data/cifar10/cifar10-train-jpg.tar.gz --time-budget 1800 --out runs/cifar`:
`python benchmarks/agreement.py runs/cifar`. Each run appends a record to
benchmarks/results/agreement.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record
from vitkit.bench import agreement_on_run

PATHS = [("weights", False), ("weights", True), ("autocast", False), ("autocast", True)]  # (bf16 as, compiled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--data", metavar="SPEC", help="real images (default: the run's data)")
    parser.add_argument("--images", type=int, default=2000, help="images, spread evenly over the held-out split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="eager paths only")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| bf16 as | execution | images | top-1 agreement with fp32 | accuracy bf16 / fp32 | "
             "largest logit difference (of the largest logit) | tolerance of tests/test_fast.py |",
             "|---|---|---|---|---|---|---|"]
    figures: dict = {}
    for bf16, compiled in PATHS:
        if compiled and args.no_compile:
            continue
        a = agreement_on_run(args.run, args.data, args.images, "bf16", bf16, compiled)
        lines.append(f"| {bf16} | {a['execution']} | {a['images']} | {100 * a['top1_agreement']:.2f}% | "
                     f"{100 * a['accuracy_fast']:.2f}% / {100 * a['accuracy_fp32']:.2f}% | {a['max_abs_error']:.3g} "
                     f"({100 * a['max_rel_error']:.2f}%) | {100 * a['tolerance']:.1f}% (depth {a['depth']}) |")
        print(lines[-1], flush=True)
        name = f"bf16 {bf16}, {a['execution']}"
        figures |= {f"{name}: top-1 agreement with fp32": figure(100 * a["top1_agreement"], "%", 2),
                    f"{name}: accuracy": figure(100 * a["accuracy_fast"], "%", 2),
                    f"{name}: largest logit difference": figure(100 * a["max_rel_error"], "% of the largest logit", 2)}
    figures["fp32: accuracy"] = figure(100 * a["accuracy_fp32"], "%", 2)
    figures["tolerance of the tests"] = figure(100 * a["tolerance"], "% of the largest logit", 2)
    notes = (f"Run {args.run}; images: {a['data']} [{a['split']}], spread evenly over the split. The fp32 model "
             "is the reference; 'weights': bf16 weights and inputs (vitkit.for_inference), 'autocast': fp32 "
             "weights under bf16 autocast; compiled: torch.compile with freezing.")
    record("agreement", "Agreement: bf16 vs fp32 on a trained model and real images", figures, notes,
           "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
