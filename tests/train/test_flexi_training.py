"""--flexi-patch (FlexiViT): each step trains at a patch size drawn from the seed and the step, so
a resumed run trains at the sizes an uninterrupted one does and ends with the same weights; the
run keeps one kernel at the model's own size, which `vitkit eval --patch-size` resizes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_plan import cifar_like
from vitkit.cli import main
from vitkit.train import trainer
from vitkit.train.plan import plan
from vitkit.train.recipe import Recipe

ARGS = ["--epochs", "1", "--batch-size", "128", "--workers", "0", "--precision", "fp32", "--flexi-patch", "2,4,8"]


@pytest.fixture
def sizes(monkeypatch):
    """The patch size each step ran at, by (epoch, step), seen by the patch embedding itself."""
    seen: dict[tuple[int, int], tuple[int, int] | None] = {}

    def watch(run: trainer.Run) -> None:
        embed = run.parts.model.patch_embed
        if not embed._forward_pre_hooks:
            embed.register_forward_pre_hook(record)
        where[0] = (run.progress.epoch, run.progress.step)

    def record(module, args) -> None:
        seen.setdefault(where[0], module.flexi)

    where = [None]
    monkeypatch.setattr(trainer, "STEP_HOOKS", [watch])
    return seen


def test_flexi_training_draws_per_step_resumes_the_same_and_keeps_one_kernel(tmp_path, sizes, capsys):
    assert main(["train", *ARGS, "--out", str(tmp_path / "whole")]) == 0
    whole = dict(sizes)
    assert {s for s in whole.values()} == {(2, 2), (4, 4), (8, 8)}  # digits at 16 px, the model's own patch 4
    sizes.clear()

    def stop(run: trainer.Run) -> None:
        if run.progress.step == 5:
            run.stop.requested = True

    trainer.STEP_HOOKS.append(stop)
    assert main(["train", *ARGS, "--out", str(tmp_path / "split")]) == 130
    trainer.STEP_HOOKS.pop()
    assert main(["train", "--resume", str(tmp_path / "split")]) == 0
    assert sizes == whole  # the same size at every step, across the interruption
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "split"))
    assert a["patch_embed.proj.weight"].shape[-2:] == (4, 4)  # the stored kernel stays at the model's own size
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "whole"), "--patch-size", "8", "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["patch_size"] == 8 and result["top1"] > 0.15


def test_flexi_planning_takes_a_conv_patch_embedding_and_refuses_sizes_that_do_not_divide():
    planned = plan("tiny-cifar", cifar_like(), Recipe(flexi_patch="2,4,8"), {"flexi_patch"})
    assert planned.config.patch_embed == "conv"  # the small-image default's conv stem cannot be resized
    with pytest.raises(ValueError, match="patch size 3 does not divide the 32x32 images"):
        plan("tiny-cifar", cifar_like(), Recipe(flexi_patch="3,4"), {"flexi_patch"})
    with pytest.raises(ValueError, match="--flexi-patch 'four'"):
        Recipe(flexi_patch="four")
