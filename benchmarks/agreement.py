"""bf16 against fp32 on a trained model and real images: how often the fast paths keep the fp32
model's top-1 class, their accuracy beside the fp32 model's, and the largest logit difference,
on the held-out split of the data (test where there is one, else the run's validation split).

    python benchmarks/agreement.py RUN [--data SPEC] [--images 2000] [--no-compile] [--no-record]

RUN is a `vitkit train` run (or any save_pretrained directory); SPEC defaults to the data the run
was trained on. For example, after
`vitkit train ../shared/data/cifar10/cifar10-train-jpg.tar.gz --time-budget 1800 --out runs/cifar`:
`python benchmarks/agreement.py runs/cifar`. Each run appends a record to
benchmarks/results/agreement.jsonl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import figure, record
from vitkit.bench import inference_function, tolerance
from vitkit.data import spec as data_spec
from vitkit.data.datasets import ArrayImages
from vitkit.data.transforms import eval_transform
from vitkit.infer import open_run
from vitkit.model.normalization import to_model_input

PATHS = [("weights", False), ("weights", True), ("autocast", False), ("autocast", True)]  # (bf16 as, compiled)


def real_images(spec: str, loaded, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Up to `count` images of the held-out split of `spec` (test where there is one, else val),
    spread evenly over it, as the run's model input; with their labels and the split's name."""
    config = loaded.model.config
    kind, path = data_spec.parse(spec)
    split = "test" if kind != "folder" or "test" in data_spec.folder.find_splits(path) else "val"
    dataset, _ = data_spec.load_for_eval(spec, split, loaded.classes, config.in_channels)
    fit = eval_transform(config.image_hw)
    if isinstance(dataset, ArrayImages):
        dataset, fit = dataset.resized(config.image_hw), (lambda image: image)
    picked, labels = [], []
    for i in torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).long().tolist():
        image, label, problem = dataset[i]
        if problem is None:
            picked.append(fit(image))
            labels.append(label)
    if not picked:
        raise ValueError(f"no readable images in {spec} [{split}]")
    return to_model_input(torch.stack(picked), loaded.normalize), torch.tensor(labels), split


@torch.inference_mode()
def agreement_on_run(run: str | Path, data: str | None, images: int = 1000, dtype: str = "bf16",
                     bf16: str = "weights", compiled: bool = False, batch: int = 64, device: str = "cpu") -> dict:
    """The bench's inference path against the fp32 model of a trained run, on real held-out
    images: top-1 agreement, both accuracies, the largest logit difference (absolute, and
    relative to the largest logit, with the bf16 tolerance of tests/model/test_fast.py beside it)."""
    loaded = open_run(run, torch.device(device))
    spec = data or loaded.data
    if spec is None:
        raise ValueError(f"{run} does not record its data set; give --agreement-data SPEC")
    x, labels, split = real_images(spec, loaded, images)
    fast = inference_function(loaded.model, dtype, bf16, compiled)
    want, got = [], []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch].to(device)
        want.append(loaded.model(chunk).float().cpu())
        got.append(fast(chunk).float().cpu())
    want, got = torch.cat(want), torch.cat(got)
    depth = loaded.model.config.depth
    return {"run": str(run), "data": spec, "split": split, "images": len(labels), "dtype": dtype, "bf16": bf16,
            "execution": "compiled" if compiled else "eager",
            "top1_agreement": (want.argmax(1) == got.argmax(1)).float().mean().item(),
            "accuracy_fp32": (want.argmax(1) == labels).float().mean().item(),
            "accuracy_fast": (got.argmax(1) == labels).float().mean().item(),
            "max_abs_error": (got - want).abs().max().item(),
            "max_rel_error": ((got - want).abs().max() / want.abs().max()).item(),
            "tolerance": tolerance(dtype, depth), "depth": depth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN")
    parser.add_argument("--data", metavar="SPEC", help="real images (default: the run's data)")
    parser.add_argument("--images", type=int, default=2000, help="images, spread evenly over the held-out split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="eager paths only")
    parser.add_argument("--no-record", action="store_true", help="print only; append no record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["| bf16 as | execution | images | top-1 agreement with fp32 | accuracy bf16 / fp32 | "
             "largest logit difference (of the largest logit) | tolerance of tests/test_fast.py |",
             "|---|---|---|---|---|---|---|"]
    figures: dict = {}
    for bf16, compiled in PATHS:
        if compiled and args.no_compile:
            continue
        a = agreement_on_run(args.run, args.data, args.images, "bf16", bf16, compiled)
        lines.append(f"| {bf16} | {a['execution']} | {a['images']} | {100 * a['top1_agreement']:.2f}% | "
                     f"{100 * a['accuracy_fast']:.2f}% / {100 * a['accuracy_fp32']:.2f}% | {a['max_abs_error']:.3g} "
                     f"({100 * a['max_rel_error']:.2f}%) | {100 * a['tolerance']:.1f}% (depth {a['depth']}) |")
        print(lines[-1], flush=True)
        name = f"bf16 {bf16}, {a['execution']}"
        figures |= {f"{name}: top-1 agreement with fp32": figure(100 * a["top1_agreement"], "%", 2),
                    f"{name}: accuracy": figure(100 * a["accuracy_fast"], "%", 2),
                    f"{name}: largest logit difference": figure(100 * a["max_rel_error"], "% of the largest logit", 2)}
    figures["fp32: accuracy"] = figure(100 * a["accuracy_fp32"], "%", 2)
    figures["tolerance of the tests"] = figure(100 * a["tolerance"], "% of the largest logit", 2)
    notes = (f"Run {args.run}; images: {a['data']} [{a['split']}], spread evenly over the split. The fp32 model "
             "is the reference; 'weights': bf16 weights and inputs (vitkit.for_inference), 'autocast': fp32 "
             "weights under bf16 autocast; compiled: torch.compile with freezing.")
    record("agreement", "Agreement: bf16 vs fp32 on a trained model and real images", figures, notes,
           "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
