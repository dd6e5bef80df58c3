"""Using a trained model: load a run, evaluate it on a data set, classify image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vitkit import runtime
from vitkit.data import naflex as naflex_data
from vitkit.data import spec as data_spec
from vitkit.data import transforms
from vitkit.data.datasets import ArrayImages
from vitkit.data.decode import IMAGE_EXTENSIONS, BadImage, read_image
from vitkit.data.loader import default_workers, eval_loader
from vitkit.evaluate import confusion_png, evaluate, model_input
from vitkit.model import flexi, naflex
from vitkit.model.native import is_native, read_meta
from vitkit.model.normalization import HALF, Normalization
from vitkit.model.vit import ViT
from vitkit.weights import load


@dataclass
class LoadedRun:
    model: ViT
    classes: list[str]
    data: str | None  # the data spec it was trained on, if known
    normalize: Normalization
    root: Path
    max_tokens: int | None = None  # the token budget the run trained with (NaFlex), if any


def open_run(run: str | Path, device: torch.device | None = None) -> LoadedRun:
    """A `vitkit train` run directory or any `save_pretrained` directory."""
    root = Path(run)
    if not root.exists():
        raise FileNotFoundError(f"no such run directory: {root}")
    if not is_native(root):
        raise ValueError(f"{root} is not a run directory (it needs config.json and model.safetensors "
                         "as written by `vitkit train` or save_pretrained)")
    model = load(root).eval().to(device or "cpu")
    meta = read_meta(root)
    classes = checked_classes(meta.get("classes"), model.config.num_classes, root)
    data = meta.get("data")
    return LoadedRun(model, classes, data if isinstance(data, str) else None, model.normalization or HALF, root,
                     recorded_max_tokens(meta))


def recorded_max_tokens(meta: dict) -> int | None:
    """The token budget a run records (config.json's "max_tokens", or its recipe's), or None."""
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    value = meta.get("max_tokens", recipe.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json: max_tokens must be a positive number of tokens, got {str(value)[:40]!r}")
    return value


def token_budget(loaded: LoadedRun, max_tokens: int | None) -> int | None:
    """The budget a command runs at (the one given, else the run's), with the model made ready to take
    images of any grid; None: today's fixed size."""
    tokens = loaded.max_tokens if max_tokens is None else max_tokens
    if tokens is None:
        return None
    naflex_data.check_budget(tokens)
    naflex.check_config(loaded.model.config)
    loaded.model.config = loaded.model.config.replace(dynamic_size=True)  # each image at its own grid
    return tokens


def checked_classes(classes: object, outputs: int, root: Path) -> list[str]:
    """A run's class names: as many strings as the head has outputs ("0".."N-1" when none are
    recorded)."""
    if classes is None:
        return [str(i) for i in range(outputs)]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(classes) == outputs):
        raise ValueError(f"{root / 'config.json'}: \"classes\" must be a list of {outputs} class names (strings), "
                         f"one per output of the model's head; got {str(classes)[:100]}")
    return classes


def evaluate_run(run: str | Path, data: str | None = None, split: str | None = None,
                 batch_size: int = 256, workers: int | None = None, device: str | None = None,
                 patch_size: int | None = None, max_tokens: int | None = None) -> dict:
    """Accuracy of a run on a data set. `patch_size`: evaluate at another patch size, the
    patch-embedding kernel resized by FlexiViT's pseudo-inverse (`vitkit.model.flexi`).
    `max_tokens`: every image whole at its own aspect ratio under this token budget (default: the
    run's own, if it trained with one; `vitkit.data.naflex`)."""
    dev = runtime.device(device)
    loaded = open_run(run, dev)
    if patch_size is not None:
        loaded.model = flexi.at_patch_size(loaded.model, patch_size)
    tokens = token_budget(loaded, max_tokens)
    spec = data or loaded.data
    if spec is None:
        raise ValueError(f"{run} does not record its data set; pass --data SPEC")
    config = loaded.model.config
    split = split or default_split(spec)
    dataset, skipped = data_spec.load_for_eval(spec, split, loaded.classes, config.in_channels)
    loader = images_loader(dataset, config, tokens, batch_size, default_workers() if workers is None else workers)
    result = evaluate(loaded.model, loader, len(loaded.classes), dev, bf16=False, normalization=loaded.normalize)
    result["skipped"] = [list(s) for s in skipped] + result["skipped"]
    png = loaded.root / f"confusion-{split}.png"
    confusion_png(result["confusion"], loaded.classes, png,
                    f"{spec} [{split}]: top-1 {100 * result['top1']:.2f}% of {result['images']} images")
    return {"run": str(loaded.root), "data": spec, "split": split, "classes": loaded.classes,
            "patch_size": getattr(config, "patch_size", None), "max_tokens": tokens, **result,
            "confusion_png": str(png)}


