"""One typed description of a Vision Transformer; everything else is built from it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Size = int | tuple[int, int]

PATCH_EMBEDS = ("conv", "linear-ln", "conv-stem", "resnet")
POOLS = ("cls", "mean", "mean-all", "map")
POS_EMBEDS = ("learned", "sincos2d", "none")
ACTIVATIONS = ("gelu", "gelu-tanh")

# Far beyond any ViT ever trained; they stop a hostile or mistyped config.json from asking for
# terabytes before a single tensor is allocated.
LIMITS = {"dim": 16384, "depth": 512, "heads": 1024, "mlp_dim": 131072, "num_classes": 1_000_000,
          "image": 16384, "in_channels": 512, "tokens": 1_000_000, "reg_tokens": 1024,
          "stem_channels": 16384, "stem_depth": 8, "backbone_stages": 4, "backbone_blocks": 64}
# The most parameters a config may describe, checked before anything is allocated: room for
# ViT-g/14 (1.0 billion) and the largest ViT timm builds (DINOv3's ViT-7B, 6.7 billion).
MAX_PARAMETERS = 8_000_000_000


def resnet_stride(layers: tuple[int, ...]) -> int:
    """The hybrid's ResNet: its stem has stride 4, then each stage after the first halves the map."""
    return 4 * 2 ** max(len(layers) - 1, 0)


