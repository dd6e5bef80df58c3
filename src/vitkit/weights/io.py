"""`vitkit.load` and `vitkit.save`: recognise what a path holds, read it safely, convert it.

Safety: safetensors first; other PyTorch files only through `torch.load(weights_only=True)`,
which refuses pickles that would run code; `.npz` with `allow_pickle=False`. A file that does not
convert completely raises an error naming the key and shapes; nothing is half-loaded, and a file
with weights that no converter read is refused (weights/common.py).
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitkit import atomic
from vitkit.model import build, native
from vitkit.model.normalization import HALF, AssumedNormalization, Normalization
from vitkit.model.presets import get_config
from vitkit.model.vit import ViT
from vitkit.weights import hf, hub, jax, timm, timm_hybrid, timm_naflex, timm_sam, torchvision, vit_pytorch
from vitkit.weights.common import Source, check_consumed

log = logging.getLogger("vitkit")
FORMATS = ("auto", "vitkit", "timm", "hf", "torchvision", "vit-pytorch", "jax")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "pytorch_model.pth")
HINT_KEYS = ("heads", "pool", "norm_eps", "architecture", "source_image_size")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors, .npz or a PyTorch file, without running code."""
    name = path.name.lower()
    try:
        if name.endswith(".safetensors"):
            return load_file(str(path))
        if name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to load {path}: it holds Python objects, which could run code "
                         f"when unpickled ({str(e).splitlines()[0][:200]}). Convert it to safetensors "
                         "where you trust it, or re-save only its state_dict") from None
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise ValueError(f"refusing to load {path}: it holds object arrays, which need pickle") from None
        raise ValueError(f"cannot read {path}: {e}") from None
    except (SafetensorError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        detail = str(e).splitlines()[0][:200]
        raise ValueError(f"cannot read {path}: truncated or not a weights file ({detail})") from None
    for key in ("state_dict", "model", "module", "model_state"):  # training checkpoints wrap it
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return data


def detect(state: dict[str, torch.Tensor]) -> str:
    if hf.is_hf(state):
        return "hf"
    if torchvision.is_torchvision(state):
        return "torchvision"
    if jax.is_jax(state):
        return "jax"
    if any(k.removeprefix("module.").startswith("to_patch_embedding.") for k in state):
        return "vit-pytorch"
    if any(k.removeprefix("module.") in ("blocks.0.attn.qkv.weight", "embeds.proj.weight") for k in state):
        return "timm"
    raise ValueError(f"unrecognised weights (first keys: {list(state)[:5]}); pass format= one of {FORMATS[1:]}")


def _files_in(directory: Path) -> tuple[Path, dict[str, Any] | None]:
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else None
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name, config
    candidates = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".npz", ".pth", ".bin", ".pt"))
    if len(candidates) == 1:
        return candidates[0], config
    raise ValueError(f"{directory} holds no single weights file ({', '.join(WEIGHT_FILES)}, ...)")


