"""Configs and weights into modules: a fresh model for a config, a state dict loaded into one
(adapted to a new class count or image size), and vitkit's own directories read back."""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vitkit.model import native, position, window
from vitkit.model.cnn import CNN, CNNConfig
from vitkit.model.config import ViTConfig
from vitkit.model.normalization import AssumedNormalization, Normalization
from vitkit.model.vit import ViT

log = logging.getLogger("vitkit")


def build_model(config: ViTConfig | CNNConfig) -> ViT | CNN:
    """The module for a config: a ViT, or a torchvision CNN."""
    return CNN(config) if isinstance(config, CNNConfig) else ViT(config)


def config_from_dict(data: dict[str, Any]) -> ViTConfig | CNNConfig:
    return CNNConfig.from_dict(data) if "arch" in data else ViTConfig.from_dict(data)


def load_pretrained(directory: str | Path, **overrides: Any) -> ViT | CNN:
    """Load a `save_pretrained` directory. Overrides such as image_size or num_classes adapt it:
    the position embedding is resampled, and a new class count gets a fresh head."""
    directory = Path(directory)
    config = native.read_config(directory)
    state = load_file(str(directory / native.WEIGHTS))
    if isinstance(config, CNNConfig):
        model = cnn_with_state(config, state, **overrides)
    else:
        model = build_with_state(config, state, **overrides)
    recorded = native.read_meta(directory).get("normalize")
    if recorded is None:
        warnings.warn(f"{directory} does not record its input normalization (written before vitkit recorded it); "
                      "assuming half (mean=std=0.5); set it with vitkit.load(..., normalize=...) or --normalize",
                      AssumedNormalization, stacklevel=4)
    model.normalization = Normalization.parse(recorded or "half")
    return model


def cnn_with_state(config: CNNConfig, state: dict[str, torch.Tensor], **overrides: Any) -> CNN:
    """A CNN run: a new class count gets a fresh classifier; a new image size changes nothing
    (convolutions take any size)."""
    unknown = sorted(set(overrides) - {"num_classes", "image_size", "drop_path", "dropout"})
    if unknown:
        raise ValueError(f"a {config.arch} run cannot be adapted with {unknown[0]}=")
    fields = {k: overrides[k] for k in ("num_classes", "image_size") if k in overrides}
    target = config.replace(**fields)
    with torch.device("meta"):  # names and shapes first, without allocating
        skeleton = CNN(target)
    expected, fresh = skeleton.state_dict(), set()
    if target.num_classes != config.num_classes:
        linear = [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
        fresh = {f"{n}.{p}" for n in linear for p in ("weight", "bias")}
        state = {k: v for k, v in state.items() if k not in fresh}
        log.warning("new classifier for %d classes (the weights have %d): it starts untrained",
                    target.num_classes, config.num_classes)
    missing, unexpected = sorted(set(expected) - set(state) - fresh), sorted(set(state) - set(expected))
    wrong = [k for k in state if k in expected and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not match {config.arch}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
                         f"other shapes {wrong[:8]}")
    check_finite(state)
    model = CNN(target)
    model.load_state_dict(state, strict=False)
    return model


def check_finite(state: dict[str, torch.Tensor]) -> None:
    """Weights with NaN or infinite values would make every answer NaN, silently: refused."""
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"weight {key!r} holds NaN or infinite values; these weights are broken (a training "
                             "run that diverged?): use an earlier checkpoint")


def build_with_state(config: ViTConfig, state: dict[str, torch.Tensor], **overrides: Any) -> ViT:
    """A model for `config` (with overrides) holding `state`; refuses to half-load."""
    target = config.replace(**overrides) if overrides else config
    fresh_head = target.num_classes != config.num_classes or target.feature_dim != config.feature_dim
    if fresh_head:
        log.warning("new head for %d classes (the weights have %d): it starts untrained",
                    target.num_classes, config.num_classes)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "head_dist."))}
    if target.grid != config.grid and target.pos_embed == "learned" and "pos_embed" in state:
        # resample from the source's own grid: a non-square one cannot be told from the count
        state = {**state, "pos_embed": position.resample(state["pos_embed"], target.grid, config.pos_prefix_rows,
                                                         old_grid=config.grid)}
    with torch.device("meta"):  # names and shapes first, without allocating: a config that lies is refused here
        expected = ViT(target).state_dict()
    state = resized_relative_tables(state, expected)
    missing = [k for k in expected if k not in state and not (fresh_head and k.startswith(("head.", "head_dist.")))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"weights do not match the architecture: missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    for key, value in state.items():
        if key != "pos_embed" and expected[key].shape != value.shape:
            raise ValueError(f"weight {key!r} has shape {tuple(value.shape)} but the model expects "
                             f"{tuple(expected[key].shape)}")
    check_finite(state)
    model = ViT(target)
    state = OrderedDict(state)
    state._metadata = {"": {"pos_grid": list(target.grid)}}  # resampled to the target's grid above
    model.load_state_dict(state, strict=False)  # the fresh head's weights stay as initialised
    return model


def resized_relative_tables(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
                            ) -> dict[str, torch.Tensor]:
    """SAM's global blocks' relative position tables, made for the source's grid, resampled
    linearly for the target's (as timm does at run time for another grid)."""
    out = dict(state)
    for key, value in state.items():
        if key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and key in expected \
                and expected[key].shape[0] != value.shape[0] and expected[key].shape[1:] == value.shape[1:]:
            out[key] = window.resize_table(value, expected[key].shape[0])
    return out
