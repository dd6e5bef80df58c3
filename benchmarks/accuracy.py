"""Accuracy within a wall-clock budget: vitkit's defaults against simple peers, in one run.

    python benchmarks/accuracy.py digits            # vitkit train (no flags) vs write-up ViT + Adam vs RBF SVM
    python benchmarks/accuracy.py cifar10 --data ../shared/data/cifar10/cifar10-train-jpg.tar.gz \
        --budget 1800 [--peers] [--seed 1]           # vitkit train DATA --time-budget 1800 [--seed 1]
    python benchmarks/accuracy.py fashion-mnist --data ../shared/data/fashion-mnist --budget 1800

The vitkit numbers come from running the `vitkit` command exactly as a user would; the wall time
includes start-up, data loading and every evaluation. Each run appends a record to
benchmarks/results/accuracy-<task>.jsonl (`--no-record`: print only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, training_rate, vitkit


def writeup_vit_plain(train, test, budget: float, in_channels: int, image: int, patch: int,
                      dim: int, depth: int, heads: int, mlp: int, bf16: bool, crop_flip: bool) -> tuple[float, int]:
    """The write-up's ViT (vit-pytorch) with a plain Adam(W) loop, no schedule, for `budget` s."""
    import vit_pytorch

    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = train, test
    xtr, xte = xtr.float() / 127.5 - 1, xte.float() / 127.5 - 1
    model = vit_pytorch.ViT(image_size=image, patch_size=patch, num_classes=int(ytr.max()) + 1, dim=dim,
                            depth=depth, heads=heads, mlp_dim=mlp, channels=in_channels, dim_head=dim // heads)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, epochs = time.time(), 0
    while time.time() - start < budget:
        perm = torch.randperm(len(xtr))
        for i in range(0, len(perm) - 127, 128):
            x, y = xtr[perm[i:i + 128]], ytr[perm[i:i + 128]]
            if crop_flip:
                x = F.pad(x, (4, 4, 4, 4), mode="reflect")
                dx, dy = torch.randint(0, 9, (2,)).tolist()
                x = x[:, :, dy:dy + image, dx:dx + image]
                x = torch.where(torch.rand(len(x), 1, 1, 1) < 0.5, x.flip(3), x)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.time() - start > budget:
                break
        epochs += 1
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        correct = sum((model(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum().item()
                      for i in range(0, len(xte), 500))
    return correct / len(xte), epochs


def benchmark_name(task: str, args) -> str:
    """accuracy-cifar10, or with another seed or budget accuracy-cifar10-seed1, ...-600s: each
    its own benchmark, so that the latest record of one is never another's."""
    seed = f"-seed{args.seed}" if args.seed else ""
    budget = f"-{args.budget:.0f}s" if args.budget != 1800 else ""
    return f"accuracy-{task}{seed}{budget}"


def loader_wait(metrics: list[dict]) -> float:
    """The share of the training time after the first epoch spent waiting for data."""
    steady = metrics[1:] or metrics
    return sum(m["loader_wait_s"] for m in steady) / sum(m["train_seconds"] for m in steady)


def digits(args) -> None:
    from sklearn.svm import SVC

    from vitkit.data import arrays

    with tempfile.TemporaryDirectory() as tmp:
        result, wall = vitkit("train", "--out", f"{tmp}/run")
    train, test, _ = arrays.digits()
    plain, epochs = writeup_vit_plain(train, test, 60, 1, 8, 2, 64, 4, 4, 128, bf16=False, crop_flip=False)
    svm = SVC().fit(train[0].flatten(1).numpy(), train[1].numpy())
    svm_acc = (svm.predict(test[0].flatten(1).numpy()) == test[1].numpy()).mean()
    table = ("| method | test top-1 | wall time |\n|---|---|---|\n"
             f"| `vitkit train` (no flags: {result['epochs']} epochs) | {100 * result['test_top1']:.2f}% | "
             f"{wall:.0f} s |\n"
             f"| write-up ViT (vit-pytorch, dim 64, depth 4), plain AdamW, {epochs} epochs | "
             f"{100 * plain:.2f}% | 60 s |\n"
             f"| RBF SVM (scikit-learn defaults) | {100 * svm_acc:.2f}% | < 1 s |\n")
    target = "met" if result["test_top1"] >= 0.985 and wall <= 60 else "NOT met"
    figures = {"vitkit train: test top-1": figure(100 * result["test_top1"], "%"),
               "vitkit train: wall time": figure(wall, "s", 1), "vitkit train: epochs": result["epochs"],
               "write-up ViT, plain AdamW, 60 s: test top-1": figure(100 * plain, "%"),
               "write-up ViT, plain AdamW, 60 s: epochs": epochs,
               "RBF SVM: test top-1": figure(100 * svm_acc, "%")}
    record("accuracy-digits", "Accuracy: digits, `vitkit train` with no flags", figures,
           f"Target >= 98.5% within 60 s wall: {target}. Test split: the fixed stratified 20% (360 images).",
           table, save=not args.no_record)


def cifar10(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or f"{tmp}/run"
        seed = ["--seed", str(args.seed)] if args.seed else []  # no flags at all for the default seed
        result, wall = vitkit("train", args.data, "--time-budget", str(args.budget), "--out", out, *seed)
        metrics = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    shown = f" --seed {args.seed}" if args.seed else ""
    rows = [f"| `vitkit train DATA --time-budget {args.budget}{shown}` ({result['epochs']} epochs, "
            f"{training_rate(metrics):.0f} img/s) | {100 * result['val_top1']:.2f}% | {wall:.0f} s |"]
    if args.peers:
        from vitkit.data import spec

        splits = spec.load(args.data, val_split=0.1, seed=args.seed)
        load = lambda ds: (torch.stack([ds[i][0] for i in range(len(ds))]), ds.labels)  # noqa: E731
        plain, epochs = writeup_vit_plain(load(splits.train), load(splits.val), args.budget, 3, 32, 4, 192, 6, 3, 384,
                                          bf16=True, crop_flip=True)
        rows.append(f"| write-up ViT (dim 192, depth 6, patch 4), plain AdamW, crop+flip, bf16, {epochs} "
                    f"epochs | {100 * plain:.2f}% | {args.budget} s + decoding |")
    table = (f"| method | held-out top-1 (5,000 training images, split by seed {args.seed}) | wall time |\n"
             "|---|---|---|\n" + "\n".join(rows))
    target = "met" if result["val_top1"] >= 0.80 and wall <= args.budget * 1.02 else "NOT met"
    curve = ", ".join(f"{m['epoch']}: {100 * m['val_top1']:.1f}%" for m in metrics)
    figures = {"held-out top-1": figure(100 * result["val_top1"], "%"), "epochs": result["epochs"],
               "img/s": figure(training_rate(metrics), "img/s", 1), "wall time": figure(wall, "s", 1),
               "loader wait": figure(100 * loader_wait(metrics), "%", 2)}
    if args.peers:
        figures["write-up ViT, plain AdamW: held-out top-1"] = figure(100 * plain, "%")
    record(benchmark_name("cifar10", args), f"Accuracy: CIFAR-10 from scratch in {args.budget / 60:.0f} minutes"
           f"{f', seed {args.seed}' if args.seed else ''}", figures,
           f"Target >= 80% within 30 minutes: {target}. Validation by epoch: {curve}.", table,
           save=not args.no_record)


def fashion_mnist(args) -> None:
    data = args.data if args.data.startswith("fashion-mnist:") else f"fashion-mnist:{args.data}"
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or f"{tmp}/run"
        result, wall = vitkit("train", data, "--time-budget", str(args.budget), "--out", out)
        metrics = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    table = ("| method | official test split (10,000 images) top-1 | validation | wall time |\n|---|---|---|---|\n"
             f"| `vitkit train fashion-mnist:DIR --time-budget {args.budget:.0f}` ({result['epochs']} epochs, "
             f"{training_rate(metrics):.0f} img/s) | {100 * result['test_top1']:.2f}% | "
             f"{100 * result['val_top1']:.2f}% | {wall:.0f} s |\n"
             "| published: small ViTs ~92%; HOG + SVM 92.6% (Fashion-MNIST benchmark page) | | | |")
    target = "met" if result["test_top1"] >= 0.92 and wall <= args.budget * 1.02 else "NOT met"
    figures = {"test top-1": figure(100 * result["test_top1"], "%"),
               "validation top-1": figure(100 * result["val_top1"], "%"), "epochs": result["epochs"],
               "img/s": figure(training_rate(metrics), "img/s", 1), "wall time": figure(wall, "s", 1),
               "loader wait": figure(100 * loader_wait(metrics), "%", 2)}
    record(benchmark_name("fashion-mnist", args), f"Accuracy: Fashion-MNIST from scratch in "
           f"{args.budget / 60:.0f} minutes", figures,
           f"Target >= 92% on the official test split within the budget: {target}.", table,
           save=not args.no_record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["digits", "cifar10", "fashion-mnist"])
    parser.add_argument("--data", default="../shared/data/cifar10/cifar10-train-jpg.tar.gz")
    parser.add_argument("--budget", type=float, default=1800)
    parser.add_argument("--out", help="keep the vitkit run here")
    parser.add_argument("--seed", type=int, default=0,
                        help="cifar10: the seed of the run and of its held-out split (another seed, other images)")
    parser.add_argument("--peers", action="store_true", help="also time the write-up's plain loop (cifar10)")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.task == "fashion-mnist" and args.data.endswith(".tar.gz"):
        args.data = str(Path(__file__).parents[2] / "shared/data/fashion-mnist")
    {"digits": digits, "cifar10": cifar10, "fashion-mnist": fashion_mnist}[args.task](args)


if __name__ == "__main__":
    main()
