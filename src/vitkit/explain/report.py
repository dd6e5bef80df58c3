"""`vitkit explain` and `vitkit inspect`: the maps of a trained run, drawn and saved."""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.data import spec as data_spec
from vitkit.data.datasets import ArrayImages
from vitkit.data.decode import BadImage, read_image
from vitkit.data.naflex import ToGrid
from vitkit.data.transforms import eval_transform
from vitkit.explain import figures, maps
from vitkit.infer import LoadedRun, expand_images, open_run, token_budget
from vitkit.model.normalization import to_model_input
from vitkit.model.vit import ViT

METHODS = ("rollout", "last-layer", "grad-rollout")


def open_attention_model(run: str | Path) -> LoadedRun:
    loaded = open_run(run)
    if not isinstance(loaded.model, ViT):
        raise ValueError(f"{run} is a {loaded.model.config.arch} (a CNN): attention maps need a ViT")
    return loaded


def explain(run: str | Path, images: list[str], out: str | Path | None = None, method: str = "rollout",
            target: str | None = None, max_tokens: int | None = None) -> list[dict]:
    """One PNG per image: the image, the chosen attention map over it, and the top-3 classes.
    `max_tokens`: each image whole at its own grid under this budget (default: the run's own)."""
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: use one of {METHODS}")
    loaded = open_attention_model(run)
    tokens = token_budget(loaded, max_tokens)
    model, config = loaded.model, loaded.model.config
    if target is not None and target not in loaded.classes:
        raise ValueError(f"--class {target!r} is not one of the model's classes: {loaded.classes}")
    out = Path(out) if out else loaded.root / "explain"
    note = "" if config.pool == "cls" else " (no class token: the mean token is explained)"
    fit = ToGrid(config.patch_hw, tokens) if tokens else eval_transform(config.image_hw)
    max_side = 2 * tokens * max(config.patch_hw) if tokens else 2 * max(config.image_hw)
    results = []
    for path in expand_images(images):
        try:
            image = fit(read_image(str(path), config.in_channels, max_side=max_side))
        except BadImage as e:
            results.append({"image": str(path), "error": str(e)})
            continue
        x = to_model_input(image[None], loaded.normalize, loaded.model.config.in_channels)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        values, idx = probs.topk(min(3, len(loaded.classes)))
        top = [(loaded.classes[i], v) for v, i in zip(values.tolist(), idx.tolist(), strict=True)]
        caption = note  # per image: the class explained is this image's
        if method == "rollout":
            heat = maps.rollout(model, x)[0]
        elif method == "last-layer":
            heat = maps.last_layer(model, x)[0]
        else:
            cls = loaded.classes.index(target) if target else None
            heat = maps.grad_rollout(model, x, cls)[0]
            caption += f" for class {target or top[0][0]}"
        png = out / f"{path.stem}-{method}.png"
        figures.explanation(image, heat, top, method, caption, png)
        results.append({"image": str(path), "png": str(png), "top": [{"class": n, "probability": p} for n, p in top]})
    return results


def inspect(run: str | Path, data: str | None = None, out: str | Path | None = None, count: int = 64) -> dict:
    """The paper's Figure 7 for this model, and its numbers."""
    if count < 1:
        raise ValueError(f"--images must be at least 1, got {count}")
    loaded = open_attention_model(run)
    model, config = loaded.model, loaded.model.config
    spec = data or loaded.data
    if spec is None:
        raise ValueError(f"{run} does not record its data set; pass --data SPEC")
    dataset, _ = data_spec.load_for_eval(spec, "val", loaded.classes, config.in_channels, indexed="vitkit inspect")
    if isinstance(dataset, ArrayImages):
        dataset = dataset.resized(config.image_hw)
    fit = eval_transform(config.image_hw)
    picked = []
    for i in torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).long().tolist():
        image, _, problem = dataset[i]
        if problem is None:
            picked.append(fit(image))
    if not picked:
        raise ValueError(f"no readable images in {spec}")
    x = to_model_input(torch.stack(picked), loaded.normalize, loaded.model.config.in_channels)
    distances = maps.attention_distance(model, x)
    similarity = maps.position_similarity(model)
    components = maps.embedding_components(model)
    out = Path(out) if out else loaded.root
    png = out / "inspect.png"
    figures.inspect_figure(components, similarity, distances, config.image_hw, png)
    return {"png": str(png), "images": len(picked), "image_size": list(config.image_hw),
            "mean_attention_distance": distances.tolist(),
            "position_similarity": similarity.tolist()}
