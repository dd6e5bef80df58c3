"""FlexiViT: one model trained at patch sizes drawn per step, evaluated at each, against separate
models trained at each patch size in the same total time.

    python benchmarks/flexi_patch.py [--data ../shared/data/cifar10/cifar10-train-jpg.tar.gz] [--time-budget 900]
                                     [--patches 2,4,8] [--no-record]

`vitkit train --flexi-patch 2,4,8` for --time-budget seconds; then one run per patch size P with
`--model-option patch_size=P --model-option patch_embed=conv` (the same conv patch embedding the
FlexiViT run gets) for a third of the budget each: equal total time. Each model is evaluated with
`vitkit eval` (the FlexiViT one with --patch-size P, its kernel resized by the pseudo-inverse) and
timed at each patch size: forward images/s on a batch of 256, fp32, on the CPU, rounds taking turns.
A quick check: `python benchmarks/flexi_patch.py --data digits --time-budget 12 --no-record`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, take_turns, vitkit
from vitkit.infer import open_run
from vitkit.model.flexi import at_patch_size

SHARED = Path(__file__).parents[2] / "shared"


def forward_rates(models: dict[str, torch.nn.Module], rounds: int = 3, batch: int = 256) -> dict[str, list[float]]:
    """Forward images/s of each model on a batch of random images of its size."""
    steps = {}
    for name, model in models.items():
        x = torch.randn(batch, model.config.in_channels, *model.config.image_hw)
        steps[name] = lambda m=model, x=x: torch.inference_mode()(m)(x)
    return take_turns(steps, rounds, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED / "data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--time-budget", type=float, default=900.0)
    parser.add_argument("--patches", default="2,4,8")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    patches = [int(p) for p in args.patches.split(",")]
    share = args.time_budget / len(patches)
    figures, lines = {}, ["| model | patch | top-1 | forward img/s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        vitkit("train", args.data, "--time-budget", str(args.time_budget), "--flexi-patch", args.patches,
               "--out", f"{tmp}/flexi")
        for p in patches:
            vitkit("train", args.data, "--time-budget", str(share), "--model-option", f"patch_size={p}",
                   "--model-option", "patch_embed=conv", "--out", f"{tmp}/p{p}")
        models, accuracy = {}, {}
        for p in patches:
            flexi = open_run(f"{tmp}/flexi").model
            models[f"FlexiViT ({args.time_budget:.0f} s) at patch {p}"] = at_patch_size(flexi, p).eval()
            models[f"patch-{p} model ({share:.0f} s)"] = open_run(f"{tmp}/p{p}").model.eval()
            accuracy[f"FlexiViT ({args.time_budget:.0f} s) at patch {p}"] = vitkit(
                "eval", f"{tmp}/flexi", "--patch-size", str(p))[0]["top1"]
            accuracy[f"patch-{p} model ({share:.0f} s)"] = vitkit("eval", f"{tmp}/p{p}")[0]["top1"]
        rates = forward_rates(models)
    for name, model in models.items():
        figures[f"{name}: top-1"] = figure(100 * accuracy[name], "%", 2)
        figures[f"{name}: forward"] = figure(rates[name], "img/s", 1)
        lines.append(f"| {name} | {model.config.patch_size} | {100 * accuracy[name]:.2f}% | "
                     f"{sorted(rates[name])[len(rates[name]) // 2]:.0f} |")
    record("flexi-patch", f"FlexiViT: one model at patch sizes {args.patches} against one model each, "
           f"{args.time_budget:.0f} s in all", figures, "Held-out split; forward fp32, batch 256, CPU.",
           "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
