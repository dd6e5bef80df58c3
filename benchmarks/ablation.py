"""What each choice of the small-image default buys on CIFAR-10: one `vitkit train` per row, the
same budget, data, held-out images and seed, one after another in one run.

    python benchmarks/ablation.py [--data ../shared/data/cifar10/cifar10-train-jpg.tar.gz] \
        [--budget 1800] [--rows default,xiao-stem,half-patches,all-patches,plain,paper,eager] [--no-record]

Rows (each is `vitkit train DATA --time-budget B --seed 1` with the options shown):
  default      the default: a conv stem (at each of two resolutions a 3x3 stride-2 convolution then
               a 3x3 stride-1 one), mean pooling, 70% of each training image's patch tokens
               dropped (PatchDropout), compiled
  xiao-stem    Xiao et al.'s stem instead: the two 3x3 stride-2 convolutions alone
  half-patches the default keeping half of the patch tokens (patch dropout 0.5, the
               default until 0.7 replaced it)
  all-patches  the default without patch dropout: every block sees every patch token
  plain        the paper's patch projection (one 4x4 stride-4 convolution) instead of the conv stem
  paper        the paper's ViT: plain patches, a class token and its output as the pooled feature
  eager        the default without torch.compile
The table gives the model, img/s while training, epochs and the top-1 on the 5,000 held-out
images. 30 minutes per row is the question the default answers; a shorter --budget ranks the
choices in less time, and the rows run back to back so that the machine's drift touches them alike.
Each run appends a record to benchmarks/results/ablation.jsonl (ablation-<B>s.jsonl for another
--budget).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, training_rate, vitkit
from vitkit.train.recipe import SMALL_IMAGES
from vitkit.weights import load

DROP = f"patch dropout {SMALL_IMAGES[1]['patch_dropout']}"  # the default's, read from the recipe
ROWS = {
    "default": (f"conv stem of four convolutions, mean pooling, {DROP}, compiled (the default: no options)",
                []),
    "xiao-stem": (f"conv stem of two stride-2 convolutions (Xiao et al.), mean pooling, {DROP}, compiled",
                  ["--model-option", "stem_depth=1"]),
    "half-patches": ("conv stem, mean pooling, patch dropout 0.5, compiled", ["--patch-dropout", "0.5"]),
    "all-patches": ("conv stem, mean pooling, no patch dropout, compiled", ["--patch-dropout", "0"]),
    "plain": (f"plain 4x4 patches, mean pooling, {DROP}, compiled",
              ["--model-option", "patch_embed=conv"]),
    "paper": ("the paper's ViT: plain 4x4 patches, class token, every patch, compiled",
              ["--model-option", "patch_embed=conv", "--model-option", "class_token=true",
               "--model-option", "pool=cls", "--patch-dropout", "0"]),
    "eager": (f"conv stem, mean pooling, {DROP}, not compiled", ["--no-compile"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).parents[2] / "shared/data/cifar10/cifar10-train-jpg.tar.gz"))
    p.add_argument("--budget", type=float, default=1800.0, help="seconds per row")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = p.parse_args()
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}; choose among {', '.join(ROWS)}")

    lines = ["| model (options) | parameters | img/s | epochs | held-out top-1 | wall time |",
             "|---|---|---|---|---|---|"]
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            what, options = ROWS[name]
            out = Path(tmp) / name
            result, wall = vitkit("train", args.data, "--time-budget", str(args.budget), "--seed", "1",
                                  "--out", str(out), *options)
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            rate = training_rate(history)
            params = f"{load(out).num_parameters():,}"
            shown = " ".join(options) or "none"
            lines.append(f"| {what} (`{shown}`) | {params} | {rate:.0f} | {result['epochs']} | "
                         f"{100 * result['val_top1']:.2f}% | {wall:.0f} s |")
            print(lines[-1], flush=True)
            figures |= {f"{name}: held-out top-1": figure(100 * result["val_top1"], "%"),
                        f"{name}: img/s": figure(rate, "img/s", 1), f"{name}: epochs": result["epochs"]}
    notes = ("img/s: over epochs 2 and later (epoch 1 includes compilation). One seed each: "
             "a difference of a point or two is within seed noise.\n")
    title = f"What each choice buys on CIFAR-10: {args.budget:.0f} s per row"
    benchmark = "ablation" if args.budget == 1800 else f"ablation-{args.budget:.0f}s"
    record(benchmark, title, figures, notes, "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
