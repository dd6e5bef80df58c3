"""Resumable checkpoints: written atomically, read without unpickling code."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit import atomic

FORMAT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> None:
    """temp file + fsync + rename: a kill or a full disk leaves the previous checkpoint intact."""
    with atomic.atomic_path(path) as tmp:
        torch.save({**state, "format_version": FORMAT_VERSION, "rng": rng_state()}, tmp)


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; was the run started with this --out?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything that could run code
        raise ValueError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
