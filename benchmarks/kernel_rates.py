"""Where the training step's time goes: the linears, convolutions and GELU, each kernel timed alone.

    python benchmarks/kernel_rates.py [--rounds 8] [--no-record]

Much of vitkit's CPU training step runs in kernels that any PyTorch ViT runs (oneDNN's matmuls and
convolutions, ATen's GELU). This script times them one by one, in bf16 at the shapes of the two
models of #13's goals (vit_ti4_32 and the CIFAR-10 default, batch 128), with the layers and their
counts read from one forward pass of each model in training mode (patch dropout included). For
each linear and convolution: the forward, the input gradient and the weight gradient; for GELU,
its forward and backward next to two elementwise operations that only move the same memory (ReLU's
forward, a multiply). The compiled training step itself and a 2048^3 bf16 matmul (the peak) run in
the same rounds, every kernel taking turns with the others. Not timed: attention's batched
matmuls and softmax, the norms, the residual adds, AdamW.

Under the table, per model: the timed kernels' share of the step (each kernel's time alone, summed
over the step's layers), and an estimate of what the step would save if every weight gradient ran
at its forward's rate and GELU cost only its memory traffic. Kernels timed alone are not the
step, so both are estimates, not measurements of a step. Each run appends a record to
benchmarks/results/kernel-rates.jsonl.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, paired_parser, record, spread, take_turns
from cpu_kernels import BATCH, MODELS, STEPS, training_step
from vitkit import ViT
from vitkit.model.fast import use_training_kernels

CALLS = 5  # calls of a kernel per timed turn
PEAK = 2048
# kernel -> the kernel of the same layer it is measured against in the estimate (a weight gradient
# against its forward; GELU's two against the elementwise operation that moves the same memory)
REFERENCE = {"weight grad": "forward", "GELU forward": "ReLU forward", "GELU backward": "multiply"}
MEMORY_ONLY = ("ReLU forward", "multiply")  # references, not kernels of the step
MIN_TOKENS = 4  # per image: smaller layers (the head, the last block's class-token rows) are left out


def layers(model: ViT) -> Counter:
    """(kind, shape...) -> how many times one training forward pass runs it."""
    seen: Counter = Counter()

    def count(module: nn.Module, args: tuple) -> None:
        x = args[0]
        if isinstance(module, nn.Conv2d):
            n, c, size, _ = x.shape
            seen["conv", n, c, size, module.out_channels, module.kernel_size[0], module.stride[0],
                 module.padding[0]] += 1
        elif x.shape[:-1].numel() >= MIN_TOKENS * BATCH:  # a linear or GELU over enough tokens
            if isinstance(module, nn.Linear):
                seen["linear", x.shape[:-1].numel(), module.in_features, module.out_features] += 1
            else:
                seen["gelu", x.numel()] += 1

    hooks = [module.register_forward_pre_hook(count) for module in model.modules()
             if isinstance(module, (nn.Linear, nn.Conv2d, nn.GELU))]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.train()(torch.randn(BATCH, 3, *model.config.image_hw))
    for hook in hooks:
        hook.remove()
    return seen


def kernels(layer: tuple) -> tuple[str, float, dict[str, Callable[[], object]]]:
    """A layer's description, its forward FLOPs and its kernels (bf16, the step's layouts). GELU's
    come with two that only move memory: ReLU's forward (one read, one write, as GELU's forward)
    and a multiply (two reads, one write, as its backward)."""
    bf16 = dict(dtype=torch.bfloat16)
    if layer[0] == "linear":
        _, tokens, fan_in, fan_out = layer
        x, w = torch.randn(tokens, fan_in, **bf16), torch.randn(fan_out, fan_in, **bf16)
        dy = torch.randn(tokens, fan_out, **bf16)
        timed = {"forward": lambda: F.linear(x, w), "input grad": lambda: dy @ w, "weight grad": lambda: dy.t() @ x}
        return f"linear {fan_in}->{fan_out}, {tokens} tokens", 2 * tokens * fan_in * fan_out, timed
    if layer[0] == "conv":
        _, n, c, size, out, k, stride, pad = layer
        channels_last = dict(memory_format=torch.channels_last)  # oneDNN's own layout (acdb)
        x = torch.randn(n, c, size, size, **bf16).contiguous(**channels_last)
        w = torch.randn(out, c, k, k, **bf16).contiguous(**channels_last)
        dy = F.conv2d(x, w, stride=stride, padding=pad).contiguous(**channels_last)

        def grad(mask: list[bool]) -> Callable[[], object]:
            return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1],
                                                               False, [0, 0], 1, mask)
        timed = {"forward": lambda: F.conv2d(x, w, stride=stride, padding=pad),
                 "input grad": grad([True, False, False]), "weight grad": grad([False, True, False])}
        return f"conv {k}x{k}/{stride} {c}->{out} at {size}x{size}", 2 * dy.numel() * c * k * k, timed
    _, numel = layer
    x, dy = torch.randn(numel, **bf16), torch.randn(numel, **bf16)
    timed = {"GELU forward": lambda: F.gelu(x), "GELU backward": lambda: torch.ops.aten.gelu_backward(dy, x),
             "ReLU forward": lambda: torch.relu(x), "multiply": lambda: dy * x}
    return f"GELU, {numel:,} values", 0, timed


def repeated(kernel: Callable[[], object]) -> Callable[[], None]:
    """A turn of CALLS calls: a single call of the smallest kernels is too short to time alone."""
    def turn() -> None:
        for _ in range(CALLS):
            kernel()
    return turn


def main() -> None:
    parser = paired_parser(__doc__, rounds=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a = torch.randn(PEAK, PEAK, dtype=torch.bfloat16)
    steps: dict[str, Callable[[], None]] = {"peak": repeated(lambda: a @ a)}
    rows: list[tuple[str, str, str, str, float, int]] = []  # model, layer, kernel, its first kernel, FLOPs, count
    in_step: dict[str, set[str]] = {}  # per model, the kernels its training step runs (steps' keys)
    for name, config in MODELS.items():
        torch.manual_seed(0)
        model = ViT(config())
        in_step[name] = set()
        for layer, count in layers(model).items():
            label, flop, timed = kernels(layer)
            reads_image = layer[0] == "conv" and layer[2] == model.config.in_channels
            for kernel, fn in timed.items():
                key = f"{name}|{label}|{kernel}"
                steps[key] = repeated(fn)
                rows.append((name, label, kernel, next(iter(timed)), flop, count))
                if kernel not in MEMORY_ONLY and not (reads_image and kernel == "input grad"):  # the image
                    in_step[name].add(key)  # needs no gradient
        steps[f"{name}|step"] = training_step(use_training_kernels(model, torch.device("cpu")))
    # take_turns with 1 "image" per turn gives turns per second: a call's time is 1 / (rate * CALLS)
    rates = take_turns(steps, args.rounds, 1)
    ms = {key: [1e3 / (r * CALLS) for r in rate] for key, rate in rates.items() if not key.endswith("|step")}
    step_ms = {name: [1e3 / (r * STEPS) for r in rates[f"{name}|step"]] for name in MODELS}
    peak = [2 * PEAK**3 / (t / 1e3) / 1e12 for t in ms["peak"]]

    lines = ["| model | layer | per step | kernel | ms (min / median / max) | TFLOP/s (median) | "
             "time / the layer's first kernel's, per round (min / median / max) |",
             "|---|---|---|---|---|---|---|"]
    figures: dict = {}
    timed_ms = {name: [0.0] * args.rounds for name in MODELS}  # the step's timed kernels, summed, per round
    saved = {name: [0.0] * args.rounds for name in MODELS}  # the estimate, ms per step, per round
    for name, label, kernel, first, flop, count in rows:
        key = f"{name}|{label}|{kernel}"
        t = ms[key]
        tflops = f"{statistics.median(flop / (x / 1e3) / 1e12 for x in t):.2f}" if flop else "-"
        ratio = [x / f for x, f in zip(t, ms[f"{name}|{label}|{first}"], strict=True)]
        against = "-" if kernel == first else spread(ratio, "{:.2f}x")
        note = "" if key in in_step[name] else " (not in the step)"
        lines.append(f"| {name} | {label} | {count} | {kernel}{note} | {spread(t, '{:.2f}')} | {tflops} "
                     f"| {against} |")
        figures[f"{name}, {label}: {kernel}"] = figure(t, "ms", 3)
        if kernel != first:
            figures[f"{name}, {label}: {kernel} / {first}, per round"] = figure(ratio, "x", 3)
        if key in in_step[name]:
            timed_ms[name] = [total + count * x for total, x in zip(timed_ms[name], t, strict=True)]
        if kernel in REFERENCE:
            reference = ms[f"{name}|{label}|{REFERENCE[kernel]}"]
            saved[name] = [total + count * (x - r) for total, x, r in zip(saved[name], t, reference, strict=True)]
    lines.append(f"| - | bf16 matmul {PEAK}^3 (the peak) | - | - | {spread(ms['peak'], '{:.2f}')} | "
                 f"{statistics.median(peak):.2f} | - |")
    notes = [f"{args.threads} threads, {args.rounds} rounds; each turn {CALLS} calls of one kernel, every kernel and "
             f"each model's compiled training step (batch {BATCH}, {STEPS} steps a turn) taking turns within a round. "
             "'per step': how many times one training forward runs the layer (its backward runs each gradient "
             "once; the image needs no gradient, so the first convolution's input gradient is not in the step). "
             f"Left out: layers that see fewer than {MIN_TOKENS} tokens per image (the head, the last block's "
             "class-token rows), a fraction of a millisecond each; not timed: attention's batched matmuls and "
             "softmax, the norms, the residual adds, AdamW."]
    for name in MODELS:
        share = [x / step for x, step in zip(timed_ms[name], step_ms[name], strict=True)]
        could = [x / step for x, step in zip(saved[name], step_ms[name], strict=True)]
        figures |= {f"{name}: compiled step": figure(step_ms[name], "ms", 1),
                    f"{name}: timed kernels' share of the step": figure([100 * x for x in share], "%", 1),
                    f"{name}: estimated saving": figure([100 * x for x in could], "%", 1)}
        notes.append(f"- {name}: the compiled step {spread(step_ms[name], '{:.0f}')} ms; the timed kernels, each "
                     f"alone, add up to {spread(share, '{:.0%}')} of it; weight gradients at their forward's "
                     "rate and GELU at the cost of its memory traffic would save an estimated "
                     f"{spread(could, '{:.0%}')} of it (per round, min / median / max).")
    figures["bf16 matmul peak"] = figure(peak, "TFLOP/s", 3)
    record("kernel-rates", "Where the training step's time goes: the linears, convolutions and GELU, kernel by "
           "kernel", figures, "\n".join(notes), "\n".join(lines), save=not args.no_record, device="cpu")


if __name__ == "__main__":
    main()
