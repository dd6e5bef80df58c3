"""The fast paths, kept apart from the model so that the model stays the plain reference.

Inference: weights cast to bf16 once (autocast would re-cast every weight on every call) and
optionally `torch.compile` with freezing (constant-folds the weights and pre-packs them for the
CPU's matmul library). Training on CPU: the explicit attention softmax, whose backward is faster
there than SDPA's kernels at ViT sizes. Each is tested to compute the reference function.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch._inductor import config as inductor_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def for_inference(model: nn.Module, dtype: str | torch.dtype = "fp32", compile: bool = False) -> nn.Module:
    """A copy of `model` in eval mode with weights in `dtype`, compiled if asked. Call the result
    under `torch.inference_mode()` with inputs in `dtype` (freezing assumes the weights never
    change). The caller's model keeps its dtype and training flag; the copy costs its memory once."""
    model = copy.deepcopy(model).eval().to(DTYPES.get(dtype, dtype))
    return Frozen(model) if compile else model


class Frozen(nn.Module):
    """`torch.compile` with inductor's freezing. Whether the weights become constants of the graph
    or stay its inputs is decided when dynamo traces, from the global inductor config: passing
    `options={"freezing": True}` to `torch.compile` alone froze nothing (torch 2.14: the linears
    stayed `addmm` on weight inputs). So every call, and thus every (re)trace, runs under it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.compiled = torch.compile(model)

    def forward(self, *args, **kwargs):
        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def use_training_attention(model: nn.Module, device: torch.device) -> nn.Module:
    """On CPU, train with the explicit softmax(q k^T / sqrt(d)) v: at ViT sizes its backward is
    faster than SDPA's math backend, and its flash kernel is slower still (measured in one process,
    ViT width 128, 65 tokens, batch 128, bf16, AMX CPU: 888 vs 636 img/s eager, 1126 vs 848
    compiled). On GPUs SDPA's fused kernels stay. Returns `model`, changed in place."""
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = device.type != "cpu"
    return model
