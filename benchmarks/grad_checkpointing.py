"""Gradient checkpointing: peak memory and img/s of ViT-L/16 training with and without it.

    python benchmarks/grad_checkpointing.py [--model vit_l16] [--batch 8] [--steps 4] [--no-record]

Each setting runs in a fresh process (so that its peak memory is its own): vitkit's model with
AdamW and bf16 autocast, as `vitkit train` runs it; the first step is not timed. Peak memory is
the process's resident set (CPU) or PyTorch's peak allocation (GPU). Each run appends a record to
benchmarks/results/grad-checkpointing.jsonl.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record


def one(model_name: str, batch: int, steps: int, checkpointing: bool) -> dict:
    import torch
    import torch.nn.functional as F

    import vitkit

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = vitkit.create_model(model_name, num_classes=10).to(device).train()
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, *model.config.image_hw, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rates = sorted(batch / t for t in times[1:])
    return {"checkpointing": checkpointing, "peak_gib": peak / 2**30, "img_per_s": rates, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_l16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    parser.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.batch, args.steps, args.one == "on")))
        return
    rows = []
    for setting in ("off", "on"):
        done = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                               "--steps", str(args.steps), "--one", setting], capture_output=True, text=True,
                              check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
    lines = ["| gradient checkpointing | peak memory | img/s (min / median / max) |", "|---|---|---|"]
    figures: dict = {}
    for r in rows:
        rates = r["img_per_s"]
        lines.append(f"| {'on' if r['checkpointing'] else 'off'} | {r['peak_gib']:.2f} GiB | "
                     f"{rates[0]:.2f} / {rates[len(rates) // 2]:.2f} / {rates[-1]:.2f} |")
        setting = "on" if r["checkpointing"] else "off"
        figures |= {f"checkpointing {setting}: peak memory": figure(r["peak_gib"], "GiB", 2),
                    f"checkpointing {setting}: img/s": figure(rates, "img/s", 2)}
    record("grad-checkpointing", f"Gradient checkpointing: {args.model} training, batch {args.batch}, bf16 "
           f"autocast, {rows[0]['device']}", figures, f"{args.steps} timed steps per setting, each setting in its "
           "own process.", "\n".join(lines), save=not args.no_record, device=rows[0]["device"])


if __name__ == "__main__":
    main()
