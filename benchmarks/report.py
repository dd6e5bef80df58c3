"""The figures, regenerated from the records: docs/benchmarks.md and the README's figures table.

    python benchmarks/report.py            # rewrite both from benchmarks/results/*.jsonl
    python benchmarks/report.py --check    # exit 1 if either differs from what the records give

Every benchmark script appends one record per run to benchmarks/results/<benchmark>.jsonl. The
page shows, for every benchmark, the latest record of each machine kind (AMX CPU, CPU without
AMX, H100, H200): each figure with its min / median / max, and the command, commit, machine and
date. The README's table shows a few of those figures for the AMX CPU and the H100, each beside
the peer's figure from the same run. Updating a figure is running a benchmark, then this script.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
PAPER = ROOT / "docs" / "distributed.md"
PAPER_START, PAPER_END = "<!-- on-paper:start -->", "<!-- on-paper:end -->"
IMAGENET, IMAGE_KB = 1_281_167, 110  # ImageNet-1k's training images and their mean size (140 GB in all)

KINDS = {"amx-cpu": "AMX CPU", "cpu": "CPU without AMX", "h100": "H100", "h200": "H200"}
# Sections of the page: a benchmark goes to the first whose prefix its name starts with.
GROUPS = [
    ("Accuracy from scratch", ("accuracy-",)),
    ("Fine-tuning and distillation", ("transfer", "distill")),
    ("Speed against the peers", ("speed", "bench-")),
    ("Training speed", ("train-speed", "allocator", "cpu-kernels", "head-tokens", "kernel-rates",
                        "grad-checkpointing", "ablation")),
    ("Serving, data loading and bf16", ("serve", "loader", "streaming", "agreement")),
    ("Images of any shape", ("resolution", "flexi-patch", "naflex-packing", "large-images")),
    ("GPUs", ("gpu",)),
    ("The trials that chose the defaults", ("choice-", "trials-")),
]
B16 = "vit_b16 {} bf16 batch {}: {} compiled"
TI4 = "vit_ti4_32 train bf16 batch 128: {} compiled"
# The README's rows: label -> {machine kind: (benchmark, vitkit's figure, [(peer, the peer's figure), ...])}
README_ROWS: list[tuple[str, dict[str, tuple[str, str, list[tuple[str, str]]]]]] = [
    ("CIFAR-10 from scratch, 30 minutes: held-out top-1 (%)",
     {"amx-cpu": ("accuracy-cifar10", "held-out top-1", [])}),
    ("Fashion-MNIST from scratch, 30 minutes: test top-1 (%)",
     {"amx-cpu": ("accuracy-fashion-mnist", "test top-1", [])}),
    ("digits, `vitkit train` with no flags: test top-1 (%)",
     {"amx-cpu": ("accuracy-digits", "vitkit train: test top-1", [("RBF SVM", "RBF SVM: test top-1")])}),
    ("CIFAR-10 from scratch, 90 s: held-out top-1 (%)",
     {"h100": ("gpu", "CIFAR-10 default recipe, 90 s: held-out top-1", [])}),
    ("fine-tuned on 500 images: top-1 (%)",
     {"amx-cpu": ("transfer", "fine-tuned: top-1", [("from scratch", "from scratch: top-1")])}),
    ("ViT-B/16 inference, bf16: img/s (batch 16 on the CPU, 256 on the GPU)",
     {"amx-cpu": ("speed", B16.format("infer", 16, "vitkit"), [("timm", B16.format("infer", 16, "timm"))]),
      "h100": ("gpu", B16.format("infer", 256, "vitkit"), [("timm", B16.format("infer", 256, "timm"))])}),
    ("ViT-B/16 training, bf16, batch 256: img/s",
     {"h100": ("gpu", B16.format("train", 256, "vitkit"), [("timm", B16.format("train", 256, "timm"))])}),
    ("ViT-Ti/4 training at 32 px, bf16, batch 128: img/s",
     {"amx-cpu": ("bench-train", TI4.format("vitkit"), [("vit-pytorch", TI4.format("vit-pytorch")),
                                                        ("timm", TI4.format("timm"))])}),
    ("`vitkit serve`, 64 clients: img/s",
     {"amx-cpu": ("serve", "64 clients: img/s", [("one image at a time", "one at a time: img/s")])}),
]
README_KINDS = ("amx-cpu", "h100")
SCRIPTS = [  # (command, what it measures): the page's list of the benchmarks
    ("python benchmarks/accuracy.py digits|cifar10|fashion-mnist [--budget 1800] [--seed N]",
     "`vitkit train` with no flags, against simple peers where the data set has them"),
    ("python benchmarks/speed.py [--compare timm,hf,torchvision,vit-pytorch]",
     "the standard speed table: inference and training against the peers, like for like"),
    ("vitkit bench --model vit_ti4_32 --mode train --dtype bf16 --batch 128 --compare timm,vit-pytorch --compile",
     "one model against the peers (recorded by hand as `bench-train`)"),
    ("python benchmarks/train_speed.py",
     "`vitkit train`'s images per second and loader wait against an earlier commit"),
    ("python benchmarks/cpu_kernels.py, allocator.py, head_tokens.py",
     "one change to the training or inference step against the step without it, in paired rounds"),
    ("python benchmarks/kernel_rates.py", "the training step's linears, convolutions and GELU, kernel by kernel"),
    ("python benchmarks/ablation.py --budget 1800", "what each choice of the CIFAR-10 default buys, at equal time"),
    ("python benchmarks/transfer.py, distill.py",
     "fine-tuning against a linear probe and training from scratch; a CNN teacher"),
    ("python benchmarks/grad_checkpointing.py", "ViT-L/16 training memory with and without gradient checkpointing"),
    ("python benchmarks/serve.py, loader.py, agreement.py RUN",
     "`vitkit serve` under concurrent clients; the loader while training; bf16 against fp32"),
    ("python benchmarks/serve.py --attack", "`vitkit serve`'s clients beside clients that attack it"),
    ("python benchmarks/streaming.py loaders|scale",
     "photo loaders: folders, WebDataset shards and timm's; shards streamed at 10,000 and 100,000 images"),
    ("python benchmarks/resolution.py, flexi_patch.py, naflex_packing.py, large_images.py",
     "images of any shape: token budgets, patch sizes, padding against packing, windowed attention"),
    ("benchmarks/gpu.sh", "the GPU check: device tests, ViT-B/16 against timm, CIFAR-10, torchrun"),
]
HOW = [
    "## How the figures are measured", "", "| command | what it measures |", "|---|---|",
    *(f"| `{command.replace('|', chr(92) + '|')}` | {what} |" for command, what in SCRIPTS), "",
    "`vitkit bench` and `speed.py` compare like with like, in one process: every library builds the same "
    "architecture (timm and Hugging Face get vitkit's weights, and each row's logits are checked against vitkit's "
    "fp32 model: a row that computes something else is marked `DIFFERS`); every library runs eager and, with "
    "`--compile`, under `torch.compile` (with freezing for inference); bf16 is handled the same way for all "
    "(weights cast once by default, or autocast); training uses fp32 master weights and autocast for all. The "
    "libraries take turns within each round, in a rotating order, and the matmul peak (in the benchmark's dtype) "
    "is measured every round; rounds repeat until the spread stops growing. Every row has min / median / max "
    "images per second and its share of the measured peak, counting the work its own library does. A difference "
    "is called a **win** only when the two ranges do not overlap, else **within spread**; each comparison also "
    "gives the ratio of the two rows within each round, since a drift of the machine between rounds widens both "
    "ranges alike.",
]


def load(results: Path = RESULTS) -> list[dict]:
    return [json.loads(line) for path in sorted(results.glob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


def latest(records: list[dict]) -> dict[str, dict[str, dict]]:
    """benchmark -> machine kind -> its latest record."""
    found: dict[str, dict[str, dict]] = {}
    for r in sorted(records, key=lambda r: r["date"]):
        found.setdefault(r["benchmark"], {})[r["machine"]["kind"]] = r
    return found


def number(x: float) -> str:
    """Four significant digits at most, thousands separated; a count stays a count."""
    if isinstance(x, int) or abs(x) >= 1000:
        return f"{x:,.0f}"
    text = f"{x:.4g}"
    return text if "." in text or "e" in text else text + ".0"


def central(value) -> str:
    """A figure's one number: its median, or its value."""
    if isinstance(value, dict):
        return number(value.get("median", value.get("value")))
    return number(value) if isinstance(value, (int, float)) else str(value)


