"""What the trainer's CPU GELU buys: the compiled training step with nn.GELU against `AtenGELU`.

    python benchmarks/cpu_kernels.py [--rounds 20] [--no-record]

Under torch.compile, nn.GELU becomes inductor's own generated erf; `use_training_kernels` swaps
in `AtenGELU`, which keeps ATen's vectorised kernel (the same values, bit for bit). Both variants
train the same model in one process (bf16 autocast, AdamW, the explicit CPU attention, batch 128)
and take turns round by round, so that the VM's drift hits both; each round's ratio pairs the two
runs next to each other in time. Each run appends a record to benchmarks/results/cpu-kernels.jsonl.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, paired_parser, record, spread, take_turns
from vitkit import ViT, ViTConfig, get_config
from vitkit.model.fast import AtenGELU, use_training_kernels
from vitkit.train.recipe import SMALL_IMAGES

MODELS = {  # name -> config: the bench's vit_ti4_32, and the CIFAR-10 default (its patch dropout)
    "vit_ti4_32": lambda: get_config("vit_ti4_32", num_classes=10),
    "CIFAR-10 default": lambda: ViTConfig(image_size=32, num_classes=10, **SMALL_IMAGES[0],
                                          patch_dropout=SMALL_IMAGES[1]["patch_dropout"]),
}
BATCH, STEPS = 128, 5  # steps per timed round


def with_gelu(config, gelu: str) -> ViT:
    """A fresh model with the trainer's CPU kernels, and nn.GELU or (as the trainer) AtenGELU."""
    torch.manual_seed(0)
    model = use_training_kernels(ViT(config), torch.device("cpu"))
    if gelu == "nn.GELU":
        for module in model.modules():
            if isinstance(getattr(module, "act", None), AtenGELU):
                module.act = nn.GELU(module.act.approximate)
    return model


def training_step(model: ViT) -> Callable[[], None]:
    """STEPS compiled training steps of `model` (forward, backward, AdamW), as the trainer runs
    them on CPU: bf16 autocast, fused AdamW, batch BATCH."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(BATCH, 3, *model.config.image_hw)
    y = torch.randint(0, 10, (BATCH,))

    @torch.compile
    def forward_backward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()

    def steps() -> None:
        for _ in range(STEPS):
            forward_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return steps


def main() -> None:
    parser = paired_parser(__doc__, rounds=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| model | GELU | img/s (min / median / max) | AtenGELU / nn.GELU, per round (min / median / max) |",
             "|---|---|---|---|"]
    figures: dict = {}
    for name, config in MODELS.items():
        steps = {gelu: training_step(with_gelu(config(), gelu)) for gelu in ("nn.GELU", "AtenGELU")}
        rates = take_turns(steps, args.rounds, STEPS * BATCH)
        ratios = [a / b for a, b in zip(rates["AtenGELU"], rates["nn.GELU"], strict=True)]
        for gelu, rate in rates.items():
            paired = spread(ratios, "{:.2f}x") if gelu == "AtenGELU" else "-"
            lines.append(f"| {name} | {gelu} | {spread(rate, '{:.0f}')} | {paired} |")
            figures[f"{name}, {gelu}: img/s"] = figure(rate, "img/s", 1)
        figures[f"{name}: AtenGELU / nn.GELU, per round"] = figure(ratios, "x", 3)
        print("\n".join(lines[-2:]), flush=True)
    table = "\n".join(lines)
    notes = (f"Compiled training step (forward, backward, AdamW), batch {BATCH}, bf16 autocast, {args.threads} "
             f"threads; {args.rounds} rounds of {STEPS} steps, the two variants alternating which goes first.")
    record("cpu-kernels", "CPU training kernels: ATen's GELU against inductor's", figures, notes, table,
           save=not args.no_record, device="cpu")


if __name__ == "__main__":
    main()
