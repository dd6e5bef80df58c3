"""--flexi-patch (FlexiViT): each training step runs at a patch size drawn from the recipe's list
by the seed and the step, so a resumed run draws what an uninterrupted one drew; the model's one
stored kernel is resized on the fly (`ViT.set_patch_size`) and is back at its own size after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vitkit.data.loader import mix_seed


def step_patch_size(recipe: Any, epoch: int, step: int) -> int | None:
    """The patch size of this step, or None without --flexi-patch."""
    sizes = recipe.flexi_sizes
    return sizes[mix_seed(recipe.seed, epoch, step, 4) % len(sizes)] if sizes else None


@contextmanager
def at_step_patch_size(run: Any) -> Iterator[None]:
    """The run's model at its step's patch size for the duration (a `trainer.Run`)."""
    patch = step_patch_size(run.plan.recipe, run.progress.epoch, run.progress.step)
    if patch is None:
        yield
        return
    run.parts.model.set_patch_size(patch)
    try:
        yield
    finally:
        run.parts.model.set_patch_size(None)
