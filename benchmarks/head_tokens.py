"""What running the last block for the class token alone buys (`ViTConfig.head_tokens`).

    python benchmarks/head_tokens.py [--rounds 12] [--no-record]

The same model, with the same weights, twice: `model(x)`, whose last block computes only the class
token's output, and the model as it was before (and as the other libraries compute it), whose
last block computes every token before the head reads the class token. The two take turns round
by round in one process, so that the VM's drift hits both; each round's ratio pairs the two runs
next to each other in time. Rows: vit_ti4_32 training (the compiled step of cpu_kernels.py: bf16
autocast, fused AdamW, the CPU training kernels, batch 128) and ViT-B/16 bf16 inference (weights
cast to bf16, compiled with freezing, batch 16), as `vitkit bench` and speed.py run them. Each run
appends a record to benchmarks/results/head-tokens.jsonl.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, paired_parser, record, spread, take_turns
from cpu_kernels import BATCH, STEPS, training_step
from vitkit import ViT, flops, get_config
from vitkit.model.fast import for_inference, use_training_kernels

INFER_BATCH, INFER_CALLS = 16, 2  # per timed round


class EveryToken(ViT):
    """The model as the other libraries compute it: the last block for every token, then the head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_tokens(x)[0])


def fresh(cls: type[ViT], name: str) -> ViT:
    torch.manual_seed(0)  # the same weights for both variants
    model = cls(get_config(name, num_classes=10))
    torch.nn.init.normal_(model.head.weight, std=model.config.dim**-0.5)
    return model


def training(model: ViT) -> Callable[[], None]:
    return training_step(use_training_kernels(model, torch.device("cpu")))


def inference(model: ViT) -> Callable[[], None]:
    fast = for_inference(model, "bf16", compile=True)
    x = torch.randn(INFER_BATCH, 3, *model.config.image_hw, dtype=torch.bfloat16)

    def calls() -> None:
        with torch.inference_mode():
            for _ in range(INFER_CALLS):
                fast(x)
    return calls


ROWS = {  # name -> (preset, a round's work on a model, images per round)
    "vit_ti4_32 training": ("vit_ti4_32", training, STEPS * BATCH),
    "ViT-B/16 bf16 inference": ("vit_b16", inference, INFER_CALLS * INFER_BATCH),
}


def main() -> None:
    parser = paired_parser(__doc__, rounds=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| what | last block | GMACs per image | img/s (min / median / max) | class token / every token, "
             "per round (min / median / max) | rounds faster |", "|---|---|---|---|---|---|"]
    figures: dict = {}
    for what, (preset, make, images) in ROWS.items():
        models = {"every token": fresh(EveryToken, preset), "class token": fresh(ViT, preset)}
        steps = {variant: make(model) for variant, model in models.items()}
        rates = take_turns(steps, args.rounds, images)
        ratios = [a / b for a, b in zip(rates["class token"], rates["every token"], strict=True)]
        won = f"{sum(r > 1 for r in ratios)} of {len(ratios)}"
        for variant, rate in rates.items():
            gmacs = flops(models[variant].config, every_token=variant == "every token") / 1e9
            paired = f"{spread(ratios, '{:.3f}x')} | {won}" if variant == "class token" else "- | -"
            lines.append(f"| {what} | {variant} | {gmacs:.3f} | {spread(rate, '{:.1f}')} | {paired} |")
            figures[f"{what}, {variant}: img/s"] = figure(rate, "img/s", 1)
            figures[f"{what}, {variant}: GMACs per image"] = figure(gmacs, "GMACs", 3)
        figures[f"{what}: class token / every token, per round"] = figure(ratios, "x", 3)
        figures[f"{what}: rounds faster"] = won
        print("\n".join(lines[-2:]), flush=True)
    table = "\n".join(lines)
    notes = (f"{args.rounds} rounds, the two variants alternating which goes first; training: {STEPS} compiled steps "
             f"of batch {BATCH} per round; inference: {INFER_CALLS} calls of batch {INFER_BATCH}.")
    record("head-tokens", "The last block for the class token alone", figures, notes, table,
           save=not args.no_record, device="cpu")


if __name__ == "__main__":
    main()
