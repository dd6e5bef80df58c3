"""The standard speed table: vitkit against timm (same weights) on the issue's workloads, like for
like: every library eager and compiled (torch.compile; with freezing for inference), bf16 the same
way for all (weights cast to bf16 once, or autocast: --bf16), the rows interleaved over rounds
until their spread is known, min/median/max img/s per row, and a difference called a win only
when the two ranges do not overlap; each comparison also paired round by round (the VM's speed
drifts between rounds). Each run appends a record to benchmarks/results/speed.jsonl (speed-tiny.jsonl
for --tiny) with the machine and versions.

    python benchmarks/speed.py [--threads 2] [--repeats 7] [--bf16 weights|autocast] [--tiny --no-record]

The bf16-vs-fp32 agreement of a trained model on real images is benchmarks/agreement.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_figures, record, spread
from vitkit.bench import bench

ROWS = [  # (model, image size, batch, dtype, mode)
    ("vit_b16", 224, 16, "fp32", "infer"),
    ("vit_b16", 224, 16, "bf16", "infer"),
    ("vit_s16", 224, 32, "fp32", "infer"),
    ("vit_s16", 224, 32, "bf16", "infer"),
    ("vit_ti4_32", 32, 128, "bf16", "train"),
]
TINY = [("vit_ti16", 32, 2, "fp32", "infer"), ("vit_ti16", 32, 2, "bf16", "infer"),
        ("vit_ti16", 32, 2, "bf16", "train")]


def shown(s: dict, fmt: str = "{:.1f}") -> str:
    """A Spread as bench returns it (a dict), as `spread` shows a list of measurements."""
    return spread([s["min"], s["median"], s["max"]], fmt)


def tables(results: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """The rows, the comparisons, and the matmul peaks, as markdown lines."""
    rows = ["| model | mode | dtype | batch | library | execution | img/s min / median / max | GFLOP/s | of peak "
            "| of peak, by round |", "|---|---|---|---|---|---|---|---|---|---|"]
    pairs = ["| model | mode | dtype | comparison | vitkit | peer | vitkit / peer (medians) | verdict "
             "| round by round (min / median / max) | rounds won |", "|---|---|---|---|---|---|---|---|---|---|"]
    peaks = []
    for r in results:
        name = f"{r['model']} @{r['image_size'][0]}"
        for row in r["rows"]:
            rows.append(f"| {name} | {r['mode']} | {r['dtype']} | {r['batch']} | {row['library']} | "
                        f"{row['execution']} | {shown(row['img_per_s'])} | {row['gflop_per_s']:.0f} | "
                        f"{100 * row['fraction_of_peak']:.0f}% | "
                        f"{100 * row['fraction_of_round_peak']['median']:.0f}% |")
        for c in r["comparisons"]:
            pairs.append(f"| {name} | {r['mode']} | {r['dtype']} | {c['kind']} | {c['vitkit_execution']} | "
                         f"{c['peer']} {c['peer_execution']} | {c['ratio_of_medians']:.2f} | {c['verdict']} | "
                         f"{shown(c['ratio_by_round'], '{:.2f}')} | {c['rounds_won']} of {r['rounds']} |")
        p = r["matmul_peak"]["tflops"]
        peaks.append(f"{name} {r['mode']} {r['dtype']}: {r['matmul_peak']['dtype']} matmul peak "
                     f"{shown(p, '{:.3f}')} TFLOP/s over {r['rounds']} rounds")
    return rows, pairs, peaks


def notes(results: list[dict], compare: tuple[str, ...], bf16: str) -> str:
    """What every row ran, and whether its logits matched vitkit's fp32 model."""
    _, pairs, peaks = tables(results)
    mismatched = [f"{r['model']} {r['dtype']} {row['library']} {row['execution']}" for r in results
                  for row in r["rows"] if row["matches_reference"] is False]
    handling = "weights cast to bf16 once" if bf16 == "weights" else "fp32 weights under autocast"
    check = f"DIFFER for: {', '.join(mismatched)}" if mismatched else "agree within the dtype's tolerance"
    return ("\n" + "\n".join(pairs) + "\n\n" + "\n".join(f"- {p}" for p in peaks) + "\n\n"
            f"Every library runs the same recipe: eager, and torch.compile (with freezing for inference; compile "
            f"time not timed); bf16 inference with {handling} for every library; training with fp32 master "
            f"weights and bf16 autocast for all (vitkit with its explicit CPU attention, as its trainer does). "
            f"vitkit and {', '.join(compare)} run the same weights; each row's logits were checked against "
            f"vitkit's fp32 model and {check}. Rows interleave within each round, in a rotating order, with the "
            f"matmul peak measured every round; a win is a win only when the two rows' img/s ranges do not overlap. "
            f"'of peak': the median img/s against the median peak; 'of peak, by round': the median over rounds "
            f"of a row's img/s against that round's peak; 'round by "
            f"round': the ratio of the two rows' img/s within each round, and the rounds vitkit was faster in.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="rounds at least (up to 3x, until the spread is known)")
    parser.add_argument("--compare", default="timm")
    parser.add_argument("--bf16", choices=["weights", "autocast"], default="weights")
    parser.add_argument("--tiny", action="store_true", help="tiny models: to check that the script works")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compare = tuple(c for c in args.compare.split(",") if c)
    results = []
    for model, size, batch, dtype, mode in TINY if args.tiny else ROWS:
        results.append(bench(model, size, batch, dtype, mode, compare, args.repeats, compile=True, bf16=args.bf16))
        print("\n".join(tables(results[-1:])[0][2:]), flush=True)
    table, text = "\n".join(tables(results)[0]), notes(results, compare, args.bf16)
    title = f"Speed: vitkit vs {', '.join(compare)}, like for like ({args.threads} threads)"
    record("speed-tiny" if args.tiny else "speed", title, bench_figures(results), text, table,
           save=not args.no_record)


if __name__ == "__main__":
    main()
