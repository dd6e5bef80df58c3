"""vitkit's own weights format: a directory with `config.json` and `model.safetensors`.

Writing needs no model class (`save_weights` takes a state dict and a config), so the model's
`save_pretrained` can use it; reading back into modules is `model/build.py`'s `load_pretrained`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vitkit import atomic
from vitkit.model.cnn import CNNConfig
from vitkit.model.config import ViTConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_TAG = "vitkit"


def save_pretrained(model: torch.nn.Module, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save weights and config; `extra` (e.g. class names) is kept in config.json beside them,
    with the model's input normalization when it has one."""
    if getattr(model, "normalization", None) is not None:
        extra = {"normalize": model.normalization.to_dict(), **(extra or {})}
    return save_weights(model.state_dict(), model.config, directory, extra)


def save_weights(state: dict[str, torch.Tensor], config: ViTConfig | CNNConfig, directory: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """`save_pretrained` from a state dict (what FSDP gathers from its shards)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic.atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    kind = "cnn" if isinstance(config, CNNConfig) else "vit"
    meta = {"format": FORMAT_TAG, kind: config.to_dict(), **(extra or {})}
    atomic.write_text(directory / CONFIG, json.dumps(meta, indent=2) + "\n")
    return directory


def is_native(directory: Path) -> bool:
    config = directory / CONFIG
    if not (directory.is_dir() and config.is_file() and (directory / WEIGHTS).is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT_TAG
    except (json.JSONDecodeError, AttributeError):
        return False


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Everything in config.json besides the architecture (class names, training recipe, ...)."""
    meta = json.loads((Path(directory) / CONFIG).read_text())
    meta.pop("vit", None)
    meta.pop("cnn", None)
    return meta


def read_config(directory: str | Path) -> ViTConfig | CNNConfig:
    """The architecture recorded in config.json, checked before any weight is read: a hostile
    config is refused before anything is allocated."""
    cnn = json.loads((Path(directory) / CONFIG).read_text()).get("cnn")
    return CNNConfig.from_dict(cnn) if isinstance(cnn, dict) else ViTConfig.load(Path(directory) / CONFIG)
