"""Training speed of `vitkit train` on CIFAR-10 against an earlier commit, in one run.

    python benchmarks/train_speed.py --data ../shared/data/cifar10/cifar10-train-jpg.tar.gz \
        [--baseline 6fb4836] [--images 1000] [--repeats 3] [--no-record]

The baseline commit trains its own CIFAR default, and this commit trains 6fb4836's (patch 4, width
128, depth 6, batch 128, pinned by flags) and then its own default, on the same images, through
the `vitkit` command exactly as a user runs it. With the default baseline, 6fb4836, the first two
are the same model; with a later `--baseline` the first is that commit's default. The
figures are the trainer's own counters from metrics.jsonl for the second epoch (the first one
pays for start-up and compilation): images/s, and the share of the epoch spent waiting for data.
The runs take turns (baseline, then this commit pinned, then this commit's default), and each
row shows min/median/max over the repeats, and the ratio of each run to the baseline's run of the
same round (a minute or two apart, so that the VM's slower drift cancels). Each run appends a
record to benchmarks/results/train-speed.jsonl.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record, spread

ROOT = Path(__file__).parents[1]
# 6fb4836's default CIFAR model and recipe, pinned so that this commit trains what that baseline does
# (with another --baseline, the pinned row's ratio compares two models).
BASELINE_MODEL = ["--model-option", "patch_size=4", "--model-option", "dim=128", "--model-option", "depth=6",
                  "--model-option", "heads=4", "--model-option", "mlp_dim=256",
                  "--model-option", "patch_embed=conv", "--batch-size", "128", "--patch-dropout", "0"]
PINNED = ["--epochs", "2", "--val-split", "0.1", "--json"]


def subset(archive: Path, per_class: int, out: Path) -> Path:
    """The first `per_class` JPEGs of every class of the archive, as a smaller archive (same bytes)."""
    taken: dict[str, int] = {}
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src:
            parts = member.name.removeprefix("./").split("/")
            if not member.isfile() or len(parts) < 3:
                continue
            if taken.get(parts[-2], 0) < per_class:
                taken[parts[-2]] = taken.get(parts[-2], 0) + 1
                dst.addfile(member, io.BytesIO(src.extractfile(member).read()))
    return out


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    return into / "src"


def train(src: Path, data: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-m", "vitkit", "train", str(data), "--out", str(out), *PINNED, *extra],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"training with {src} failed:\n{done.stderr[-2000:]}")
    second = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"img_per_s": second["img_per_s"], "wait": second["loader_wait_s"] / second.get(
        "train_seconds", second["seconds"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10/cifar10-train-jpg.tar.gz"))
    parser.add_argument("--baseline", default="6fb4836", help="the commit to compare with")
    parser.add_argument("--images", type=int, default=1000, help="images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = subset(Path(args.data), args.images, tmp / "cifar.tar.gz")
        runs = {(args.baseline, "its default"): (checkout(args.baseline, tmp / "base"), ["--batch-size", "128"]),
                ("this commit", "6fb4836's default (pinned)"): (ROOT / "src", BASELINE_MODEL),
                ("this commit", "this commit's default"): (ROOT / "src", [])}
        results: dict[tuple[str, str], list[dict]] = {key: [] for key in runs}
        try:
            for r in range(args.repeats):
                for key, (src, extra) in runs.items():
                    results[key].append(train(src, data, tmp / f"run-{r}-{len(results[key])}-{key[0][:4]}", extra))
                    print(key, results[key][-1], flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                           capture_output=True)
    base_rates = [x["img_per_s"] for x in results[(args.baseline, "its default")]]
    base = statistics.median(base_rates)
    figures: dict = {}
    lines = ["| code | model and recipe | img/s (min / median / max) | vs baseline (medians) | "
             "vs the baseline's run of the same round (min / median / max) | loader wait |",
             "|---|---|---|---|---|---|"]
    for (code, model), rows in results.items():
        rate = [x["img_per_s"] for x in rows]
        ratios = [r / b for r, b in zip(rate, base_rates, strict=True)]
        paired = spread(ratios, "{:.2f}x") if code != args.baseline else "-"
        lines.append(f"| {code} | {model} | {spread(rate)} | {statistics.median(rate) / base:.2f}x"
                     f" | {paired} | {spread([100 * x['wait'] for x in rows], '{:.1f}%')} |")
        label = f"{code}, {model}"
        figures[f"{label}: img/s"] = figure(rate, "img/s", 1)
        figures[f"{label}: loader wait"] = figure([100 * x["wait"] for x in rows], "%", 2)
        if code != args.baseline:
            figures[f"{label}: vs baseline, round by round"] = figure(ratios, "x", 3)
            figures[f"{label}: vs baseline, of medians"] = figure(statistics.median(rate) / base, "x", 3)
    record("train-speed", "Training speed: CIFAR-10 default model, this commit against the baseline", figures,
           f"{args.images} images per class of the shared archive, {args.repeats} runs each, taking turns; "
           "epoch 2 of 2 read from metrics.jsonl (img/s over the epoch's training, and the share of it "
           "spent waiting for the loader). The per-round ratios pair each run with the baseline's run next "
           "to it in time.", "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
