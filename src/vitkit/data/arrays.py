"""Data sets that come as arrays: scikit-learn's digits, MNIST-style IDX files, CIFAR batches.

Each reader returns uint8 images (N, C, H, W) and int64 labels, plus class names.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import typing
from pathlib import Path

import numpy as np
import torch

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0

Arrays = tuple[torch.Tensor, torch.Tensor]


def digits() -> tuple[Arrays, Arrays, list[str]]:
    """scikit-learn's bundled 8x8 digits (no download): a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=data.target, random_state=DIGITS_SPLIT_SEED)
    as_arrays = lambda idx: (torch.from_numpy(images[idx]), torch.from_numpy(data.target[idx]).long())  # noqa: E731
    return as_arrays(idx_train), as_arrays(idx_test), [str(c) for c in data.target_names]


# -- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """The IDX format: 2 zero bytes, a type code, the number of dimensions, sizes, then data."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    data = raw[4 + 4 * ndim:]
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or padded: header says {shape} "
                         f"({expected} bytes) but {len(data)} bytes follow")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def idx_split(root: Path, split: str) -> Arrays:
    """`train` or `t10k` images and labels from a folder of IDX files (gzipped or not)."""
    prefix = "train" if split == "train" else "t10k"
    images = _find(root, f"{prefix}-images-idx3-ubyte")
    labels = _find(root, f"{prefix}-labels-idx1-ubyte")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{images.name} and {labels.name} do not match: {x.shape} vs {y.shape}")
    return torch.from_numpy(x.astype(np.uint8))[:, None], torch.from_numpy(y.astype(np.int64))


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root} has no {stem} or {stem}.gz (the original IDX files)")


# -- CIFAR-10 / CIFAR-100 python batches ---------------------------------------------------------
class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are pickles; allow only what they contain, so no file can run code."""

    ALLOWED: typing.ClassVar = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold "
                                         "only arrays and lists, so this file is not one")
        return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
    return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()


CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": ("batches.meta", b"label_names"), "labels": b"labels"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": ("meta", b"fine_label_names"),
                 "labels": b"fine_labels"},
}


def cifar(root: Path, kind: str) -> tuple[Arrays, Arrays, list[str]]:
    """The official python-format batches, from their folder or the downloaded .tar.gz."""
    layout = CIFAR_FILES[kind]
    files = _cifar_files(root)

    def batch(name: str) -> dict:
        if name not in files:
            raise FileNotFoundError(f"{root} has no {name} (expected the {kind} python batches)")
        return _unpickle(files[name])

    def split(names: list[str]) -> Arrays:
        parts = [batch(n) for n in names]
        x = np.concatenate([np.asarray(p[b"data"], dtype=np.uint8) for p in parts])
        y = np.concatenate([np.asarray(p[layout["labels"]], dtype=np.int64) for p in parts])
        return torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)

    meta_name, key = layout["meta"]
    classes = [c.decode() for c in batch(meta_name)[key]]
    return split(layout["train"]), split(layout["test"]), classes


def _cifar_files(root: Path) -> dict[str, bytes]:
    if root.is_file():
        with tarfile.open(root) as tar:
            return {Path(m.name).name: tar.extractfile(m).read() for m in tar if m.isfile()}
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder or archive: {root}")
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
