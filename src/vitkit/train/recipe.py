"""Every training knob in one dataclass, and the defaults chosen from the data.

A ViT has no convolutional prior, so on small data it needs a recipe matched to the data set's
size and image size: small patches for small images, a narrow model for few images, and
augmentation strong enough to stand in for the missing prior. `auto_recipe` picks those.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from vitkit.model.cnn import PREFIX as CNN_PREFIX
from vitkit.model.cnn import CNNConfig
from vitkit.model.config import ViTConfig
from vitkit.model.presets import get_config

# What --model-option may set: a ViTConfig field, or what --init weights may not record.
MODEL_OPTIONS = {f.name for f in dataclasses.fields(ViTConfig)} | {"source_image_size"}
# From this many training images an epoch is long enough that torch.compile's minute or so of
# compilation pays for itself (1126 vs 888 img/s on CIFAR-10's default model, AMX CPU).
COMPILE_FROM = 10_000


def knob(default: Any, doc: str) -> Any:
    """A recipe field and its documentation: `vitkit train --help` and the docs read it from here."""
    return dataclasses.field(default=default, metadata={"help": doc})


@dataclass
class Recipe:
    """Every training knob; each becomes a `vitkit train` flag of the same name (`--batch-size`).
    Fields left at their defaults that `auto_recipe` or `fine_tune_recipe` set are chosen for the
    data: only the fields a user names (`given`) are kept as they are."""

    model: str | None = knob(None, "preset name (see `vitkit models`); default: chosen for the data")
    epochs: int | None = knob(None, "number of epochs; default: chosen for the data")
    time_budget: float | None = knob(None, "wall-clock seconds for the whole run; plans the steps to fit (the "
                                           "last epoch may be short)")
    batch_size: int = knob(128, "global batch size")
    optimizer: Literal["adamw", "sgd"] = knob("adamw", "adamw, or sgd (momentum 0.9)")
    lr: float = knob(1e-3, "peak learning rate, for the global batch")
    min_lr: float = knob(1e-5, "learning rate at the end of the cosine decay")
    weight_decay: float = knob(0.05, "decoupled weight decay (never on norms, biases, position embedding, "
                                     "learned tokens)")
    warmup_epochs: float = knob(2.0, "linear warm-up length in epochs (at most half of the run)")
    label_smoothing: float = knob(0.1, "label smoothing of the cross-entropy targets")
    clip_grad: float | None = knob(1.0, "clip the gradient norm to this value (0 = off)")
    accum_steps: int = knob(1, "split each batch into this many pieces (gradient accumulation)")
    crop: Literal["pad", "random-resized", "none"] = knob("pad", "training crop: pad (random crop with padding), "
                                                                 "random-resized, none")
    padding: int = knob(4, "padding of the random crop, in pixels")
    min_scale: float = knob(0.35, "smallest area fraction of RandomResizedCrop")
    flip: bool = knob(True, "random horizontal flips (off by default for digits)")
    rotate: float = knob(0.0, "random rotation up to this many degrees (RandomAffine)")
    translate: float = knob(0.0, "random translation up to this fraction of the image (RandomAffine)")
    scale_jitter: float = knob(0.0, "random scaling by 1 +- this fraction (RandomAffine)")
    augment: Literal["none", "randaugment", "trivialaugment"] = knob("none", "RandAugment, TrivialAugment or none")
    magnitude: int = knob(9, "RandAugment magnitude")
    mixup: float = knob(0.0, "MixUp alpha (0 = off)")
    cutmix: float = knob(0.0, "CutMix alpha (0 = off)")
    erasing: float = knob(0.0, "random-erasing probability")
    drop_path: float = knob(0.0, "stochastic depth rate of the last block")
    dropout: float = knob(0.0, "dropout rate")
    patch_dropout: float = knob(0.0, "fraction of patch tokens each training image drops: every block costs that "
                                     "much less")
    ema: float | None = knob(None, "keep an exponential moving average of the weights with this decay, e.g. 0.999")
    precision: Literal["auto", "bf16", "fp32"] = knob("auto", "auto (bf16 where the CPU/GPU supports it), bf16 or "
                                                               "fp32")
    compile: bool = knob(False, f"torch.compile the training step (replayed as CUDA graphs on one GPU); default: "
                                f"on from {COMPILE_FROM:,} training images")
    seed: int = knob(0, "random seed: same seed, same data, same machine = same metrics")
    workers: int | None = knob(None, "data-loading worker processes for per-image work: decoding, RandAugment, ... "
                                     "(default: up to 2; in-memory images without such work are gathered a batch at "
                                     "a time instead, and only evaluation uses the workers)")
    val_split: float = knob(0.1, "fraction of the training images held out when the data has no validation split")
    image_size: int | None = knob(None, "train at this image size (pixels)")
    init: str | None = knob(None, "fine-tune from these weights (any format vitkit.load reads, or hf-hub:ORG/NAME); "
                                  "the model keeps their architecture and gets a new head")
    revision: str | None = knob(None, "for --init hf-hub:ORG/NAME weights: the Hub's branch, tag or commit (default: "
                                      "main); the run records the commit the weights came from (init_commit)")
    normalize: str | None = knob(None, "input normalization: imagenet, half, none, MEAN,STD or M1,M2,M3,S1,S2,S3 "
                                       "(default: the weights' own with --init, else half)")
    layer_decay: float | None = knob(None, "layer-wise learning-rate decay for fine-tuning, e.g. 0.75")
    freeze_backbone: bool = knob(False, "train only the head (linear probe)")
    teacher: str | None = knob(None, "distil from this teacher (DeiT): a run or weights vitkit.load reads, or "
                                     "torchvision:ARCH:STATE_DICT; the student gets a distillation token and head")
    teacher_revision: str | None = knob(None, "for --teacher hf-hub:ORG/NAME: the Hub's branch, tag or commit "
                                              "(default: main); the run records the commit (teacher_commit) and a "
                                              "resumed run loads that commit")
    distill: Literal["hard", "soft"] = knob("hard", "hard (the teacher's top class, DeiT's best) or soft (its "
                                                    "distribution, tau 3, weight 0.1)")
    grad_checkpointing: bool = knob(False, "recompute each block's activations in backward instead of keeping them "
                                           "(less memory for ViT-L/H, ~one more forward of compute)")
    skip_nonfinite: bool = knob(False, "drop steps whose loss is NaN/inf instead of stopping")
    tensorboard: bool = knob(True, "write TensorBoard event files in the run folder (with the tensorboard extra "
                                   "installed): the loss and learning rate per step, the epoch's metrics")
    fsdp: bool = knob(False, "with several processes, shard parameters, gradients and optimizer state (FSDP2) "
                             "instead of replicating them (DDP): for models that do not fit one device")
    flexi_patch: str | None = knob(None, "FlexiViT: each step trains at a patch size drawn from these, e.g. 2,4,8 "
                                         "(sizes that divide the image); the model keeps one kernel, resized per step")
    max_tokens: int | None = knob(None, "NaFlex: each image at its own aspect ratio, resized so that its grid of "
                                        "patches fits this many tokens (no crop); each batch trains at a budget drawn "
                                        "between --min-tokens and this")
    min_tokens: int | None = knob(None, "the smallest budget a training batch draws with --max-tokens "
                                        "(default: a quarter of it)")
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "ViTConfig fields for a new model, or for --init what the weights do not record"})  # --model-option

    def __post_init__(self) -> None:
        """Refuse values that cannot train, naming the flag and the accepted range."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "accum_steps": self.accum_steps,
                    "time_budget": self.time_budget, "lr": self.lr, "image_size": self.image_size,
                    "ema": self.ema, "layer_decay": self.layer_decay, "max_tokens": self.max_tokens,
                    "min_tokens": self.min_tokens}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        fractions = {"val_split": self.val_split, "erasing": self.erasing, "drop_path": self.drop_path,
                     "dropout": self.dropout, "patch_dropout": self.patch_dropout,
                     "label_smoothing": self.label_smoothing, "translate": self.translate,
                     "scale_jitter": self.scale_jitter}
        for name, value in fractions.items():
            if not 0 <= value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.min_scale <= 0 or self.min_scale > 1:
            raise ValueError(f"--min-scale must be in (0, 1], got {self.min_scale}")
        if self.ema is not None and self.ema >= 1:
            raise ValueError(f"--ema is a decay in (0, 1), e.g. 0.999; got {self.ema}")
        for name in ("min_lr", "weight_decay", "warmup_epochs", "padding", "rotate", "mixup", "cutmix", "magnitude"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"--clip-grad must not be negative (0 turns it off), got {self.clip_grad}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must not be negative, got {self.workers}")
        self.flexi_sizes  # noqa: B018 (parsed here to refuse a bad list before anything runs)
        unknown = sorted(set(self.model_overrides) - MODEL_OPTIONS)
        if unknown:
            raise ValueError(f"--model-option {unknown[0]} is not a model field; choose among {sorted(MODEL_OPTIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def flexi_sizes(self) -> tuple[int, ...]:
        """--flexi-patch as patch sizes (empty: off)."""
        if not self.flexi_patch:
            return ()
        try:
            sizes = tuple(int(s) for s in str(self.flexi_patch).split(",") if s.strip())
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise ValueError(f"--flexi-patch {self.flexi_patch!r}: give patch sizes separated by commas, e.g. 2,4,8")
        return sizes


# Per data-set regime: (model fields, recipe fields), measured with benchmarks/accuracy.py.
# The write-up's LayerNorm patch embedding is not used by default: on 2x2 or 4x4 patches its first
# LayerNorm erases each patch's brightness (on digits: 81% instead of 96%, same budget).
TINY_IMAGES = (  # 8x8 digits, upsampled to 16 px: 4x4 patches -> 16 tokens; small random affine
    # warps stand in for the missing data (99.4% vs 96-97% without them, same budget)
    dict(patch_size=4, dim=64, depth=4, heads=4, mlp_dim=128, pool="mean", class_token=False),
    dict(image_size=16, epochs=100, batch_size=128, lr=3e-3, warmup_epochs=3, crop="none", flip=False,
         rotate=10.0, translate=0.1, scale_jitter=0.1),
)
SMALL_IMAGES = (  # 28-32 px: 4x4 patches -> 49-64 tokens; narrow, so many epochs fit a CPU budget. A
    # four-convolution stem and mean pooling without a class token learn more in the same time than
    # plain patches; each training image drops 70% of its patch tokens (PatchDropout), a faster step
    # at the same accuracy. The docs' design notes give the measurements.
    dict(patch_size=4, dim=128, depth=6, heads=4, mlp_dim=256, patch_embed="conv-stem", stem_depth=2,
         pool="mean", class_token=False),
    dict(epochs=30, batch_size=128, lr=1.5e-3, warmup_epochs=1, padding=4, patch_dropout=0.7),
)
LARGE_IMAGES = (  # photos: 224 px, 16x16 patches
    dict(patch_size=16, image_size=224),
    dict(epochs=30, batch_size=64, lr=5e-4, warmup_epochs=3, crop="random-resized",
         augment="randaugment", mixup=0.2, cutmix=1.0, drop_path=0.1),
)


# Fine-tuning (--init): the paper's recipe (Appendix B.1.1): SGD with momentum 0.9, no weight
# decay, a short warm-up then cosine decay, the gradient clipped at norm 1, no mixing or stochastic
# depth; crops and flips as for the data regime. About FINE_TUNE_STEPS steps unless --epochs says.
FINE_TUNE = dict(optimizer="sgd", lr=0.01, weight_decay=0.0, warmup_epochs=1.0, clip_grad=1.0,
                 label_smoothing=0.0, augment="none", mixup=0.0, cutmix=0.0, drop_path=0.0, patch_dropout=0.0)
FINE_TUNE_STEPS = 500


def regularisers(recipe: Recipe) -> dict[str, float]:
    """The recipe's fields that live in the model's blocks (a --model-option of the same name wins)."""
    fields = {"drop_path": recipe.drop_path, "dropout": recipe.dropout, "patch_dropout": recipe.patch_dropout}
    return {name: recipe.model_overrides.get(name, value) for name, value in fields.items()}


def regime(side: int) -> tuple[dict, dict]:
    """(model fields, recipe fields) for images of this side."""
    return TINY_IMAGES if side <= 12 else SMALL_IMAGES if side <= 64 else LARGE_IMAGES


def fill(recipe: Recipe, given: set[str], fields: dict[str, Any], flip_ok: bool) -> Recipe:
    """`recipe` with `fields` where the user did not set them (`given` names the fields they did)."""
    changes = {k: v for k, v in fields.items() if k not in given}
    if "flip" not in given and not flip_ok:
        changes["flip"] = False
    if recipe.time_budget and "epochs" not in given:
        changes["epochs"] = None  # the budget decides
    return dataclasses.replace(recipe, **changes)


def fine_tune_recipe(recipe: Recipe, given: set[str], image_side: int, num_train: int, flip_ok: bool) -> Recipe:
    """The recipe for --init: see FINE_TUNE."""
    fields = {k: v for k, v in {**regime(image_side)[1], **FINE_TUNE}.items() if k != "image_size"}  # the weights'
    batch = recipe.batch_size if "batch_size" in given else fields["batch_size"]
    fields["epochs"] = max(3, min(100, math.ceil(FINE_TUNE_STEPS * batch / max(num_train, 1))))
    return fill(recipe, given, fields, flip_ok)


def auto_recipe(recipe: Recipe, given: set[str], image_hw: tuple[int, int] | None, channels: int,
                num_classes: int, num_train: int, flip_ok: bool) -> tuple[Recipe, ViTConfig | CNNConfig]:
    """Fill what the user did not set (`given` names the fields they did) for this data set."""
    side = max(image_hw) if image_hw else 224
    if recipe.image_size:
        side = recipe.image_size
    model_fields, recipe_fields = regime(side)
    recipe = fill(recipe, given, {**recipe_fields, "compile": num_train >= COMPILE_FROM}, flip_ok)

    if recipe.model and recipe.model.startswith(CNN_PREFIX):  # a torchvision CNN, at the data's own size
        size = recipe.image_size or (image_hw if image_hw and side <= 64 else 224)
        return recipe, CNNConfig(recipe.model.removeprefix(CNN_PREFIX), num_classes, channels, size,
                                 small_images=side <= 64)
    if recipe.model:
        config = get_config(recipe.model)
    else:
        fields = dict(model_fields)
        if recipe.model_overrides.get("patch_embed", fields.get("patch_embed")) != "conv-stem":
            fields.pop("stem_depth", None)  # the default stem's depth, not for another patch_embed
        if side > 64:
            fields.update(get_config("vit_s16" if num_train > 20_000 else "vit_ti16").to_dict())
        config = ViTConfig(**{k: v for k, v in fields.items() if k != "image_size"})
    ph, pw = config.patch_hw
    if recipe.image_size:
        image_size = recipe.image_size
    elif image_hw and side <= 64:  # small images: train at their own size, a multiple of the patch
        image_size = (max(ph, round(image_hw[0] / ph) * ph), max(pw, round(image_hw[1] / pw) * pw))
    else:
        image_size = config.image_size if recipe.model else 224
    config = config.replace(**{"image_size": image_size, "in_channels": channels, "num_classes": num_classes,
                               **regularisers(recipe), **recipe.model_overrides})
    return recipe, config
