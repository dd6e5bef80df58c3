"""The standard speed table: vitkit against timm (same weights) on the issue's workloads, each row
one `vitkit.bench.bench` run, recorded in RESULTS.md with the machine and versions.

    python benchmarks/speed.py [--threads 2] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import record, this_command
from vitkit.bench import bench

ROWS = [  # (model, image size, batch, dtype, mode)
    ("vit_b16", 224, 16, "fp32", "infer"),
    ("vit_b16", 224, 16, "bf16", "infer"),
    ("vit_s16", 224, 32, "fp32", "infer"),
    ("vit_s16", 224, 32, "bf16", "infer"),
    ("vit_ti4_32", 32, 128, "bf16", "train"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", default="timm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compare = tuple(c for c in args.compare.split(",") if c)
    lines = ["| model | mode | dtype | batch | library | img/s | GFLOP/s | of matmul peak | vitkit / peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    peaks = {}
    for model, size, batch, dtype, mode in ROWS:
        r = bench(model, size, batch, dtype, mode, compare, args.repeats)
        peaks[dtype] = r["matmul_peak_tflops"]
        for name, row in r["results"].items():
            ratio = f"{row['vitkit_speedup']:.2f}" if "vitkit_speedup" in row else ""
            lines.append(f"| {model} @{size} | {mode} | {dtype} | {batch} | {name} | {row['img_per_s']:.1f} | "
                         f"{row['gflop_per_s']:.0f} | {100 * row['fraction_of_peak']:.0f}% | {ratio} |")
        print(lines[-1], flush=True)
    notes = "Matmul peaks measured in the same run: " + ", ".join(f"{d} {p:.2f} TFLOP/s" for d, p in peaks.items())
    notes += (". vitkit infers bf16 with bf16 weights; peers with bf16 autocast; training uses autocast "
              "for all. Ratios are from the same run.")
    record(f"Speed: vitkit vs {', '.join(compare)} ({args.threads} threads)", this_command(), "\n".join(lines), notes)


if __name__ == "__main__":
    main()
