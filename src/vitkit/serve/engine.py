"""The model side of `vitkit serve`: uploaded bytes in, probabilities and attention maps out.

Nothing here knows about HTTP, so the benchmark can call the very same code one image at a time
as its baseline. Two copies of the model may exist: the fast path (`for_inference`: bf16 weights,
optionally compiled) answers /predict in batches, and the plain fp32 model answers /explain,
because the maps need its attention probabilities (and, for grad-rollout, its gradients).
"""

from __future__ import annotations

import io
import typing
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitkit.data.decode import read_image
from vitkit.data.naflex import ToGrid
from vitkit.data.transforms import eval_transform
from vitkit.evaluate import model_input
from vitkit.explain import maps
from vitkit.infer import LoadedRun, open_run, token_budget
from vitkit.model.fast import for_inference
from vitkit.model.native import is_native
from vitkit.model.normalization import HALF, to_model_input
from vitkit.weights import load

Method = typing.Literal["rollout", "last-layer", "grad-rollout"]  # those of `vitkit explain`
METHODS: tuple[str, ...] = typing.get_args(Method)
OVERLAY_MIN_SIDE = 256  # small models (digits: 16 px) get a picture a person can see


def open_model(source: str | Path, device: torch.device, revision: str | None = None) -> LoadedRun:
    """A run directory as `vitkit predict` opens it, or any weights `vitkit.load` reads; those
    carry no class names, so their classes are "0".."N-1", and their input normalization is
    what `vitkit.load` found for them."""
    path = Path(source)
    if path.is_dir() and is_native(path) and revision is None:
        return open_run(path, device)
    model = load(source, revision=revision).eval().to(device)
    classes = [str(i) for i in range(model.config.num_classes)]
    return LoadedRun(model, classes, None, model.normalization or HALF, path)


class Engine:
    """One loaded model, ready to decode images, classify batches and explain single images."""

    def __init__(self, loaded: LoadedRun, device: torch.device, dtype: str = "fp32", compile: bool = False,
                 max_tokens: int | None = None):
        """`max_tokens`: each image whole at its own aspect ratio under this budget (default: the run's)."""
        self.loaded, self.device, self.dtype, self.compiled = loaded, device, dtype, compile
        self.tokens = token_budget(loaded, max_tokens)
        self.config = loaded.model.config
        self.classes = loaded.classes
        self.fit = ToGrid(self.config.patch_hw, self.tokens) if self.tokens else eval_transform(self.config.image_hw)
        for p in loaded.model.parameters():  # nothing here trains: no autograd graph through the weights
            p.requires_grad_(False)
        self.fast = for_inference(loaded.model, dtype, compile)  # a copy: /explain keeps the fp32 model
        self.input_dtype = next(self.fast.parameters()).dtype

    def decode(self, data: bytes, max_pixels: int | None = None) -> torch.Tensor:
        """Uploaded bytes -> uint8 (C, H, W) at the model's size. Raises BadImage with the reason
        (more than `max_pixels` is refused from the header); huge JPEGs are shrunk while decoding."""
        max_side = 2 * self.tokens * max(self.config.patch_hw) if self.tokens else 2 * max(self.config.image_hw)
        return self.fit(read_image(data, self.config.in_channels, max_side=max_side, max_pixels=max_pixels))

    @torch.inference_mode()
    def probabilities(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Class probabilities (fp32, CPU) for a batch of decoded images, one row per image."""
        if self.tokens:  # images of their own sizes: a NaFlex batch
            x = model_input(self.loaded.model, images, self.loaded.normalize, self.device).to(self.input_dtype)
        else:
            x = to_model_input(torch.stack(images).to(self.device), self.loaded.normalize, self.config.in_channels)
            x = x.to(self.input_dtype)
        return list(self.fast(x).float().softmax(-1).cpu())

    def top(self, probs: torch.Tensor, k: int) -> list[dict]:
        values, idx = probs.topk(max(1, min(k, len(self.classes))))
        pairs = zip(values.tolist(), idx.tolist(), strict=True)
        return [{"class": self.classes[i], "probability": v} for v, i in pairs]

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run the sizes the server will see before the first request does (torch.compile
        compiles here, and CPU kernels pick their plans)."""
        blank = torch.zeros(self.config.in_channels, *self.config.image_hw, dtype=torch.uint8)
        for size in batch_sizes:
            self.probabilities([blank] * size)

    def explain(self, image: torch.Tensor, method: str = "rollout", target: str | None = None) -> dict:
        """The attention map of one decoded image with the fp32 model, as `vitkit explain` draws
        it: (grid_h, grid_w), or (heads, grid_h, grid_w) for last-layer; plus its probabilities."""
        if method not in METHODS:
            raise ValueError(f"method {method!r}: use one of {', '.join(METHODS)}")
        if target is not None and target not in self.classes:
            raise ValueError(f"class {target!r} is not one of the model's classes")
        model = self.loaded.model
        x = to_model_input(image[None].to(self.device), self.loaded.normalize, self.config.in_channels)
        with torch.no_grad():
            probs = model(x).float().softmax(-1)[0].cpu()
        explained = target or self.classes[int(probs.argmax())]
        if method == "rollout":
            heat = maps.rollout(model, x)[0]
        elif method == "last-layer":
            heat = maps.last_layer(model, x)[0]
        else:
            heat = maps.grad_rollout(model, x, self.classes.index(explained))[0]
        heat = heat.detach().float().cpu().nan_to_num(0.0)  # an untrained head's gradients are all 0: 0/0
        return {"map": heat, "probabilities": probs,
                "class": explained if method == "grad-rollout" else None}


def overlay_png(image: torch.Tensor, heat: torch.Tensor) -> bytes:
    """The map stretched over the image as one PNG, coloured and blended as `vitkit explain`'s
    figures draw it (inferno at 55%), without axes: the page shows the classes itself."""
    if heat.ndim == 3:  # last-layer: one map per head; the picture shows their mean
        heat = heat.mean(dim=0)
    h, w = image.shape[-2:]
    scale = max(1, -(-OVERLAY_MIN_SIDE // max(h, w)))
    span = (heat.max() - heat.min()).clamp_min(1e-12)
    heat = F.interpolate(((heat - heat.min()) / span)[None, None], size=(h * scale, w * scale), mode="nearest")
    colours = matplotlib.colormaps["inferno"](heat[0, 0].numpy())[..., :3]
    picture = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0] / 255.0
    picture = picture.expand(3, -1, -1).permute(1, 2, 0).numpy()
    blended = np.rint(255 * (0.45 * picture + 0.55 * colours)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
