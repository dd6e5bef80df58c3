"""The fast paths, kept apart from the model so that the model stays the plain reference.

Inference: weights cast to bf16 once (autocast would re-cast every weight on every call) and
optionally `torch.compile` with freezing (constant-folds the weights and pre-packs them for the
CPU's matmul library). Training on CPU: the explicit attention softmax, whose backward is faster
there than SDPA's kernels at ViT sizes, and ATen's GELU kept whole under torch.compile. Each is
tested to compute the reference function.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def for_inference(model: nn.Module, dtype: str | torch.dtype = "fp32", compile: bool = False) -> nn.Module:
    """A copy of `model` in eval mode with weights in `dtype`, compiled if asked. Call the result
    under `torch.inference_mode()` with inputs in `dtype` (freezing assumes the weights never
    change). The caller's model keeps its dtype and training flag; the copy costs its memory once."""
    model = copy.deepcopy(model).eval().to(DTYPES.get(dtype, dtype))
    return Frozen(model).eval() if compile else model


class Frozen(nn.Module):
    """`torch.compile` with inductor's freezing. Whether the weights become constants of the graph
    or stay its inputs is decided when dynamo traces, from the global inductor config: passing
    `options={"freezing": True}` to `torch.compile` alone froze nothing (torch 2.14: the linears
    stayed `addmm` on weight inputs). So every call, and thus every (re)trace, runs under it (the
    config is process-wide: a model compiled by another thread meanwhile would be frozen too).
    Attributes not found here are the compiled model's, as with `torch.compile`'s own wrapper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "compiled":  # not there yet (unpickling): no recursion
                raise
            return getattr(self.compiled, name)


def use_training_kernels(model: nn.Module, device: torch.device) -> nn.Module:
    """On CPU, train with the kernels that are faster there; on GPUs the model stays as it is.
    Returns `model`, changed in place (the function it computes is the same).

    - The explicit softmax(q k^T / sqrt(d)) v: at ViT sizes its backward is faster than SDPA's
      math backend, and its flash kernel is slower still (measured in one process, ViT width 128,
      65 tokens, batch 128, bf16, AMX CPU: 888 vs 636 img/s eager, 1126 vs 848 compiled).
    - GELU as one opaque operation (`AtenGELU`): torch.compile would otherwise generate its own
      erf, about 3x slower in bf16 than ATen's vectorised kernel on CPU; GELU being a small share
      of a step, the compiled step gains 1.03-1.06x (`benchmarks/cpu_kernels.py`)."""
    cpu = device.type == "cpu"
    for module in list(model.modules()):
        if hasattr(module, "fused"):
            module.fused = not cpu
        act = getattr(module, "act", None)
        if cpu and type(act) is nn.GELU:
            module.act = AtenGELU(act.approximate).train(act.training)
    return model


class AtenGELU(nn.GELU):
    """nn.GELU whose forward and backward are ATen's own kernels, even inside torch.compile (no
    double backward: training needs none). Eager, nn.GELU already is ATen's kernel, and the custom
    op's Python dispatch would only add its cost (about 0.13 ms per forward and backward on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(x)
        return aten_gelu(x, self.approximate)


@torch.library.custom_op("vitkit::gelu", mutates_args=())
def aten_gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.ops.aten.gelu(x, approximate=approximate)


@torch.library.custom_op("vitkit::gelu_backward", mutates_args=())
def aten_gelu_backward(grad: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, x, approximate=approximate)


@aten_gelu.register_fake
def _(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.empty_like(x)


@aten_gelu_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch.empty_like(x)


def _save_input(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.approximate = inputs[1]


def _backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
    return aten_gelu_backward(grad, ctx.saved_tensors[0], ctx.approximate), None


aten_gelu.register_autograd(_backward, setup_context=_save_input)
