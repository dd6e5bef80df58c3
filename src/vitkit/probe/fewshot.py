"""The paper's few-shot linear evaluation (section 4.1): a regularised least-squares map from the
frozen features of k images per class to {-1, 1}^K targets, solved in closed form.

As big_vision's `fewshot_lsr` evaluator, which produced the paper's few-shot numbers:

- features are the pre-logits representation (the input of the head), whitened with the mean and
  standard deviation (+ 1e-5) of the k x K training features;
- targets are one-hot vectors rescaled to {-1, 1};
- the weights minimise ||X W + b - Y||^2 + l2 ||W||^2, default l2 = 2^10 (big_vision's
  `common_fewshot` configuration); the closed form is solved in whichever of the D x D or N x N
  systems is smaller;
- for each seed, each class's training images are permuted once (numpy's default_rng(seed)) and
  k-shot takes the first k of each class, so 1-shot's images are among 5-shot's; the accuracy is
  averaged over seeds (default 3, shots 1, 5, 10, 25).

One difference: big_vision appends a constant feature of 100 so that the bias is almost
unregularised; here the bias is exactly unregularised (an intercept). Because the training
features are centred by the whitening, that intercept is the mean target and W is ridge
regression's, which is what scikit-learn's `Ridge(alpha=l2, fit_intercept=True)` computes on the
whitened features (tested).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitkit import runtime
from vitkit.data import spec as data_spec
from vitkit.probe.features import extract, open_model

L2 = 2.0**10
SHOTS = (1, 5, 10, 25)
SEEDS = 3
EPS = 1e-5  # added to the standard deviation, as big_vision does (a constant feature stays 0)


@dataclass
class LinearMap:
    """Whitening then a linear map: scores = ((x - mean) / std) @ weight + bias."""

    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.std) @ self.weight + self.bias

    def accuracy(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        return (self.scores(x).argmax(1) == labels).double().mean().item()


def fit_least_squares(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = L2) -> LinearMap:
    """The closed-form regularised least-squares map from `features` (N, D) to {-1, 1} one-hot
    targets of `labels`, in float64."""
    if not 0 < l2 < math.inf:
        raise ValueError(f"--l2 must be a positive number (it regularises a system that is singular with few "
                         f"shots), got {l2}")
    x = features.double()
    mean, std = x.mean(0), x.std(0, unbiased=False) + EPS
    z = (x - mean) / std  # centred: an unregularised bias is the mean target, W ridge's
    y = 2 * F.one_hot(labels.long(), num_classes).double() - 1
    n, d = z.shape
    if n >= d:
        weight = torch.linalg.solve(z.T @ z + l2 * torch.eye(d, dtype=z.dtype), z.T @ y)
    else:  # (Z^T Z + l2 I)^-1 Z^T = Z^T (Z Z^T + l2 I)^-1: an N x N system
        weight = z.T @ torch.linalg.solve(z @ z.T + l2 * torch.eye(n, dtype=z.dtype), y)
    return LinearMap(mean, std, weight, y.mean(0))


def class_orders(labels: torch.Tensor, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class, its images' indices in the order seed `seed` draws them (k-shot takes the first k)."""
    rng = np.random.default_rng(seed)
    labels = labels.numpy()
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def fewshot_accuracies(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                       num_classes: int, orders: list[list[np.ndarray]], shots: list[int], l2: float) -> list[dict]:
    """For each k: the test accuracy of the map fitted on the first k of each class, per seed.
    `train` = (features, labels) indexed like the permutations; rows whose features are NaN (images
    that could not be read) are left out."""
    features, labels = train
    readable = ~features.isnan().any(1)
    rows = []
    for k in shots:
        accuracies, fewest = [], k
        for per_class in orders:
            chosen = [i for order in per_class for i in order[:k] if readable[i]]
            counts = np.bincount(labels[chosen].numpy(), minlength=num_classes)
            fewest = min(fewest, int(counts.min()))
            accuracies.append(fit_least_squares(features[chosen], labels[chosen], num_classes, l2).accuracy(*test))
        rows.append({"shots": k, "top1": statistics.fmean(accuracies),
                     "std": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
                     "per_seed": accuracies, "fewest_per_class": fewest})
    return rows


def fewshot(source: str | Path, data: str | None = None, shots: list[int] | tuple[int, ...] = SHOTS,
            l2: float = L2, seeds: int = SEEDS, device: str | None = None, batch_size: int = 64,
            workers: int | None = None, revision: str | None = None) -> dict:
    """`vitkit fewshot`: k training images per class sampled from the data's train split, scored on
    its test split (its validation split when it has no test split)."""
    if seeds < 1 or not shots or min(shots) < 1:
        raise ValueError(f"--shots must be positive numbers and --seeds at least 1; got {list(shots)}, {seeds}")
    model = open_model(source, runtime.device(device), revision)
    data = data or _recorded_data(source)
    splits = data_spec.load(data, channels=model.config.in_channels)
    test_name = "test" if splits.test is not None else "val"
    train_set, test_set = splits.split("train", indexed="vitkit fewshot"), splits.split(test_name)
    num_classes = len(splits.classes)
    orders = [class_orders(train_set.labels, num_classes, seed) for seed in range(seeds)]
    needed = sorted({int(i) for per_class in orders for order in per_class for i in order[:max(shots)]})
    sampled = extract(model, train_set.subset(torch.tensor(needed)), batch_size=batch_size, workers=workers)
    features = torch.full((len(train_set), sampled.pooled.shape[1]), float("nan"))
    features[torch.tensor(needed)[sampled.positions]] = sampled.pooled
    test = extract(model, test_set, batch_size=batch_size, workers=workers)
    rows = fewshot_accuracies((features, train_set.labels), (test.pooled, test.labels), num_classes, orders,
                              sorted(set(shots)), l2)
    return {"model": str(source), "data": data, "train_split": "train", "test_split": test_name,
            "test_images": len(test.labels), "classes": splits.classes, "feature_dim": sampled.pooled.shape[1],
            "l2": l2, "seeds": seeds, "results": rows, "skipped": [list(s) for s in sampled.skipped + test.skipped]}


def _recorded_data(source: str | Path) -> str:
    from vitkit.model.native import is_native, read_meta

    recorded = read_meta(source).get("data") if is_native(Path(source)) else None
    if not recorded:
        raise ValueError(f"{source} does not record a data set; pass --data SPEC")
    return recorded


def report_lines(result: dict) -> list[str]:
    """The accuracy table of `fewshot`'s result."""
    lines = [f"few-shot linear evaluation of {result['model']} on {result['data']}: {len(result['classes'])} "
             f"classes, k training images per class from its train split, {result['test_images']} "
             f"{result['test_split']} images scored",
             f"({result['feature_dim']}-d pre-logits features, whitened; regularised least squares, l2 "
             f"{result['l2']:g}; mean over {result['seeds']} seed(s))",
             f"{'shots':>6} {'top-1':>8} {'+- std':>8}"]
    for row in result["results"]:
        short = f"  (a class has only {row['fewest_per_class']})" if row["fewest_per_class"] < row["shots"] else ""
        lines.append(f"{row['shots']:>6} {100 * row['top1']:>7.2f}% {100 * row['std']:>7.2f}{short}")
    if result["skipped"]:
        lines.append(f"skipped {len(result['skipped'])} unreadable file(s)")
    return lines