def machine(m: dict) -> str:
    cpu = "" if m.get("cpu") in (None, "not recorded") else m["cpu"]
    parts = [m["gpu"] or "", cpu, f"{m['cores']} cores", f"torch {m['torch']}"]
    return ", ".join(p for p in parts if p)


def figure_row(name: str, value) -> str:
    if not isinstance(value, dict):
        return f"| {name} | | {central(value)} | | |"
    cell = lambda key: number(value[key]) if key in value else ""  # noqa: E731
    middle = cell("median") or cell("value")
    return f"| {name} | {cell('min')} | {middle} | {cell('max')} | {value.get('unit', '')} |"


def record_section(kind: str, r: dict) -> list[str]:
    hand = " Hand-run: not by a benchmark script." if r.get("hand_run") else ""
    lines = [f"#### {KINDS.get(kind, kind)}", "",
             f"`{r['command']}`", "",
             f"Commit {r['commit'] or 'not recorded'}; {r['date'].replace('T', ' ').replace('Z', ' UTC')}; "
             f"{machine(r['machine'])}.{hand}", ""]
    if r.get("notes"):
        lines += [r["notes"], ""]
    lines += ["| figure | min | median (or value) | max | unit |", "|---|---|---|---|---|"]
    lines += [figure_row(name, value) for name, value in r["figures"].items()]
    return [*lines, ""]


