"""vitkit: the Vision Transformer, from training to explanation."""

from vitkit.model import PRESETS, ViT, ViTConfig, flops, get_config, list_models
from vitkit.model.fast import for_inference
from vitkit.weights import create_model, from_vit_pytorch, load, save

__version__ = "0.1.0"
__all__ = ["PRESETS", "ViT", "ViTConfig", "create_model", "flops", "for_inference", "from_vit_pytorch",
           "get_config", "list_models", "load", "save"]
