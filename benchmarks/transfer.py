"""Transfer on CIFAR-10, offline: what pre-trained weights buy on a small data set.

    python benchmarks/transfer.py --data ../shared/data/cifar10/cifar10-train-jpg.tar.gz \
        [--pretrain-budget 600] [--shots 100] [--no-record]

1. Pre-train `vitkit train` (defaults) on classes 0-4 (airplane ... deer, 25,000 images) for a
   fixed time budget.
2. On classes 5-9 (dog ... truck) with `--shots` training images per class, compare:
   (a) fine-tuning the pre-trained weights (`--init`, vitkit's default fine-tuning recipe: the
       paper's SGD), and (a2) the DeiT/BEiT style (AdamW with layer-wise lr decay) for comparison,
   (b) a linear probe (`--init --freeze-backbone`) and the paper's 10-shot linear evaluation
       (`vitkit fewshot`), and
   (c) training from scratch on the same images (vitkit's defaults),
   each trained on all `--shots` images per class (50 more per class are the runs' validation
   split) and scored on 1,000 held-out images per class of classes 5-9 that no run saw.
Every run is the `vitkit` command as a user types it; wall times include everything. Each run
appends a record to benchmarks/results/transfer.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, vitkit

ROOT = Path(__file__).parents[1]
HELD_OUT = 1000  # per class of 5-9, never trained on: the score
VAL = 50  # per class of 5-9, the runs' validation split (so that they train on all `shots` images)
SHORT = {"(a)": "fine-tuned", "(a2)": "fine-tuned, DeiT/BEiT style", "(b)": "linear probe", "(c)": "from scratch"}


def split_archive(archive: Path, out: Path, shots: int) -> tuple[Path, Path]:
    """pretrain/<class 0-4>/..., and target/train/<class 5-9>/ (`shots` each) + target/val/ (VAL) +
    target/test/ (HELD_OUT)."""
    with tarfile.open(archive) as tar:  # one pass in stream order: seeking back in a .tar.gz re-decompresses
        files = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar
                 if m.isfile() and m.name.lower().endswith(".jpg")}
    classes = sorted({name.split("/")[-2] for name in files})
    taken: dict[str, int] = {}
    for name in sorted(files):
        cls = name.split("/")[-2]
        n = taken[cls] = taken.get(cls, 0) + 1
        if classes.index(cls) < 5:
            dest = out / "pretrain" / cls
        elif n <= shots:
            dest = out / "target" / "train" / cls
        elif n <= shots + VAL:
            dest = out / "target" / "val" / cls
        elif n <= shots + VAL + HELD_OUT:
            dest = out / "target" / "test" / cls
        else:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        (dest / Path(name).name).write_bytes(files[name])
    return out / "pretrain", out / "target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--pretrain-budget", type=float, default=600)
    parser.add_argument("--shots", type=int, default=100, help="training images per class of 5-9")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pretrain, target = split_archive(Path(args.data), tmp, args.shots)
        pre, pre_wall = vitkit("train", str(pretrain), "--time-budget", str(args.pretrain_budget), "--out",
                               str(tmp / "pre"))
        rows = [("pre-training on classes 0-4 (25,000 images)", f"{100 * pre['val_top1']:.1f}% (its own "
                 "validation)", pre_wall, f"{pre['epochs']} epochs")]
        runs = {"(a) fine-tuned (`--init`, default recipe)": ["--init", str(tmp / "pre")],
                "(a2) fine-tuned DeiT/BEiT style (`--optimizer adamw --lr 5e-4 --weight-decay 0.05 "
                "--layer-decay 0.75`)": ["--init", str(tmp / "pre"), "--optimizer", "adamw", "--lr", "5e-4",
                                         "--weight-decay", "0.05", "--layer-decay", "0.75"],
                "(b) linear probe (`--init --freeze-backbone`)": ["--init", str(tmp / "pre"), "--freeze-backbone"],
                "(c) from scratch (defaults)": []}
        scores: dict[str, float] = {}
        accuracy = {"pre-training, its own validation": 100 * pre["val_top1"]}
        for name, extra in runs.items():
            result, wall = vitkit("train", str(target), "--out", str(tmp / name[1:name.index(")")]), *extra)
            scores[name] = result["test_top1"]
            accuracy[SHORT[name[:name.index(")") + 1]]] = 100 * result["test_top1"]
            rows.append((name, f"{100 * result['test_top1']:.1f}%", wall, f"{result['epochs']} epochs"))
        few, wall = vitkit("fewshot", str(tmp / "pre"), "--data", str(target), "--shots", "10")
        acc = few["results"][0]["top1"]
        accuracy["10-shot linear evaluation"] = 100 * acc
        rows.append(("(b) 10-shot linear evaluation (`vitkit fewshot`)", f"{100 * acc:.1f}%", wall, "closed form"))
    gain = 100 * (scores["(a) fine-tuned (`--init`, default recipe)"] - scores["(c) from scratch (defaults)"])
    table = "| run | top-1 on 5,000 held-out images of classes 5-9 | wall time | |\n|---|---|---|---|\n" + \
        "\n".join(f"| {name} | {score} | {wall:.0f} s | {note} |" for name, score, wall, note in rows)
    figures = {f"{name}: top-1": figure(value, "%", 2) for name, value in accuracy.items()}
    figures["fine-tuned minus from scratch"] = figure(gain, "points", 2)
    record("transfer", f"Transfer: pre-trained on CIFAR-10 classes 0-4, then 5-9 from {args.shots} images per class",
           figures, f"Fine-tuning minus from scratch: {gain:+.1f} points (goal >= +15).", table,
           save=not args.no_record)


if __name__ == "__main__":
    main()