def group_of(benchmark: str) -> str:
    return next((title for title, prefixes in GROUPS if benchmark.startswith(prefixes)), "Other benchmarks")


def page(records: list[dict]) -> str:
    """docs/benchmarks.md: every benchmark's latest record per machine kind."""
    newest = latest(records)
    order = [title for title, _ in GROUPS] + ["Other benchmarks"]
    lines = ["# Benchmarks", "",
             "<!-- Generated by `python benchmarks/report.py` from benchmarks/results/*.jsonl: do not edit. -->", "",
             "Each script under `benchmarks/` appends one record per run to `benchmarks/results/<benchmark>.jsonl`; "
             "this page shows the latest record of every benchmark on each kind of machine. To update a figure, run "
             "its benchmark, then `python benchmarks/report.py`. A virtual machine's speed drifts, so compare "
             "figures within one record: the peers in a record ran in the same process, taking turns round by "
             "round. Hand-run records were measured by shell loops or throwaway scripts and rewritten as records "
             "once.", "", *HOW, ""]
    for group in order:
        names = sorted(b for b in newest if group_of(b) == group)
        if not names:
            continue
        lines += [f"## {group}", ""]
        for name in names:
            kinds = sorted(newest[name], key=lambda k: list(KINDS).index(k) if k in KINDS else len(KINDS))
            title = max(newest[name].values(), key=lambda r: r["date"])["title"]
            lines += [f"### {title} {{ #{name.replace('.', '')} }}", "", f"Benchmark `{name}`.", ""]
            for kind in kinds:
                lines += record_section(kind, newest[name][kind])
    return "\n".join(lines).rstrip() + "\n"


