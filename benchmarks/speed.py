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

ROWS = [  # (model, image size, batch, dtype, mode, vitkit compiled, images for the fp32 agreement check)
    ("vit_b16", 224, 16, "fp32", "infer", True, 0),
    ("vit_b16", 224, 16, "bf16", "infer", True, 256),
    ("vit_s16", 224, 32, "fp32", "infer", True, 0),
    ("vit_s16", 224, 32, "bf16", "infer", True, 1000),
    ("vit_ti4_32", 32, 128, "bf16", "train", False, 0),
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
    peaks, agreements = {}, []
    for model, size, batch, dtype, mode, compiled, agree in ROWS:
        r = bench(model, size, batch, dtype, mode, compare, args.repeats, compile=compiled, agreement_images=agree)
        peaks[dtype] = r["matmul_peak_tflops"]
        for name, row in r["results"].items():
            ratio = f"{row['vitkit_speedup']:.2f}" if "vitkit_speedup" in row else ""
            label = f"{name} (compiled)" if name == "vitkit" and compiled else name
            lines.append(f"| {model} @{size} | {mode} | {dtype} | {batch} | {label} | {row['img_per_s']:.1f} | "
                         f"{row['gflop_per_s']:.0f} | {100 * row['fraction_of_peak']:.0f}% | {ratio} |")
            print(lines[-1], flush=True)
        if r["agreement_with_fp32"]:
            a = r["agreement_with_fp32"]
            agreements.append(f"{model} {dtype}: top-1 agreement with the fp32 model {100 * a['top1_agreement']:.1f}% "
                              f"on {a['images']} random images, largest logit difference {a['max_abs_error']:.3f}")
            print(agreements[-1], flush=True)
    notes = "Matmul peaks measured in the same run: " + ", ".join(f"{d} {p:.2f} TFLOP/s" for d, p in peaks.items())
    notes += (". vitkit infers with its fast path (`vitkit.model.fast.for_inference`: weights cast to the dtype "
              "once, torch.compile with freezing; compile time not timed); peers run eager, bf16 through "
              "autocast. Training uses autocast for all, and vitkit SDPA's math backend on CPU. "
              "Ratios are from the same run.\n\n" + "\n".join(f"- {a}" for a in agreements))
    record(f"Speed: vitkit vs {', '.join(compare)} ({args.threads} threads)", this_command(), "\n".join(lines), notes)


if __name__ == "__main__":
    main()
