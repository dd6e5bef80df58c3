"""`vitkit.load`: one entry point that recognises what a path holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.model.vit import ViT
from vitkit.weights import native


def load(path: str | Path, format: str = "auto", **overrides: Any) -> ViT:
    """Load a model from a `save_pretrained` directory (more formats arrive with the converters)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if format in ("auto", "vitkit") and native.is_native(path):
        return native.load_pretrained(path, **overrides)
    raise ValueError(f"{path} is not a vitkit model directory (config.json + model.safetensors)")
