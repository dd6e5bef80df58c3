"""Hand a model to deployment: ONNX (opset >= 17) or a `torch.export` program (.pt2).

The exported program is run on fresh inputs and compared with the PyTorch model before the file
is written (atomically), so a file that exists is a file that computes the same function.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from vitkit import atomic
from vitkit.data.naflex import check_budget, fit_grid
from vitkit.extras import require
from vitkit.model.normalization import HALF, Normalization
from vitkit.model.vit import ViT

OPSET = 18
TOLERANCE = 1e-4  # relative to the logits' scale


def _check(name: str, expected: torch.Tensor, got: torch.Tensor) -> float:
    error = (expected - got).abs().max().item() / max(expected.abs().max().item(), 1.0)
    if error > TOLERANCE:
        raise ValueError(f"the exported {name} program differs from PyTorch by {error:.2e} "
                         f"(> {TOLERANCE}); not written")
    return error


class Normalized(nn.Module):
    """The model with its input normalization in front: it takes float images in [0, 1]."""

    def __init__(self, model: ViT, normalization: Normalization):
        super().__init__()
        self.model, c = model, model.config.in_channels
        per_channel = lambda values: torch.tensor(values).repeat(c // len(values)).view(1, c, 1, 1)  # noqa: E731
        self.register_buffer("mean", per_channel(normalization.mean), persistent=False)
        self.register_buffer("std", per_channel(normalization.std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def export(model: ViT, out: str | Path, format: str = "onnx", dynamic_batch: bool = False,
           include_normalization: bool = False, max_tokens: int | None = None) -> dict:
    """Export `model` to `out`; returns the batch sizes checked and the largest relative error.
    An fp32 eval-mode copy is exported: the caller's model keeps its dtype and training flag.

    `include_normalization`: the program normalises its input itself with the model's own
    normalization (`model.normalization`, half if it has none), so it takes float images scaled
    to [0, 1], (batch, channels, height, width); else it takes normalised images.
    `max_tokens`: the program takes images of any height and width in whole patches (the position
    table resampled in the graph), for images resized under this token budget by
    `vitkit.data.naflex.fit_grid`; the images of one call share one size."""
    if format not in ("onnx", "pt2"):
        raise ValueError(f"export format {format!r}: use onnx or pt2")
    if max_tokens is not None:
        check_budget(max_tokens)
        return export_any_shape(model, out, format, dynamic_batch, include_normalization, max_tokens)
    normalization = model.normalization or HALF
    model = copy.deepcopy(model).eval().float()
    c = model.config
    if len(normalization.mean) not in (1, c.in_channels):
        raise ValueError(f"the model's normalization has {len(normalization.mean)} channel values and the model "
                         f"takes {c.in_channels} channels")
    module = Normalized(model, normalization).eval() if include_normalization else model
    draw = torch.rand if include_normalization else torch.randn  # images in [0, 1], or normalised ones
    example = draw(2, c.in_channels, *c.image_hw)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    checks = [1, 7] if dynamic_batch else [2]
    inputs = {b: draw(b, c.in_channels, *c.image_hw) for b in checks}
    with torch.no_grad():
        expected = {b: module(x) for b, x in inputs.items()}
    with atomic.atomic_path(out) as tmp:
        write = _write_pt2 if format == "pt2" else _write_onnx
        errors = write(module, example, dynamic, tmp, inputs, expected)
    return {"file": str(out), "format": format, "checked_batches": checks, "max_rel_error": max(errors),
            "input": "float images in [0, 1]" if include_normalization else "normalised images",
            "normalization": normalization.to_dict(), "normalization_in_graph": include_normalization}


def _write_pt2(module: nn.Module, example: torch.Tensor, dynamic: dict | None, path: Path,
               inputs: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> list[float]:
    """A torch.export program, loaded back and checked against the model on `inputs`."""
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=dynamic), path)
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        return [_check("pt2", expected[b], loaded(x)) for b, x in inputs.items()]


def _write_onnx(module: nn.Module, example: torch.Tensor, dynamic: dict | None, path: Path,
                inputs: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> list[float]:
    """An ONNX file, run by onnxruntime and checked against the model on `inputs`."""
    onnxruntime = require("onnxruntime", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")
    torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["logits"],
                      opset_version=OPSET, dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [_check("ONNX", expected[b], torch.from_numpy(session.run(None, {"images": x.numpy()})[0]))
            for b, x in inputs.items()]


def export_any_shape(model: ViT, out: str | Path, format: str, dynamic_batch: bool, include_normalization: bool,
                     max_tokens: int) -> dict:
    """`export` for images of their own shapes under a token budget: dynamic height and width in
    whole patches, checked on grids of 1:2, 1:1 and 2:1 images under the budget."""
    normalization = model.normalization or HALF
    model = copy.deepcopy(model).eval().float()
    model.config = model.config.replace(dynamic_size=True)
    c, (ph, pw) = model.config, model.config.patch_hw
    module = Normalized(model, normalization).eval() if include_normalization else model
    draw = torch.rand if include_normalization else torch.randn
    grids = [fit_grid((h, w), (ph, pw), max_tokens) for h, w in ((300, 400), (200, 400), (400, 400), (400, 200))]
    example = draw(2, c.in_channels, grids[0][0] * ph, grids[0][1] * pw)
    rows, cols = torch.export.Dim("rows", min=1, max=max_tokens), torch.export.Dim("cols", min=1, max=max_tokens)
    dims = {2: ph * rows, 3: pw * cols} | ({0: torch.export.Dim("batch", min=1, max=4096)} if dynamic_batch else {})
    checks = [(1 if dynamic_batch else 2, r, k) for r, k in grids[1:]]
    inputs = {i: draw(b, c.in_channels, r * ph, k * pw) for i, (b, r, k) in enumerate(checks)}
    with torch.no_grad():
        expected = {i: module(x) for i, x in inputs.items()}
    with atomic.atomic_path(out) as tmp:
        write = _write_pt2 if format == "pt2" else _write_onnx
        errors = write(module, example, {"x": dims}, tmp, inputs, expected)
    return {"file": str(out), "format": format, "checked_batches": [list(x.shape) for x in inputs.values()],
            "max_rel_error": max(errors), "max_tokens": max_tokens,
            "input": f"images resized so that their grid of {ph}x{pw} patches fits {max_tokens} tokens (one size a "
                     "call)" + (", in [0, 1]" if include_normalization else ", normalised"),
            "normalization": normalization.to_dict(), "normalization_in_graph": include_normalization}
