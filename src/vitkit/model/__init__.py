"""The model: config, modules, named presets, analytic compute."""

from vitkit.model.config import ViTConfig
from vitkit.model.flops import flops
from vitkit.model.presets import PRESETS, create_model, get_config, list_models
from vitkit.model.vit import ViT

__all__ = ["PRESETS", "ViT", "ViTConfig", "create_model", "flops", "get_config", "list_models"]
