"""Serving under concurrent load: `vitkit serve` driven over loopback by 1, 8 and 64 clients, each
sending one JPEG photo per request and waiting for the answer, against the same model called
one image at a time in this process (decode, preprocess, the fast path's forward pass on a batch
of 1; no HTTP, no batching).

    python benchmarks/serve.py [--model vit_ti4_32] [--seconds 10] [--repeats 3] [--no-record]

The model is a preset with random weights, saved with save_pretrained (speed does not depend on
the values): by default vit_ti4_32 (ViT-Ti/4 at 32 px, the size of model `vitkit train` makes for
CIFAR-sized images); `--model vit_s16` serves ViT-S/16 at 224 px. Batching can only gain what a
batch of 32 saves per image over a batch of 1 on this CPU, and ViT-S/16's matmuls already keep
the cores fairly busy at batch 1, so expect its gain to be smaller. The photos are 320x240 JPEGs
of noise over gradients. Every run is bounded: each
level stops after --seconds or --max-requests, whichever comes first, and the server is stopped
at the end. img/s is min / median / max over --repeats runs; p50 and p99 are the medians over
the runs of each run's latency percentiles. Each run appends a record to
benchmarks/results/serve.jsonl.

The clients are a few lines of asyncio (HTTP/1.1 with keep-alive) rather than an HTTP library:
on a 2-core machine the load generator shares the cores with the server, and the lighter it is,
the less it takes from what is measured.

    python benchmarks/serve.py --attack [--seconds 20] [--repeats 3]

is the load test under attack: 64 well-behaved clients, alone and then beside 8 attackers (4
sending decompression bombs, a 48 KB PNG of 20000 x 20000 pixels each time, and 4 sending bodies
one byte every half second), taking turns round by round. It records the good clients' p99
latency in both, their ratio, what the attackers got back, and the server's peak memory (its
VmHWM) against the bound the server's settings imply.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import vitkit
from common import describe, figure, machine, record
from vitkit.model.normalization import HALF
from vitkit.serve.app import load_engine

CLIENTS = (1, 8, 64)


def make_photos(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:240, 0:320]
    photos = []
    for _ in range(count):
        base = np.stack([xs * rng.uniform(0.3, 0.8), ys * rng.uniform(0.3, 1.0), (xs + ys) * 0.3], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def one_at_a_time(engine, photos: list[bytes], seconds: float, max_requests: int) -> dict:
    """The baseline: the server's own engine, one photo after the other."""
    latencies, stop_at = [], time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < stop_at and len(latencies) < max_requests:
        t = time.perf_counter()
        engine.probabilities([engine.decode(photos[len(latencies) % len(photos)])])
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start)


def one_at_a_time_runs(model_dir: Path, photos: list[bytes], args: argparse.Namespace) -> dict:
    """Run in one worker thread, as the server runs its model: the main thread's OpenMP team
    behaves differently (measured: 2-thread matmuls several times slower there on a busy CPU)."""
    engine = load_engine(model_dir, dtype=args.dtype)
    with ThreadPoolExecutor(1) as worker:
        worker.submit(engine.warm_up, (1, 1, 1)).result()
        return repeat(lambda: worker.submit(one_at_a_time, engine, photos, args.seconds, args.max_requests).result(),
                      args.repeats)


def summary(latencies: list[float], elapsed: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"img_per_s": len(latencies) / elapsed, "p50": pick(0.50), "p99": pick(0.99), "requests": len(latencies)}


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, body: bytes) -> None:
    writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                 % (host.encode(), len(body)) + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    payload = await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)[1]))
    if status != 200:
        raise RuntimeError(f"server answered {status}: {payload[:200]!r}")