def load(path: str | Path, format: str = "auto", normalize: Any = None, revision: str | None = None,
         **overrides: Any) -> ViT:
    """A vitkit `ViT` from any ViT checkpoint on disk (or `hf-hub:ORG/NAME`: the Hugging Face Hub,
    or with HF_HUB_OFFLINE=1 its local cache only; or `NAME:TAG`, a preset's published weights,
    e.g. `vit_b16:augreg2_in21k_ft_in1k`: see `vitkit models`).

    Overrides change the target: `image_size=384` resamples the position embedding,
    `num_classes=10` gives a fresh head. `heads=`, `pool=`, `norm_eps=` and `source_image_size=`
    tell what a format's weights do not record. `model.normalization` is the input normalization
    the weights expect, as their source records it (else its known default, logged);
    `normalize=` ("imagenet", "half", "M,S", a dict or a Normalization) replaces it. `revision`:
    the Hub version of `hf-hub:`/`NAME:TAG` weights (branch, tag or commit); `model.revision` is
    the commit they came from (None for local files), for a run to record.
    The model comes in eval mode, ready to predict (a run's weights may carry patch dropout or
    stochastic depth, which act in training mode only); `.train()` before training it further.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    path = hub.resolve(path, revision)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    model = _read(path, format, normalize, overrides)
    model.revision = hub.commit_of(path)
    return model


def _read(path: Path, format: str, normalize: Any, overrides: dict[str, Any]) -> ViT:
    """The weights at a local `path`, converted from their format, with their normalization."""
    if path.is_dir() and native.is_native(path) and format in ("auto", "vitkit"):
        model = build.load_pretrained(path, **overrides)
        return _normalized(model, normalize, "vitkit", None, path).eval()
    hints = {k: overrides.pop(k) for k in HINT_KEYS if k in overrides}
    config_json = None
    if path.is_dir():
        path, config_json = _files_in(path)
    elif path.with_name("config.json").is_file():
        config_json = json.loads(path.with_name("config.json").read_text())
    # the wrappers of DDP and of big_vision's parameter tree are no part of any weight's name
    state = Source((k.removeprefix("module.").removeprefix("params/"), v) for k, v in read_tensors(path).items())
    kind = detect(state) if format == "auto" else format
    if "source_image_size" in hints:
        hints["image_size"] = hints.pop("source_image_size")
    try:
        model = _convert(kind, state, config_json, hints, overrides, path)
    except KeyError as e:  # a format named with --from / format= that the file is not in
        raise ValueError(f"{path} is not in the {kind} format: it has no {e} weight (first keys: "
                         f"{list(state)[:4]}); try format='auto'") from None
    return _normalized(model, normalize, kind, config_json, path).eval()


def _normalized(model: ViT, normalize: Any, kind: str, config_json: dict[str, Any] | None, path: Path) -> ViT:
    """Set `model.normalization`: the caller's, else what the source records, else the source's
    known default, said in one INFO line."""
    if normalize is not None:
        model.normalization = Normalization.parse(normalize)
        return model
    if kind == "vitkit":
        return model  # load_pretrained read the run's own
    if kind == "hf":
        found, why = hf.normalization(path.parent, config_json)
    elif kind == "timm":
        found, why = timm.normalization(config_json, model.config)
    else:
        found, why = {"torchvision": torchvision, "jax": jax, "vit-pytorch": vit_pytorch}[kind].NORMALIZATION
    if why:
        warnings.warn(f"{path}: {kind} weights do not record their input normalization; assuming "
                      f"{describe(found)}: {why}; set it with vitkit.load(..., normalize=...) or --normalize",
                      AssumedNormalization, stacklevel=4)
    model.normalization = found
    return model


def describe(normalization: Normalization) -> str:
    """`half (mean=std=0.5)`, `imagenet (mean 0.485,0.456,0.406, std 0.229,0.224,0.225)`, ..."""
    numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    if normalization == HALF:
        return "half (mean=std=0.5)"
    name = normalization.describe()
    values = f"mean {numbers(normalization.mean)}, std {numbers(normalization.std)}"
    return f"{name} ({values})" if name in ("imagenet", "none") else values


def _convert(kind: str, state: Source, config_json: dict[str, Any] | None,
             hints: dict[str, Any], overrides: dict[str, Any], path: Path) -> ViT:
    hints = {**hints, "target_image_size": overrides.get("image_size")}
    if kind == "hf":
        config, converted = hf.to_vitkit(state, config_json, hints)
    elif kind == "torchvision":
        config, converted = torchvision.to_vitkit(state, hints)
    elif kind == "jax":
        config, converted = jax.to_vitkit(state, hints)
    elif kind == "vit-pytorch":
        source = hints.get("image_size") or overrides.get("image_size")  # vit-pytorch does not record it
        rest = {k: v for k, v in overrides.items() if not (k == "image_size" and v == source)}
        return vit_pytorch.from_vit_pytorch(state, image_size=source, heads=hints.get("heads"),
                                            pool=hints.get("pool"), **rest)
    elif timm_naflex.is_naflex(state):  # timm's NaFlex ViTs: weights/timm_naflex.py
        config, converted = timm_naflex.to_vitkit(state, config_json, {**timm.hints_from_config(config_json), **hints})
    elif timm_sam.is_sam(state):  # timm's Segment Anything / ViTDet encoders: weights/timm_sam.py
        windows = {k: overrides[k] for k in ("window_size", "global_blocks") if k in overrides}
        hints = {**timm.hints_from_config(config_json), **timm_sam.window_hints(config_json), **windows, **hints}
        config, converted = timm_sam.to_vitkit(state, hints)
    elif timm_hybrid.is_hybrid(state):  # timm's ResNet hybrids (vit_*_r50_*): weights/timm_hybrid.py
        config, converted = timm_hybrid.to_vitkit(state, {**timm.hints_from_config(config_json), **hints})
    else:
        config, converted = timm.to_vitkit(state, {**timm.hints_from_config(config_json), **hints})
    check_consumed(state, str(path))
    try:
        return build.build_with_state(config, converted, **overrides)
    except RuntimeError as e:  # load_state_dict's shape report
        raise ValueError(f"{path}: {str(e).splitlines()[-1].strip()}") from None


def save(model: ViT, path: str | Path, format: str = "vitkit", class_names: list[str] | None = None) -> Path:
    """Write `model` so that its own library loads it unchanged: a directory for "vitkit" and
    "hf" (config.json + model.safetensors), a timm state dict file (.safetensors or .pth) plus a
    timm-style config.json beside it for "timm"."""
    path = Path(path)
    if format == "vitkit":
        return native.save_pretrained(model, path, {"classes": class_names} if class_names else None)
    if format == "hf":
        state, config = hf.from_vitkit(model, class_names)
        path.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        atomic.write_text(path / "config.json", json.dumps(config, indent=2))
        atomic.write_text(path / hf.PREPROCESSOR, json.dumps(hf.preprocessor_config(model), indent=2))
        return path
    if format == "timm":
        hybrid = model.config.patch_embed == "resnet"  # timm's ResNet hybrids: weights/timm_hybrid.py
        state, kwargs = (timm_hybrid if hybrid else timm).from_vitkit(model)
        if path.suffix == "":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "model.safetensors"
        with atomic.atomic_path(path) as tmp:
            if path.suffix == ".safetensors":
                save_file(state, str(tmp), metadata={"format": "pt"})
            else:
                torch.save(state, tmp)
        c, n = model.config, model.normalization or HALF
        architecture = "deit_custom_distilled" if c.distilled else "vit_custom"  # VisionTransformerDistilled
        architecture = timm_hybrid.architecture(c) if hybrid else architecture
        channels = lambda values: list(values) * (c.in_channels if len(values) == 1 else 1)  # noqa: E731
        timm_config = {"architecture": architecture, "num_classes": c.num_classes, "model_args": kwargs,
                       "pretrained_cfg": {"input_size": [c.in_channels, *c.image_hw],
                                          "mean": channels(n.mean), "std": channels(n.std)}}
        atomic.write_text(path.with_name("config.json"), json.dumps(timm_config, indent=2))
        return path
    raise ValueError(f"save format={format!r}: use vitkit, hf or timm")


def create_model(name: str, pretrained: str | None = None, revision: str | None = None, **overrides: Any) -> ViT:
    """Build a named model: create_model("vit_b16", num_classes=10, image_size=384).

    `pretrained="augreg2_in21k_ft_in1k"` (a tag of `weights.hub.PRETRAINED`) loads those weights
    from the Hugging Face Hub, cached after the first download (HF_HUB_OFFLINE=1 reads only the
    cache) at `revision` (default: main); overrides then adapt them, e.g. num_classes=10 gives a
    fresh head.
    """
    if pretrained is None:
        return ViT(get_config(name, **overrides))
    preset = get_config(name)
    model = load(f"hf-hub:{hub.pretrained_repo(name, pretrained)}", revision=revision, **overrides)
    wrong = [f for f in hub.ARCHITECTURE if getattr(model.config, f) != getattr(preset.replace(**overrides), f)]
    if wrong:
        raise ValueError(f"the weights {pretrained!r} of {name} differ from the preset in {wrong}")
    return model