def cell(newest: dict, kind: str, spec: tuple[str, str, list[tuple[str, str]]] | None) -> tuple[str, dict | None]:
    if spec is None:
        return "—", None
    benchmark, mine, peers = spec
    r = newest.get(benchmark, {}).get(kind)
    if r is None or mine not in r["figures"]:
        return "—", None
    shown = [f"{label} {central(r['figures'][name])}" for label, name in peers if name in r["figures"]]
    return central(r["figures"][mine]) + (f" ({', '.join(shown)})" if shown else ""), r


def table(records: list[dict]) -> str:
    """The README's figures table, between its markers."""
    newest = latest(records)
    lines = [START, f"| figure | {' | '.join(KINDS[k] for k in README_KINDS)} |",
             "|---|" + "---|" * len(README_KINDS)]
    machines: dict[str, list[str]] = {k: [] for k in README_KINDS}
    for label, specs in README_ROWS:
        cells = []
        for kind in README_KINDS:
            text, r = cell(newest, kind, specs.get(kind))
            cells.append(text)
            if r is not None and machine(r["machine"]) not in machines[kind]:
                machines[kind].append(machine(r["machine"]))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append(f"| machine | {' | '.join('; '.join(machines[k]) for k in README_KINDS)} |")
    return "\n".join([*lines, END])


def with_table(text: str, new: str, start_mark: str = START, end_mark: str = END) -> str:
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise SystemExit(f"no {start_mark} ... {end_mark} block")
    return text[:start] + new + text[end + len(end_mark):]


def on_paper(records: list[dict]) -> str:
    """docs/distributed.md's table: ViT-B/16 on ImageNet-1k for 300 epochs on 1, 8 and 64 H100s, from
    the H100's measured training rate and the shards' measured decoding rate per core."""
    newest = latest(records)
    rate = newest["gpu"]["h100"]["figures"][B16.format("train", 256, "vitkit")]["median"]
    loaders = next(iter(newest["loader-photos"].values()))["figures"]
    per_core = sorted(loaders[f"shards, {n} worker(s): img/s per worker"]["median"] for n in (1, 2))
    cores = [round(rate / per_core[1]), round(rate / per_core[0])]

    def duration(seconds: float) -> str:
        return (f"{seconds / 3600:.2g} h" if seconds >= 3600 else f"{seconds / 60:.2g} min" if seconds >= 60
                else f"{seconds:.2g} s")

    rows = {"images/s": lambda g: number(rate * g),
            "300 epochs": lambda g: duration(300 * IMAGENET / (rate * g)),
            "one epoch": lambda g: duration(IMAGENET / (rate * g)),
            "read from storage": lambda g: f"{rate * g * IMAGE_KB / 1e6:.2g} GB/s",
            "512 MB shards read per second": lambda g: f"{rate * g * IMAGE_KB / 512e3:.2g}",
            f"decoding cores ({cores[0]}-{cores[1]} per GPU)": lambda g: f"{cores[0] * g:,}-{cores[1] * g:,}"}
    lines = [PAPER_START, "| | 1 H100 | 8 H100s (1 node) | 64 H100s (8 nodes) |", "|---|---|---|---|",
             *(f"| {name} | {' | '.join(row(g) for g in (1, 8, 64))} |" for name, row in rows.items()),
             "", f"From {number(rate)} images/s per H100 and {number(per_core[0])}-{number(per_core[1])} "
             "photos/s per core.", PAPER_END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = parser.parse_args()
    records = load()
    wanted = {PAGE: page(records), README: with_table(README.read_text(), table(records)),
              PAPER: with_table(PAPER.read_text(), on_paper(records), PAPER_START, PAPER_END)}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            old = path.read_text().splitlines() if path.exists() else []
            sys.stdout.writelines(line + "\n" for line in difflib.unified_diff(
                old, wanted[path].splitlines(), str(path.relative_to(ROOT)), "generated", lineterm="", n=1))
        if stale:
            raise SystemExit(f"{', '.join(str(p.relative_to(ROOT)) for p in stale)}: not what the records give; "
                             "run python benchmarks/report.py")
        print("docs/benchmarks.md, the README's figures table and docs/distributed.md's table match the records")
        return
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
