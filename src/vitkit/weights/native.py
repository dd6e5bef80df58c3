"""vitkit's own format: a directory with `config.json` and `model.safetensors`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vitkit import atomic
from vitkit.data.normalization import Normalization
from vitkit.model import position
from vitkit.model.cnn import CNN, CNNConfig
from vitkit.model.config import ViTConfig
from vitkit.model.vit import ViT

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_TAG = "vitkit"
log = logging.getLogger("vitkit")


def save_pretrained(model: ViT, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save weights and config; `extra` (e.g. class names) is kept in config.json beside them,
    with the model's input normalization when it has one."""
    if model.normalization is not None:
        extra = {"normalize": model.normalization.to_dict(), **(extra or {})}
    return save_weights(model.state_dict(), model.config, directory, extra)


def save_weights(state: dict[str, torch.Tensor], config: ViTConfig, directory: str | Path,
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


def load_pretrained(directory: str | Path, **overrides: Any) -> ViT:
    """Load a `save_pretrained` directory. Overrides such as image_size or num_classes adapt it:
    the position embedding is resampled, and a new class count gets a fresh head."""
    directory = Path(directory)
    # The config is checked before the weights are read: a hostile one is refused before allocation.
    cnn = json.loads((directory / CONFIG).read_text()).get("cnn")
    config = CNNConfig.from_dict(cnn) if isinstance(cnn, dict) else ViTConfig.load(directory / CONFIG)
    state = load_file(str(directory / WEIGHTS))
    if isinstance(config, CNNConfig):
        model = _cnn_with_state(config, state, **overrides)
    else:
        model = build_with_state(config, state, **overrides)
    recorded = read_meta(directory).get("normalize")
    if recorded is None:
        log.info("%s does not record its input normalization (written before vitkit recorded it); assuming "
                 "half (mean=std=0.5); pass --normalize to override", directory)
    model.normalization = Normalization.parse(recorded or "half")
    return model


def _cnn_with_state(config: CNNConfig, state: dict[str, torch.Tensor], **overrides: Any) -> CNN:
    """A CNN run: a new class count gets a fresh classifier; a new image size changes nothing
    (convolutions take any size)."""
    unknown = sorted(set(overrides) - {"num_classes", "image_size", "drop_path", "dropout"})
    if unknown:
        raise ValueError(f"a {config.arch} run cannot be adapted with {unknown[0]}=")
    fields = {k: overrides[k] for k in ("num_classes", "image_size") if k in overrides}
    model = CNN(config.replace(**fields))
    fresh = set()
    if model.config.num_classes != config.num_classes:
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        fresh = {f"{n}.{p}" for n in linear for p in ("weight", "bias")}
        state = {k: v for k, v in state.items() if k not in fresh}
        log.warning("new classifier for %d classes (the weights have %d): it starts untrained",
                    model.config.num_classes, config.num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - fresh:
        raise ValueError(f"weights do not match {config.arch}: missing {sorted(set(missing) - fresh)[:8]}, "
                         f"unexpected {unexpected[:8]}")
    return model


def build_with_state(config: ViTConfig, state: dict[str, torch.Tensor], **overrides: Any) -> ViT:
    """A model for `config` (with overrides) holding `state`; refuses to half-load."""
    target = config.replace(**overrides) if overrides else config
    model = ViT(target)
    fresh_head = target.num_classes != config.num_classes or target.feature_dim != config.feature_dim
    if fresh_head:
        log.warning("new head for %d classes (the weights have %d): it starts untrained",
                    target.num_classes, config.num_classes)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
    if target.grid != config.grid and target.pos_embed == "learned" and "pos_embed" in state:
        # resample from the source's own grid: a non-square one cannot be told from the count
        state = {**state, "pos_embed": position.resample(state["pos_embed"], target.grid, config.pos_prefix_rows,
                                                         old_grid=config.grid)}
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and key != "pos_embed" and expected[key].shape != value.shape:
            raise ValueError(f"weight {key!r} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(expected[key].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (fresh_head and k.startswith(("head.", "head_dist.")))]
    if missing or unexpected:
        raise ValueError(f"weights do not match the architecture: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    return model