def pair(value: Size) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class ViTConfig:
    """The architecture. Defaults are ViT-B/16 at 224 px with 1000 classes, as in the paper.

    `pool`: "cls" reads the class token; "mean" averages the patch tokens (timm, big_vision);
    "mean-all" averages every token including the class token (the write-up's / vit-pytorch's code);
    "map" is attention pooling: a learned probe attends to the patch tokens (big_vision's MAPHead,
    SigLIP).
    `fc_norm`: apply the final LayerNorm after pooling instead of to every token (timm with
    global average pooling, MAE).
    `representation_size`: the paper's pre-logits layer (Linear + tanh) before the head.
    `head_dim`: per-head width; default dim // heads. vit-pytorch allows heads * head_dim != dim.

    The paper's descendants, each off by default:
    `reg_tokens`: extra learned tokens after the class token that the head ignores ("Vision
    Transformers Need Registers"; DINOv2-reg).
    `distilled`: DeiT's distillation token after the class token, read by a second head.
    `no_embed_class`: the position table has rows for the patches only; prefix tokens get none
    (timm's name; DINOv2, DeiT III, current big_vision).
    `init_values`: layer scale, a learned per-channel scale on each residual branch, starting
    at this value (CaiT, DINOv2).
    `qk_norm`: LayerNorm on each head's queries and keys.
    `patch_dropout`: in training, each image keeps a random (1 - rate) of its patch tokens, so
    every block costs that much less ("PatchDropout", Liu et al. 2022; timm's `patch_drop_rate`).
    `pre_norm`: LayerNorm after the embeddings, before the blocks (CLIP); like CLIP, the patch
    projection then has no bias.

    A CNN in front of the patch projection (model/stems.py), with the same token grid (image size
    over `patch_size`):
    `patch_embed="conv-stem"`: log2(patch_size) 3x3 stride-2 convolutions, each with a LayerNorm
    over channels and ReLU, then a 1x1 projection ("Early Convolutions Help Transformers See
    Better", Xiao et al. 2021). `stem_channels`: the first convolution's width, doubling at each
    next one; default dim / 2**(convolutions - 1), so that the last one is dim wide. `stem_depth`:
    convolutions at each resolution, the first of them strided (1: Xiao et al.'s stem; 2 adds a 3x3
    stride-1 convolution after each, more of a CNN's prior for small data sets).
    Block-wise encoding of large images (ViTDet; the Segment Anything image encoder; model/window.py):
    `window_size`: blocks attend within non-overlapping windows of this many tokens a side (0: every
    block global); `global_blocks`: the indices of the blocks that still attend globally, between
    the windowed ones (SAM ViT-B: (2, 5, 8, 11)). `rel_pos`: SAM's decomposed relative position
    terms in every block (a row and a column table; no prefix tokens). `neck_dim`: SAM's
    convolutional neck after the blocks, to this many channels (256); it replaces the final norm.
    `pos_embed="none"`: no absolute positions (SAM at 224 px relies on `rel_pos` alone).

    `patch_embed="resnet"`: the paper's hybrid, a ResNet (timm's `vit_*_r50_*`) whose feature map is
    projected by a (patch_size / its stride)-sized convolution. `backbone_layers`: bottlenecks per
    stage, (3, 4, 9) for the paper's R50 at stride 16, (2, 2, 2, 2) for R26 at stride 32, () for
    the stem alone (stride 4).
    """

    image_size: Size = 224
    patch_size: Size = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    head_dim: int | None = None
    patch_embed: Literal["conv", "linear-ln", "conv-stem", "resnet"] = "conv"
    stem_channels: int | None = None
    stem_depth: int = 1
    backbone_layers: tuple[int, ...] = ()
    class_token: bool = True
    pool: Literal["cls", "mean", "mean-all", "map"] = "cls"
    reg_tokens: int = 0
    distilled: bool = False
    no_embed_class: bool = False
    init_values: float | None = None
    qk_norm: bool = False
    pre_norm: bool = False
    pos_embed: Literal["learned", "sincos2d", "none"] = "learned"
    fc_norm: bool = False
    representation_size: int | None = None
    qkv_bias: bool = True
    act: Literal["gelu", "gelu-tanh"] = "gelu"
    norm_eps: float = 1e-6
    dropout: float = 0.0
    attn_dropout: float = 0.0
    emb_dropout: float = 0.0
    patch_dropout: float = 0.0
    drop_path: float = 0.0
    dynamic_size: bool = False
    window_size: int = 0
    global_blocks: tuple[int, ...] = ()
    rel_pos: bool = False
    neck_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "backbone_layers", "global_blocks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    # -- derived sizes ------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return pair(self.patch_size)

    @property
    def grid(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return h // ph, w // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def stem_stride(self) -> int:
        """Stride of the CNN before the patch projection (1: none), which covers patch / stride."""
        if self.patch_embed == "conv-stem":
            return self.patch_hw[0]
        if self.patch_embed == "resnet":
            return resnet_stride(self.backbone_layers)
        return 1

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers (in that order)."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def pos_prefix_rows(self) -> int:
        """Rows of the position table for the prefix tokens (none with `no_embed_class`)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @property
    def head_tokens(self) -> int | None:
        """How many leading tokens the head reads: 1 (the class token) or 2 (DeiT's class and
        distillation tokens); None when it pools (mean, mean-all, map)."""
        if self.distilled:
            return 2
        return 1 if self.pool == "cls" else None

    @property
    def inner_dim(self) -> int:
        """Width of q, k and v together: heads * head_dim."""
        return self.heads * (self.head_dim or self.dim // self.heads)

    @property
    def feature_dim(self) -> int:
        """Width of what the head sees (the pre-logits width if there is one, or the neck's)."""
        return self.representation_size or self.neck_dim or self.dim

    @property
    def approx_parameters(self) -> int:
        """The parameter count from the config alone, within a few per cent (a convolutional
        stem's and the norms' small terms aside): to refuse a huge model before allocating it."""
        (ph, pw), d, inner = self.patch_hw, self.dim, self.inner_dim
        embed = self.in_channels * ph * pw * d + (self.num_patches + self.num_prefix_tokens) * d
        block = d * 3 * inner + inner * d + 2 * d * self.mlp_dim + 3 * inner + self.mlp_dim + 6 * d
        head = self.feature_dim * self.num_classes * (2 if self.distilled else 1)
        pre_logits = d * self.representation_size if self.representation_size else 0
        map_head = 4 * d * d + 2 * d * self.mlp_dim if self.pool == "map" else 0  # attention pooling
        return embed + self.depth * block + head + pre_logits + map_head

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Build from untrusted JSON-like data: unknown keys and wrong types are errors."""
        check_fields(cls, data, "ViT")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ViTConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data.get("vit", data) if isinstance(data, dict) else data)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        _choice("patch_embed", self.patch_embed, PATCH_EMBEDS)
        _choice("pool", self.pool, POOLS)
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        _choice("act", self.act, ACTIVATIONS)
        for name in ("in_channels", "dim", "depth", "heads", "mlp_dim"):
            bounded(name, getattr(self, name), 1, LIMITS.get(name))
        self._validate_descendants()
        bounded("num_classes", self.num_classes, 0, LIMITS["num_classes"])
        for name in ("head_dim", "representation_size"):
            if getattr(self, name) is not None:
                bounded(name, getattr(self, name), 1, LIMITS["dim"])
        self._validate_grid()
        self._validate_stem()
        self._validate_windows()
        if self.approx_parameters > MAX_PARAMETERS:
            raise ValueError(f"this config describes a model of about {self.approx_parameters / 1e9:,.1f} billion "
                             f"parameters; vitkit builds at most {MAX_PARAMETERS / 1e9:g} billion (the largest "
                             "published ViTs have 1-7): check dim, depth and mlp_dim")
        if self.head_dim is None and self.dim % self.heads:
            divisors = [d for d in range(1, min(self.dim, 64) + 1) if self.dim % d == 0]
            raise ValueError(
                f"heads={self.heads} does not divide dim={self.dim}; choose heads among "
                f"{divisors[-6:]} or set head_dim explicitly")
        if self.pos_embed == "sincos2d" and self.dim % 4:
            raise ValueError(f"pos_embed='sincos2d' needs dim divisible by 4, got dim={self.dim}")
        if not self.class_token and self.pool == "cls":
            raise ValueError("pool='cls' needs a class token; set class_token=True or pool='mean'")
        if self.pool == "mean-all" and not self.class_token:
            raise ValueError("pool='mean-all' averages the class token too; without one use 'mean'")
        for name in ("dropout", "attn_dropout", "emb_dropout", "patch_dropout", "drop_path"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        if not isinstance(self.norm_eps, (int, float)) or not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps must be a small positive number, got {self.norm_eps!r}")

    def _validate_grid(self) -> None:
        """Image and patch sizes: whole patches, and not too many tokens."""
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) or (isinstance(value, tuple) and len(value) == 2)):
                raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
            for side in pair(value) if isinstance(value, tuple) else (value,):
                bounded(name, side, 1, LIMITS["image"])
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        if h % ph or w % pw:
            fix_h, fix_w = max(ph, round(h / ph) * ph), max(pw, round(w / pw) * pw)
            raise ValueError(
                f"image size {h}x{w} is not divisible by patch size {ph}x{pw}; "
                f"use an image size such as {fix_h}x{fix_w}, or a patch size that divides {h}x{w}")
        if self.num_patches + self.num_prefix_tokens > LIMITS["tokens"]:
            raise ValueError(f"{self.num_patches} patches is too many tokens; use a larger patch")

    def _validate_stem(self) -> None:
        """A CNN before the patch projection must end on the patch grid."""
        (ph, pw), stages = self.patch_hw, self.backbone_layers
        if self.stem_channels is not None:
            bounded("stem_channels", self.stem_channels, 1, LIMITS["stem_channels"])
            if self.patch_embed != "conv-stem":
                raise ValueError("stem_channels is the width of patch_embed='conv-stem'; set that or drop it")
        bounded("stem_depth", self.stem_depth, 1, LIMITS["stem_depth"])
        if self.stem_depth != 1 and self.patch_embed != "conv-stem":
            raise ValueError("stem_depth is the depth of patch_embed='conv-stem'; set that or drop it")
        if not isinstance(stages, tuple) or len(stages) > LIMITS["backbone_stages"]:
            raise ValueError(f"backbone_layers must be up to 4 stage depths such as (3, 4, 9), got {stages!r}")
        for depth in stages:
            bounded("backbone_layers", depth, 1, LIMITS["backbone_blocks"])
        if stages and self.patch_embed != "resnet":
            raise ValueError("backbone_layers are the stages of patch_embed='resnet'; set that or drop them")
        if self.patch_embed == "conv-stem" and (ph != pw or ph < 2 or ph & (ph - 1)):
            raise ValueError(f"patch_embed='conv-stem' halves the image log2(patch) times: patch_size must be "
                             f"a square power of two such as 4, 8 or 16, got {ph}x{pw}")
        stride = self.stem_stride
        if self.patch_embed == "resnet" and (ph % stride or pw % stride):
            raise ValueError(f"backbone_layers={stages} give a stride-{stride} feature map, which patch_size "
                             f"{ph}x{pw} must be a multiple of (the projection covers patch / {stride})")

    def _validate_descendants(self) -> None:
        """The fields of the paper's descendants (registers, DeiT, layer scale, MAP)."""
        bounded("reg_tokens", self.reg_tokens, 0, LIMITS["reg_tokens"])
        for name in ("distilled", "no_embed_class", "qk_norm", "pre_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.distilled and (not self.class_token or self.pool != "cls" or self.fc_norm
                               or self.representation_size):
            raise ValueError("distilled=True (DeiT) reads the class and distillation tokens: it needs "
                             "class_token=True, pool='cls', no fc_norm and no representation_size")
        if self.init_values is not None and (isinstance(self.init_values, bool)
                                             or not isinstance(self.init_values, (int, float))
                                             or not 0 < self.init_values <= 1e3):
            raise ValueError(f"init_values (layer scale) must be a positive number or None, "
                             f"got {self.init_values!r}")
        if self.pool == "map" and self.dim % self.heads:
            raise ValueError(f"pool='map' splits dim={self.dim} over heads={self.heads}; "
                             "choose heads that divide dim")


    def _validate_windows(self) -> None:
        """Windowed attention, relative positions and the neck (SAM, ViTDet)."""
        bounded("window_size", self.window_size, 0, LIMITS["image"])
        blocks = self.global_blocks
        if not isinstance(blocks, tuple) or any(isinstance(i, bool) or not isinstance(i, int) for i in blocks):
            raise ValueError(f"global_blocks must be block indices such as (2, 5, 8, 11), got {blocks!r}")
        if blocks and not self.window_size:
            raise ValueError("global_blocks are the blocks that attend globally between windowed ones; "
                             "set window_size too, or drop them")
        bad = [i for i in blocks if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_blocks {bad} are not blocks of a depth-{self.depth} model (0..{self.depth - 1})")
        if not isinstance(self.rel_pos, bool):
            raise ValueError(f"rel_pos must be true or false, got {self.rel_pos!r}")
        if self.neck_dim is not None:
            bounded("neck_dim", self.neck_dim, 1, LIMITS["dim"])
        if (self.rel_pos or self.neck_dim) and (self.num_prefix_tokens or self.pool != "mean" or self.fc_norm):
            raise ValueError("rel_pos and neck_dim are SAM's, whose encoder has patch tokens only: set "
                             "class_token=False, reg_tokens=0, pool='mean' and fc_norm=False")
        if (self.window_size or self.rel_pos) and self.patch_dropout:
            raise ValueError("windowed attention and relative positions need the whole patch grid: "
                             "set patch_dropout=0")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not one of {list(options)}")


def bounded(name: str, value: Any, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range [{low}, {high}]")


def check_fields(cls: type, data: Any, kind: str) -> None:
    """Untrusted JSON-like data for a config dataclass: an object, with known keys only, each value
    of its field's type."""
    if not isinstance(data, dict):
        raise ValueError(f"a {kind} config must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}; known keys: {sorted(fields)}")
    for key, value in data.items():
        check_type(key, value, fields[key].type)


def check_type(key: str, value: Any, annotation: str) -> None:
    """Types of JSON values against the dataclass annotations (which are strings here)."""
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "None": lambda v: v is None,
    }
    if annotation.startswith("tuple"):  # its items are checked by the validation
        good = isinstance(value, (list, tuple))
    elif annotation == "Size":
        good = ok["int"](value) or (isinstance(value, (list, tuple)) and len(value) == 2
                                    and all(ok["int"](v) for v in value))
    elif annotation.startswith("Literal"):
        good = isinstance(value, str)
    else:
        good = any(ok[t.strip()](value) for t in annotation.split("|") if t.strip() in ok)
    if not good:
        raise ValueError(f"config key {key!r} must be {annotation}, got {value!r}")
