"""DeiT distillation on CIFAR-10: a ViT student with a convolutional teacher against the same
student without one, with the same time budget.

    python benchmarks/distill.py --data ../shared/data/cifar10/cifar10-train-jpg.tar.gz \
        [--teacher-budget 600] [--budget 600] [--teacher-model torchvision:resnet18] [--no-record]

1. The teacher: `vitkit train DATA --model torchvision:resnet18 --time-budget T` (a CNN trained
   by vitkit).
2. The student with it: `vitkit train DATA --teacher TEACHER --time-budget B` (vitkit's default
   small-image ViT with a distillation token; the teacher's forward passes count in B).
3. The student without: `vitkit train DATA --time-budget B`.
All three hold out the same 5,000 validation images (the same seed) and are scored on them. Each run
appends a record to benchmarks/results/distill.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, vitkit

ROOT = Path(__file__).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--teacher-model", default="torchvision:resnet18")
    parser.add_argument("--teacher-budget", type=float, default=600)
    parser.add_argument("--budget", type=float, default=600, help="each student's time budget")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher, wall = vitkit("train", args.data, "--model", args.teacher_model, "--time-budget",
                               str(args.teacher_budget), "--out", f"{tmp}/teacher")
        rows.append((f"teacher: {args.teacher_model}", teacher, wall))
        for name, extra in (("ViT student with the teacher (`--teacher`)", ["--teacher", f"{tmp}/teacher"]),
                            ("ViT student without (defaults)", [])):
            result, wall = vitkit("train", args.data, "--time-budget", str(args.budget), "--out", f"{tmp}/{len(rows)}",
                                  *extra)
            rows.append((name, result, wall))
    table = "| run | held-out top-1 (5,000 images) | epochs | wall time |\n|---|---|---|---|\n" + "\n".join(
        f"| {name} | {100 * r['val_top1']:.2f}% | {r['epochs']} | {wall:.0f} s |" for name, r, wall in rows)
    gain = 100 * (rows[1][1]["val_top1"] - rows[2][1]["val_top1"])
    figures: dict = {}
    for name, result, wall in rows:
        short = name.split(" (")[0]
        figures |= {f"{short}: held-out top-1": figure(100 * result["val_top1"], "%"),
                    f"{short}: epochs": result["epochs"], f"{short}: wall time": figure(wall, "s", 1)}
    figures["with the teacher minus without"] = figure(gain, "points", 2)
    record("distill", f"Distillation: a ViT student with a {args.teacher_model} teacher, {args.budget:.0f} s each",
           figures, f"With the teacher minus without: {gain:+.2f} points; the teacher's own training "
           f"({args.teacher_budget:.0f} s budget) is not counted in the student's.", table, save=not args.no_record)


if __name__ == "__main__":
    main()
