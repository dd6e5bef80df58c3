"""Sequences of unequal length: padded batches (in arrival order, or bucketed by length) against
NaViT-packed ones, tokens/s on the CPU; and the masked attention kernel, SDPA against FlexAttention.

    python benchmarks/naflex_packing.py [--model vit_s16] [--images 256] [--batch 32] [--max-tokens 256]
                                        [--min-tokens 64] [--rounds 5] [--threads 2] [--no-record]

Synthetic images of aspect ratios from 1:2 to 2:1 (log-uniform), each under its own token budget
drawn between --min-tokens and --max-tokens (as NaViT samples resolutions; under one budget every
image fills it almost exactly and there is little to gain). The model's forward pass (fp32,
inference) over all of them, rounds taking turns: padded batches of --batch images in arrival
order; the same sorted by length first; and packed sequences of --max-tokens + prefix tokens
(`naflex.pack`), as many sequences a batch as --batch images would fill. tokens/s counts the
images' own tokens only; the padding share is the fraction of computed tokens that are padding.
Then one attention layer at the packed batch's shape: SDPA with the boolean mask (what vitkit
runs) against FlexAttention with the same mask as a block mask (compiled; skipped where it does
not run). A quick check: `python benchmarks/naflex_packing.py --model vit_ti16 --images 32 --batch 8
--max-tokens 64 --min-tokens 16 --rounds 1 --no-record`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, paired_parser, record, shown, take_turns
from vitkit.data.naflex import fit_grid
from vitkit.model import create_model
from vitkit.model.naflex import pack, patchify


def synthetic_grids(count: int, patch: int, low: int, high: int, seed: int = 0) -> list[torch.Tensor]:
    """Images already at their grids (what ToGrid makes): aspect 1:2 to 2:1, budgets low..high."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        aspect = math.exp((torch.rand((), generator=g).item() * 2 - 1) * math.log(2))
        budget = int(torch.randint(low, high + 1, (), generator=g))
        rows, cols = fit_grid((1000, round(1000 * aspect)), (patch, patch), budget)
        images.append(torch.randn(3, rows * patch, cols * patch, generator=g))
    return images


def variants(model: torch.nn.Module, images: list[torch.Tensor], batch: int, length: int) -> dict:
    """name -> (a call over all the images, tokens computed)."""
    patch, prefix = model.config.patch_hw, model.config.num_prefix_tokens
    arrival = [patchify(images[i:i + batch], patch) for i in range(0, len(images), batch)]
    by_length = sorted(images, key=lambda x: x.shape[-1] * x.shape[-2])
    bucketed = [patchify(by_length[i:i + batch], patch) for i in range(0, len(images), batch)]
    packed = pack(images, patch, length + prefix, prefix)
    per_call = max(1, round(batch * sum(x.shape[-1] * x.shape[-2] for x in images) / len(images)
                            / (patch[0] * patch[1]) / length))
    chunks = [type(packed)(*(t[i:i + per_call] for t in packed)) for i in range(0, packed.segments.shape[0], per_call)]
    chunks = [c._replace(segments=renumber(c.segments)) for c in chunks]
    run = torch.inference_mode()
    return {
        "padded, arrival order": (lambda: [run(model)(b) for b in arrival],
                                  sum(b.valid.numel() + prefix * b.valid.shape[0] for b in arrival)),
        "padded, bucketed by length": (lambda: [run(model)(b) for b in bucketed],
                                       sum(b.valid.numel() + prefix * b.valid.shape[0] for b in bucketed)),
        "packed (NaViT)": (lambda: [run(model.forward_packed)(c) for c in chunks], packed.segments.numel()),
    }


def renumber(segments: torch.Tensor) -> torch.Tensor:
    """Segment ids 0..n-1 within a chunk of packed sequences (padding stays -1)."""
    ids = segments[segments >= 0].unique()
    out = torch.full_like(segments, -1)
    out[segments >= 0] = torch.searchsorted(ids, segments[segments >= 0])
    return out


def attention_kernels(model: torch.nn.Module, images: list[torch.Tensor], length: int, rounds: int) -> dict:
    """ms per call of one attention layer at a packed batch's shape: SDPA with the mask vs FlexAttention."""
    prefix, heads = model.config.num_prefix_tokens, model.config.heads
    packed = pack(images[:16], model.config.patch_hw, length + prefix, prefix)
    b, n = packed.segments.shape
    q, k, v = (torch.randn(b, heads, n, model.config.dim // heads) for _ in range(3))
    mask = packed.segments[:, :, None] == packed.segments[:, None, :]
    calls = {"SDPA with a boolean mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])}
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        seg = packed.segments
        block = create_block_mask(lambda bi, h, qi, ki: seg[bi, qi] == seg[bi, ki], b, None, n, n, device="cpu")
        flex = torch.compile(flex_attention)
        flex(q, k, v, block_mask=block)
        calls["FlexAttention (compiled)"] = lambda: flex(q, k, v, block_mask=block)
    except Exception as e:  # not every build runs it on the CPU
        print(f"FlexAttention skipped: {type(e).__name__}: {str(e)[:200]}")
    rates = take_turns(calls, rounds, 1)
    return {name: [1000 / r for r in values] for name, values in rates.items()}


def main() -> None:
    parser = paired_parser(__doc__, 5)
    parser.add_argument("--model", default="vit_s16")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--min-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model(args.model, num_classes=10, dynamic_size=True).eval()
    images = synthetic_grids(args.images, model.config.patch_hw[0], args.min_tokens, args.max_tokens)
    own = sum(x.shape[-1] * x.shape[-2] for x in images) // (model.config.patch_hw[0] ** 2) \
        + model.config.num_prefix_tokens * len(images)
    calls = variants(model, images, args.batch, args.max_tokens)
    start = time.perf_counter()
    rates = take_turns({name: call for name, (call, _) in calls.items()}, args.rounds, own)
    figures, lines = {}, ["| batches | tokens/s (min / median / max) | padding |", "|---|---|---|"]
    for name, (_, computed) in calls.items():
        figures[f"{name}: tokens/s"] = figure(rates[name], "tokens/s", 0)
        figures[f"{name}: padding"] = figure(100 * (1 - own / computed), "%", 1)
        lines.append(f"| {name} | {shown(figures[f'{name}: tokens/s'])} | {100 * (1 - own / computed):.1f}% |")
    for name, ms in attention_kernels(model, images, args.max_tokens, args.rounds).items():
        figures[f"attention layer, {name}"] = figure(ms, "ms", 2)
        lines.append(f"| attention layer, {name} | {shown(figures[f'attention layer, {name}'])} | |")
    record("naflex-packing", f"Padded against packed batches, {args.model}, {args.min_tokens}-{args.max_tokens} "
           "tokens an image, aspect 1:2 to 2:1", figures, f"fp32 inference on the CPU, {args.threads} threads; "
           f"{time.perf_counter() - start:.0f} s in all.", "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