async def drive(host: str, port: int, clients: int, photos: list[bytes], seconds: float, max_requests: int) -> dict:
    """`clients` connections, each sending a request as soon as its last one is answered."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at and len(latencies) < max_requests:
                t = time.perf_counter()
                await asyncio.wait_for(post(reader, writer, host, photos[(index + len(latencies)) % len(photos)]), 60)
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return summary(latencies, time.perf_counter() - start)


def start_server(model_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str, int, dict]:
    process = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", str(model_dir), "--port", "0", "--json",
                                "--dtype", args.dtype, "--max-batch", str(args.max_batch),
                                "--max-wait-ms", str(args.max_wait_ms), "--body-timeout", str(args.body_timeout)],
                               stdout=subprocess.PIPE, text=True)
    started = json.loads(process.stdout.readline() or "{}")
    if "url" not in started:
        process.kill()
        raise SystemExit("the server did not start")
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(started["url"] + "health", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.2)
    return process, "127.0.0.1", started["port"], started


def bomb() -> bytes:
    """A decompression bomb: 48 KB of PNG that decodes to 20000 x 20000 pixels (400 MB as bytes)."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


async def bombard(host: str, port: int, body: bytes, stop_at: float, answers: list[int]) -> None:
    """An attacker: the bomb again and again, as fast as the server answers."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Type: image/png\r\n"
                         b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)) + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            answers.append(int(head.split(b" ", 2)[1]))
            await reader.readexactly(int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)[1]))
    finally:
        writer.close()


async def trickle(host: str, port: int, stop_at: float, answers: list[int]) -> None:
    """An attacker: a body of a megabyte announced, then sent one byte every half second."""
    while time.perf_counter() < stop_at:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /predict HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000000\r\n\r\n" % host.encode())
        try:
            while time.perf_counter() < stop_at:
                writer.write(b"x")
                await writer.drain()
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
                    answers.append(int(head.split(b" ", 2)[1]))
                    break
                except TimeoutError:
                    continue
        except (ConnectionError, asyncio.IncompleteReadError):
            answers.append(0)  # the server closed the connection
        finally:
            writer.close()


async def under_attack(host: str, port: int, photos: list[bytes], seconds: float, max_requests: int,
                       attackers: int, payload: bytes, answers: list[int]) -> dict:
    """64 good clients, with `attackers` attackers beside them (half bombs, half slow bodies)."""
    stop_at = time.perf_counter() + seconds
    attacks = [bombard(host, port, payload, stop_at, answers) if i % 2 == 0 else trickle(host, port, stop_at, answers)
               for i in range(attackers)]
    good, *_ = await asyncio.gather(drive(host, port, 64, photos, seconds, max_requests), *attacks)
    return good


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def attack(model_dir: Path, photos: list[bytes], args: argparse.Namespace) -> tuple[list[str], dict, str]:
    """The load test under attack, rounds alternating between calm and attacked."""
    payload, calm, attacked, answers = bomb(), [], [], []
    process, host, port, started = start_server(model_dir, args)
    try:
        asyncio.run(drive(host, port, 64, photos, min(2.0, args.seconds), args.max_requests))  # warm
        before = peak_memory(process.pid)
        for _ in range(args.repeats):
            calm.append(asyncio.run(drive(host, port, 64, photos, args.seconds, args.max_requests)))
            attacked.append(asyncio.run(under_attack(host, port, photos, args.seconds, args.max_requests, 8,
                                                     payload, answers)))
        after, alive = peak_memory(process.pid), process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    p99 = [1000 * r["p99"] for r in calm], [1000 * r["p99"] for r in attacked]
    ratio = [b / a for a, b in zip(*p99, strict=True)]
    bound = before + 8 * 20 * 2**20 + 2 * 40e6 * 4  # attackers' bodies at the 20 MB limit, decoders' images
    codes = {str(code): answers.count(code) for code in sorted(set(answers))}
    figures = {"p99 latency, 64 clients alone": figure(p99[0], "ms", 1),
               "p99 latency, 64 clients beside 8 attackers": figure(p99[1], "ms", 1),
               "p99 latency ratio, attacked / alone": figure(ratio, "x", 2),
               "img/s, 64 clients alone": figure([r["img_per_s"] for r in calm], "img/s", 1),
               "img/s, 64 clients beside 8 attackers": figure([r["img_per_s"] for r in attacked], "img/s", 1),
               "server peak memory before the attacks": figure(before / 2**20, "MiB", 0),
               "server peak memory after the attacks": figure(after / 2**20, "MiB", 0),
               "memory bound": figure(bound / 2**20, "MiB", 0), "server alive at the end": alive,
               "attackers' answers (status: count)": json.dumps(codes),
               "bomb size": figure(len(payload) / 1024, "KiB", 0)}
    lines = [f"{name}: {value}" for name, value in figures.items()]
    notes = (f"`vitkit serve` ({started['dtype']} fast path, --body-timeout {args.body_timeout:g}) with {args.model}, "
             f"random weights; {args.repeats} rounds, each {args.seconds:g} s of 64 good clients alone then "
             "beside 8 attackers (4 sending a decompression bomb again and again, 4 trickling a body a byte per "
             "half second); server and clients share the CPU. 413: bombs refused from their header; 408: slow "
             "bodies timed out.")
    return lines, figures, notes


def repeat(measure, repeats: int) -> dict:
    runs = [measure() for _ in range(repeats)]
    rates = sorted(r["img_per_s"] for r in runs)
    return {"rates": rates, "p50": statistics.median(r["p50"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs), "requests": sum(r["requests"] for r in runs)}


def row(name: str, result: dict, baseline: float) -> str:
    low, mid, high = result["rates"][0], statistics.median(result["rates"]), result["rates"][-1]
    return (f"| {name} | {mid:.1f} ({low:.1f} / {high:.1f}) | {1000 * result['p50']:.1f} | "
            f"{1000 * result['p99']:.1f} | {mid / baseline:.2f}x | {result['requests']} |")


def measured(name: str, result: dict, baseline: float) -> dict:
    """A row's figures for the record."""
    return {f"{name}: img/s": figure(result["rates"], "img/s", 1),
            f"{name}: p50 latency": figure(1000 * result["p50"], "ms", 1),
            f"{name}: p99 latency": figure(1000 * result["p99"], "ms", 1),
            f"{name}: vs one at a time": figure(statistics.median(result["rates"]) / baseline, "x", 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_ti4_32", help="a preset (see `vitkit models`)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--max-requests", type=int, default=5000, help="most requests in each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    parser.add_argument("--attack", action="store_true", help="the load test under attack (see above)")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="the server's --body-timeout")
    args = parser.parse_args()
    bounds = (args.seconds, args.max_requests)
    photos = make_photos(32)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / args.model
        options = {"image_size": args.image_size} if args.image_size else {}
        model = vitkit.create_model(args.model, num_classes=10, **options)
        model.normalization = HALF
        model.save_pretrained(model_dir, extra={"classes": [f"class {i}" for i in range(10)]})
        size = model.config.image_size
        if args.attack:
            lines, figures, notes = attack(model_dir, photos, args)
            print("\n".join(lines))
            record("serve-attack", "Serving under attack: 64 clients beside 8 attackers", figures, notes,
                   "\n".join(lines), save=not args.no_record)
            return
        print(f"{describe(machine())}\n{args.model} at {size} px, random weights; one-at-a-time baseline ...",
              flush=True)
        base = one_at_a_time_runs(model_dir, photos, args)
        baseline = statistics.median(base["rates"])
        lines = ["| clients | img/s median (min / max) | p50 ms | p99 ms | vs one-at-a-time | requests |",
                 "|---|---|---|---|---|---|", row("one at a time, no server", base, baseline)]
        figures = measured("one at a time", base, baseline)
        print("\n".join(lines), flush=True)
        process, host, port, started = start_server(model_dir, args)
        try:
            for clients in CLIENTS:
                asyncio.run(drive(host, port, clients, photos, min(1.0, args.seconds), args.max_requests))  # warm
                result = repeat(lambda c=clients: asyncio.run(drive(host, port, c, photos, *bounds)), args.repeats)
                lines.append(row(str(clients), result, baseline))
                figures |= measured(f"{clients} clients", result, baseline)
                print(lines[-1], flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    notes = (f"`vitkit serve --dtype {args.dtype}` ({started['dtype']} fast path, --max-batch {args.max_batch}, "
             f"--max-wait-ms {args.max_wait_ms}) with {args.model} at {size} px, random weights; 320x240 JPEG "
             f"per request; {args.repeats} runs of {args.seconds:g} s (or {args.max_requests} requests) per row; "
             f"server and clients share the machine's {torch.get_num_threads()}-thread CPU.")
    record("serve", "Serving: concurrent clients against one at a time", figures, notes, "\n".join(lines),
           save=not args.no_record)


if __name__ == "__main__":
    main()
