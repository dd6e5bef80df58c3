"""Planning is a pure function: a run's every decision from the data and the flags, tested
without running anything, and nothing it is given changed."""

import copy

import pytest
import torch

from vitkit.data.datasets import ArrayImages
from vitkit.data.spec import DataSplits
from vitkit.model.config import ViTConfig
from vitkit.model.normalization import HALF, IMAGENET
from vitkit.model.presets import create_model
from vitkit.train.plan import TrainingError, plan
from vitkit.train.recipe import SMALL_IMAGES, TINY_IMAGES, Recipe


def images(count: int, side: int, channels: int = 3, classes: int = 4, seed: int = 0) -> ArrayImages:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, channels, side, side), dtype=torch.uint8, generator=g)
    return ArrayImages(pixels, torch.arange(count) % classes)


def cifar_like(count: int = 400, side: int = 32, test: bool = True) -> DataSplits:
    return DataSplits("tiny-cifar", [str(c) for c in range(4)], 3, (side, side), images(count, side), None,
                      images(100, side, seed=1) if test else None)


def test_small_images_get_the_small_image_recipe_and_model():
    splits = cifar_like()
    before = copy.deepcopy(splits)
    recipe, given = Recipe(lr=2e-3), {"lr"}
    planned = plan("tiny-cifar", splits, recipe, given)
    model_fields, recipe_fields = SMALL_IMAGES
    assert planned.recipe.lr == 2e-3  # given: kept
    assert planned.recipe.patch_dropout == recipe_fields["patch_dropout"] and planned.recipe.epochs == 30
    assert {k: getattr(planned.config, k) for k in model_fields} == model_fields
    assert planned.config.image_hw == (32, 32) and planned.config.num_classes == 4
    assert planned.config.patch_dropout == recipe_fields["patch_dropout"]
    assert planned.normalization == HALF
    assert len(planned.splits.train) + len(planned.splits.val) == 400 and len(planned.splits.val) == 40
    assert planned.steps_per_epoch == 360 // 128 and planned.steps == 30 * planned.steps_per_epoch
    # nothing it was given has changed
    assert recipe == Recipe(lr=2e-3) and given == {"lr"} and splits.val is None
    assert torch.equal(splits.train.images, before.train.images)


def test_tiny_images_are_upsampled_for_their_patches_and_never_flipped_for_digits():
    digits = DataSplits("digits", [str(c) for c in range(4)], 1, (8, 8), images(200, 8, channels=1), None)
    planned = plan("digits", digits, Recipe(), set())
    assert planned.config.image_hw == (TINY_IMAGES[1]["image_size"],) * 2 and planned.recipe.flip is False
    assert planned.splits.train.images.shape[-2:] == (16, 16)  # resized once, in the plan's copy
    assert digits.train.images.shape[-2:] == (8, 8)


def test_the_batch_is_clamped_to_the_data_and_must_divide_among_processes():
    small = cifar_like(40, test=False)
    planned = plan("tiny-cifar", small, Recipe(batch_size=128), {"batch_size"})
    assert planned.recipe.batch_size == 36 and planned.steps_per_epoch == 1
    with pytest.raises(ValueError, match="--batch-size 128 is the global batch and must divide among 3 processes"):
        plan("tiny-cifar", cifar_like(), Recipe(batch_size=128), {"batch_size"}, processes=3)


def test_a_time_budget_leaves_the_epochs_to_the_run():
    planned = plan("tiny-cifar", cifar_like(), Recipe(time_budget=60), {"time_budget"})
    assert planned.recipe.epochs is None and planned.steps is None


def test_init_weights_get_the_fine_tuning_recipe_and_keep_their_normalization():
    init = create_model("vit_ti4_32", depth=1, num_classes=4)
    init.normalization = IMAGENET
    planned = plan("tiny-cifar", cifar_like(), Recipe(init="weights"), {"init"}, init=init)
    assert planned.recipe.optimizer == "sgd" and planned.recipe.patch_dropout == 0.0
    assert planned.config == init.config and planned.normalization == IMAGENET


def test_a_resumed_run_keeps_its_own_recipe_model_and_normalization():
    first = plan("tiny-cifar", cifar_like(), Recipe(epochs=3), {"epochs"})
    saved = {"recipe": first.recipe.to_dict(), "model_config": first.config.to_dict(),
             "normalize": IMAGENET.to_dict(), "run": "runs/x"}
    resumed = plan("tiny-cifar", cifar_like(), Recipe(workers=1), {"workers"}, resume=saved)
    assert resumed.recipe == Recipe(**{**first.recipe.to_dict(), "workers": 1})
    assert resumed.config == first.config and resumed.normalization == IMAGENET
    with pytest.raises(ValueError, match="--lr cannot change when resuming"):
        plan("tiny-cifar", cifar_like(), Recipe(lr=0.1), {"lr"}, resume=saved)


def test_a_teacher_gives_a_new_student_a_distillation_token():
    planned = plan("tiny-cifar", cifar_like(), Recipe(teacher="t"), {"teacher"})
    assert isinstance(planned.config, ViTConfig) and planned.config.distilled and planned.config.pool == "cls"


def test_strict_stops_on_files_found_unreadable_while_scanning():
    splits = DataSplits("f", ["a", "b"], 3, (32, 32), images(40, 32, classes=2), None, skipped=(("x.png", "bad"),))
    with pytest.raises(TrainingError, match=r"cannot read x\.png: bad"):
        plan("f", splits, Recipe(), set(), strict=True)
    assert plan("f", splits, Recipe(), set()).splits.skipped == (("x.png", "bad"),)