def default_split(spec: str) -> str:
    """test if the data has one, else val."""
    kind, path = data_spec.parse(spec)
    return "test" if kind != "folder" or "test" in data_spec.folder.find_splits(path) else "val"


def images_loader(dataset: object, config: object, tokens: int | None, batch_size: int, workers: int) -> object:
    """Every image once, at the model's size (resize to cover, centre crop), or with a token budget
    whole at its own grid (batches are lists of images of their own sizes)."""
    if tokens:
        return eval_loader(dataset, naflex_data.ToGrid(config.patch_hw, tokens), batch_size, workers,
                           collate_fn=naflex_data.collate)
    tf = transforms.eval_transform(config.image_hw)
    if isinstance(dataset, ArrayImages):
        dataset, tf = dataset.resized(config.image_hw), None
    return eval_loader(dataset, tf, batch_size, workers)


def expand_images(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return found


@torch.inference_mode()
def predict(run: str | Path, images: list[str], topk: int = 5, device: str | None = None,
            batch_size: int = 64, max_tokens: int | None = None) -> list[dict]:
    """Top-k classes per image; unreadable files get an `error` entry instead of stopping.
    `max_tokens`: each image whole at its own aspect ratio under this budget (default: the run's)."""
    dev = runtime.device(device)
    loaded = open_run(run, dev)
    config = loaded.model.config
    k = max(1, min(topk, len(loaded.classes)))
    tokens = token_budget(loaded, max_tokens)
    if tokens:
        return predict_own_shapes(loaded, expand_images(images), tokens, k, dev, batch_size)
    tf = transforms.eval_transform(config.image_hw)
    results, batch, names = [], [], []

    def flush():
        if not batch:
            return
        x = loaded.normalize(torch.stack(batch).to(dev), config.in_channels)
        probs = loaded.model(x).float().softmax(-1).cpu()
        for name, p in zip(names, probs, strict=True):
            values, idx = p.topk(k)
            results.append({"image": name, "top": [{"class": loaded.classes[i], "probability": v}
                                                   for v, i in zip(values.tolist(), idx.tolist(), strict=True)]})
        batch.clear()
        names.clear()

    for path in expand_images(images):
        try:
            batch.append(tf(read_image(str(path), config.in_channels, max_side=2 * max(config.image_hw))))
            names.append(str(path))
        except BadImage as e:
            flush()
            results.append({"image": str(path), "error": str(e)})
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def top_classes(loaded: LoadedRun, probs: torch.Tensor, k: int) -> list[dict]:
    values, idx = probs.topk(k)
    return [{"class": loaded.classes[i], "probability": v} for v, i in zip(values.tolist(), idx.tolist(), strict=True)]


@torch.inference_mode()
def predict_own_shapes(loaded: LoadedRun, paths: list[Path], tokens: int, k: int, dev: torch.device,
                       batch_size: int) -> list[dict]:
    """`predict` under a token budget: every image whole at its own grid; batches of about equally
    long sequences (sorted by their token count), so that little of each batch is padding."""
    config, fit = loaded.model.config, naflex_data.ToGrid(loaded.model.config.patch_hw, tokens)
    results: list[dict | None] = [None] * len(paths)
    decoded = []
    for i, path in enumerate(paths):
        try:
            image = read_image(str(path), config.in_channels, max_side=2 * tokens * max(config.patch_hw))
            decoded.append((i, fit(image)))
        except BadImage as e:
            results[i] = {"image": str(path), "error": str(e)}
    decoded.sort(key=lambda item: item[1].shape[-2] * item[1].shape[-1])
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start:start + batch_size]
        probs = loaded.model(model_input(loaded.model, [x for _, x in chunk], loaded.normalize, dev))
        for (i, _), p in zip(chunk, probs.float().softmax(-1).cpu(), strict=True):
            results[i] = {"image": str(paths[i]), "top": top_classes(loaded, p, k)}
    return results
