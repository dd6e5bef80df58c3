"""Large images: ViT-B/16 with global attention in every block against windowed attention (14x14
windows, global blocks 2, 5, 8, 11: SAM's ViT-B layout), at 512, 1024 and 2048 px on the CPU:
peak memory and images/s for inference and for one training step.

    python benchmarks/large_images.py [--model vit_b16] [--sizes 512,1024,2048] [--timeout 600]
                                      [--threads 2] [--no-record]

Each case (size x attention x inference/training) runs in its own process, so that its peak
memory (the process's maximum resident set, less what it held once the model was built) is its
own, and is stopped after --timeout seconds (the issue's 10 minutes); a case that runs out of
time or memory is reported as not run, with the reason. Batch 1, fp32; one untimed call, then
up to 3 timed ones within the time left. A quick check:
`python benchmarks/large_images.py --model vit_ti16 --sizes 64,128 --timeout 60 --no-record`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, shown
from vitkit.model import create_model

WINDOWED = dict(window_size=14, global_blocks=(2, 5, 8, 11))


def case(model_name: str, size: int, windowed: bool, training: bool, seconds: float) -> dict:
    """One case, in this process: images/s and the peak memory above the built model's, in MB."""
    options = WINDOWED if windowed else {}
    model = create_model(model_name, image_size=size, num_classes=10, **options).train(training)
    x = torch.randn(1, 3, size, size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def call() -> None:
        if training:
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        else:
            with torch.inference_mode():
                model(x)

    start = time.perf_counter()
    call()
    times, deadline = [], start + seconds
    while len(times) < 3 and time.perf_counter() + (times[-1] if times else 0) < deadline:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"img_per_s": [1 / t for t in times] or [1 / (time.perf_counter() - start)], "peak_mb": peak}


def run_case(args: argparse.Namespace, size: int, windowed: bool, training: bool) -> dict | str:
    """A case in a child process with a time limit: its result, or why it did not run."""
    command = [sys.executable, __file__, "--case", f"{size},{int(windowed)},{int(training)}", "--model", args.model,
               "--threads", str(args.threads), "--timeout", str(args.timeout)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"not run: over {args.timeout:.0f} s"
    if done.returncode:
        return f"not run: {'out of memory' if done.returncode in (-9, 137) else done.stderr.strip()[-200:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b16")
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:  # a child process: one case, its result as JSON
        size, windowed, training = (int(v) for v in args.case.split(","))
        print(json.dumps(case(args.model, size, bool(windowed), bool(training), 0.8 * args.timeout)))
        return
    figures, lines = {}, ["| size | attention | pass | img/s (min / median / max) | peak memory |",
                          "|---|---|---|---|---|"]
    for size in (int(s) for s in args.sizes.split(",")):
        for windowed in (False, True):
            for training in (False, True):
                found, line = row(size, windowed, training, run_case(args, size, windowed, training))
                figures |= found
                lines.append(line)
                print(line, flush=True)
    record("large-images", f"Large images: {args.model}, global against windowed attention (14x14, global blocks "
           "2, 5, 8, 11)", figures, f"Batch 1, fp32, CPU, {args.threads} threads; each case its own process, at "
           f"most {args.timeout:.0f} s; peak memory: the process's maximum resident set above the built model's.",
           "\n".join(lines), save=not args.no_record)


def row(size: int, windowed: bool, training: bool, result: dict | str) -> tuple[dict, str]:
    """A case's figures and table line."""
    attention, kind = ("windowed" if windowed else "global"), ("training step" if training else "inference")
    name, start = f"{size} px, {attention}, {kind}", f"| {size} | {attention} | {kind} |"
    if isinstance(result, str):
        return {name: result}, f"{start} {result} | |"
    rates = figure(result["img_per_s"], "img/s", 4)
    return ({f"{name}: img/s": rates, f"{name}: peak memory": figure(result["peak_mb"], "MB", 0)},
            f"{start} {shown(rates)} | {result['peak_mb']:.0f} MB |")

if __name__ == "__main__":
    main()
