"""The fast paths, kept apart from the model so that the model stays the plain reference.

Inference: weights cast to bf16 once (autocast would re-cast every weight on every call) and
optionally `torch.compile` with freezing (constant-folds the weights and pre-packs them for the
CPU's matmul library). Training on CPU: SDPA's math backend, whose backward is faster there than
the fused flash kernel's at ViT sizes. Each is tested to compute the reference function.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def for_inference(model: nn.Module, dtype: str | torch.dtype = "fp32", compile: bool = False) -> nn.Module:
    """A copy of `model` in eval mode with weights in `dtype`, compiled if asked. Call the result
    under `torch.inference_mode()` with inputs in `dtype` (freezing assumes the weights never
    change). The caller's model keeps its dtype and training flag; the copy costs its memory once."""
    model = copy.deepcopy(model).eval().to(DTYPES.get(dtype, dtype))
    if compile:
        model = torch.compile(model, options={"freezing": True})
    return model


def training_attention(device: torch.device):
    """On CPU, SDPA's math backend trains faster than its fused flash kernel, whose backward is
    slow at ViT sizes (measured: 88 vs 67 img/s for ViT-Ti/4 at 32 px, batch 128, bf16)."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else nullcontext()
