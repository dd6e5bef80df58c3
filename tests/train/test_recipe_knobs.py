"""Each training knob does what its flag says: observed in the run's data, model and optimizer
during one step, against the same run without the knob."""

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import write_idx
from vitkit.train.optim import Schedule, build_optimizer
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import Run, start

BASE = dict(epochs=2, batch_size=8, workers=0, precision="fp32", crop="none", flip=False, val_split=0.25,
            patch_dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir()
        for i in range(8):
            pixels = (torch.rand(16, 16, 3, generator=g) * 200 + 40).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return str(root)


def run_with(data: str, **knobs) -> Run:
    fields = {**BASE, **knobs}
    out = tempfile.mkdtemp(prefix="run-", dir=Path(data).parent)  # not the working folder's runs/
    run = start(data, Recipe(**fields), set(fields), out=out)
    run.feed.sampler.set_epoch(0)
    return run


def first_batch(run: Run):
    images, labels, _ = next(iter(run.feed.loader))
    return images, labels


def probe_forward(run: Run) -> list:
    """Record (input, output) of every training forward."""
    calls, forward = [], run.parts.forward

    def recorded(x, **kwargs):
        out = forward(x, **kwargs)
        calls.append((x.detach(), out))
        return out

    run.parts.forward = recorded
    return calls


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ goes here


@pytest.mark.parametrize("knob", [dict(augment="randaugment"), dict(crop="random-resized", min_scale=0.3),
                                  dict(erasing=0.9)])
def test_per_image_augmentations_change_the_loaded_images(data, knob):
    plain, augmented = first_batch(run_with(data))[0], first_batch(run_with(data, **knob))[0]
    assert plain.shape == augmented.shape
    changed = (plain != augmented).flatten(1).any(1).float().mean()
    assert changed > 0.5
    if "erasing" in knob:  # an erased rectangle is black; the images have no black pixel
        assert (augmented == 0).all(1).flatten(1).any(1).float().mean() > 0.5


@pytest.mark.parametrize("knob", [dict(crop="pad", padding=4), dict(flip=True), dict(rotate=30.0),
                                  dict(translate=0.2), dict(scale_jitter=0.3)])
def test_batch_augmentations_change_the_model_input(data, knob):
    plain, augmented = run_with(data), run_with(data, **knob)
    images, labels = first_batch(plain)
    x0 = plain.feed.prepare(images, labels, 0, 0).images
    x1 = augmented.feed.prepare(images, labels, 0, 0).images
    assert (x0 != x1).flatten(1).any(1).float().mean() > 0.2
    if "flip" in knob:  # a flip is exact: some images are mirrored, the rest untouched
        for a, b in zip(x0, x1, strict=True):
            assert torch.equal(a, b) or torch.equal(a.flip(-1), b)


@pytest.mark.parametrize("knob", [dict(mixup=0.8), dict(cutmix=1.0)])
def test_mixing_makes_soft_targets(data, knob):
    run = run_with(data, **knob)
    images, labels = first_batch(run)
    batch = run.feed.prepare(images, labels, 0, 0)
    assert batch.targets.shape == (len(labels), 3)
    assert torch.allclose(batch.targets.sum(1), torch.ones(len(labels)))
    assert (batch.targets.max(1).values < 1).any()  # some targets are mixtures of two classes


@pytest.mark.parametrize("knob", [dict(drop_path=0.5), dict(dropout=0.5), dict(patch_dropout=0.5)])
def test_stochastic_regularisers_make_training_forwards_random(data, knob):
    for run, random in ((run_with(data), False), (run_with(data, **knob), True)):
        run.parts.model.train()
        x = torch.randn(4, 3, 16, 16)
        torch.manual_seed(1)
        a = run.parts.model.forward_tokens(x)[0]
        b = run.parts.model.forward_tokens(x)[0]
        assert (not torch.equal(a, b)) == random


def test_accumulation_splits_the_step_into_pieces(data):
    run = run_with(data, accum_steps=2)
    calls = probe_forward(run)
    run.step(*first_batch(run))
    assert [len(x) for x, _ in calls] == [4, 4]


def test_bf16_precision_computes_in_bf16(data):
    run = run_with(data, precision="bf16")
    calls = probe_forward(run)
    run.step(*first_batch(run))
    assert calls[0][1].dtype == torch.bfloat16
    run = run_with(data)
    calls = probe_forward(run)
    run.step(*first_batch(run))
    assert calls[0][1].dtype == torch.float32


def test_label_smoothing_enters_the_loss(data):
    run = run_with(data, label_smoothing=0.3)
    with torch.no_grad():
        run.parts.model.head.weight.normal_()  # a head that is not zero, so smoothing changes the loss
    calls = probe_forward(run)
    images, labels = first_batch(run)
    run.step(images, labels)
    logits = calls[0][1].float()
    expected = F.cross_entropy(logits, labels, label_smoothing=0.3, reduction="sum").item()
    assert run.progress.totals.loss_sum == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(F.cross_entropy(logits, labels, reduction="sum").item(), rel=1e-3)


def grad_norm_at_optimizer_step(run: Run) -> list[float]:
    norms, real_step = [], run.parts.optimizer.step

    def step():
        grads = [p.grad.flatten() for p in run.parts.model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())
        real_step()

    run.parts.optimizer.step = step
    return norms


def test_gradient_clipping_bounds_the_step(data):
    for clip in (1e-3, None):
        run = run_with(data, clip_grad=clip)
        with torch.no_grad():
            run.parts.model.head.weight.normal_()
        norms = grad_norm_at_optimizer_step(run)
        run.step(*first_batch(run))
        assert (norms[0] <= 1.001e-3) == (clip is not None)


def test_warmup_and_min_lr_shape_the_schedule(data):
    run = run_with(data, lr=0.01, warmup_epochs=1, min_lr=1e-4)
    steps, lr = run.plan.steps_per_epoch, lambda step: run.parts.schedule.lr(step, run.budget.steps)
    assert lr(0) == pytest.approx(0.01 / steps)
    assert lr(steps - 1) == pytest.approx(0.01)
    assert lr(2 * steps) == pytest.approx(1e-4)
    run.step(*first_batch(run))
    assert run.parts.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / steps)


def test_a_warmup_longer_than_half_the_run_is_cut_to_half(data):
    """--epochs 2 with a 3-epoch warm-up: the rate peaks mid-run and decays after, not ending mid-ramp."""
    run = run_with(data, lr=0.01, warmup_epochs=3, min_lr=1e-4)
    steps = run.plan.steps_per_epoch  # 2 epochs: the warm-up becomes the first of them
    lr = lambda step: run.parts.schedule.lr(step, run.budget.steps)  # noqa: E731
    assert lr(0) == pytest.approx(0.01 / steps)
    assert lr(steps - 1) == lr(steps) == pytest.approx(0.01)
    assert lr(2 * steps - 1) < 0.01  # the last step taken
    assert lr(2 * steps) == pytest.approx(1e-4)  # where the cosine ends
    late = Schedule(0.01, 0.0, warmup=100)  # a time budget: the length is known only after a few steps
    assert late.lr(9, None) == pytest.approx(0.01 * 10 / 100)
    assert late.lr(9, 40) == pytest.approx(0.01 * 10 / 20) and late.lr(19, 40) == pytest.approx(0.01)
    # an odd length: the warm-up rounds down
    assert late.lr(17, 39) == pytest.approx(0.01 * 18 / 19) and late.lr(20, 39) < 0.01


def test_weight_decay_spares_norms_biases_and_tokens(data):
    run = run_with(data, weight_decay=0.1)
    decay = {id(p): g["weight_decay"] for g in run.parts.optimizer.param_groups for p in g["params"]}
    for name, p in run.parts.model.named_parameters():
        spared = p.ndim <= 1 or name in ("pos_embed", "cls_token")
        assert decay[id(p)] == (0.0 if spared else 0.1), name


def test_layer_decay_lowers_the_lr_of_earlier_layers(data):
    run = run_with(data, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in run.parts.optimizer.param_groups for p in g["params"]}
    depth = run.plan.config.depth
    assert scale[id(run.parts.model.head.weight)] == 1.0
    assert scale[id(run.parts.model.blocks[depth - 1].mlp.fc1.weight)] == 0.5
    assert scale[id(run.parts.model.patch_embed.proj.weight)] == pytest.approx(0.5 ** (depth + 1))


def test_ema_keeps_an_average_of_the_weights(data):
    run = run_with(data, ema=0.5, lr=0.1)
    before = run.parts.model.head.bias.detach().clone()
    run.step(*first_batch(run))
    after = run.parts.model.head.bias.detach().clone()
    assert not torch.equal(before, after)
    assert torch.allclose(run.parts.eval_model.head.bias, after)  # the first update copies the weights
    run.step(*first_batch(run))
    latest = run.parts.model.head.bias.detach()
    assert torch.allclose(run.parts.eval_model.head.bias, 0.5 * after + 0.5 * latest, atol=1e-6)


def test_sgd_optimizer_is_sgd_with_momentum(data):
    run = run_with(data, optimizer="sgd", lr=0.1)
    assert isinstance(run.parts.optimizer, torch.optim.SGD) and run.parts.optimizer.defaults["momentum"] == 0.9
    assert not math.isnan(run.parts.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizers_are_fused_on_the_cpu_and_step_like_foreach(data, optimizer):
    """Fused kernels on the CPU (one pass per parameter; ~3x faster AdamW steps), computing what
    the foreach implementation computes."""
    fused, plain = run_with(data, optimizer=optimizer), run_with(data, optimizer=optimizer)
    assert fused.parts.optimizer.defaults["fused"]
    plain.parts.optimizer = build_optimizer(plain.parts.model, plain.plan.recipe, plain.world.device, sharded=True)
    assert not plain.parts.optimizer.defaults["fused"]  # foreach
    batch = first_batch(fused)
    for run in (fused, plain):
        run.step(*batch)
        run.step(*batch)
    for (name, a), b in zip(fused.parts.model.named_parameters(), plain.parts.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_flips_by_default_unless_a_mirror_image_changes_the_class(tmp_path):
    """Folders and Fashion-MNIST flip; digits and MNIST do not."""
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), False)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 2, False)
    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / "folder" / c / f"{i}.png")
    fields = dict(epochs=1, batch_size=4, workers=0)
    expected = {f"fashion-mnist:{tmp_path}": True, f"mnist:{tmp_path}": False, "digits": False,
                str(tmp_path / "folder"): True}
    flips = {data: start(data, Recipe(**fields), set(fields), out=tmp_path / "runs" / str(i)).plan.recipe.flip
             for i, data in enumerate(expected)}
    assert flips == expected


def test_plain_patches_replace_the_default_conv_stem(data):
    """The small-image default's deeper stem belongs to its conv stem: asking for the paper's plain
    patch projection (or Xiao et al.'s stem) gets exactly that, with nothing of the default's stem."""
    run = run_with(data)
    default = run.plan.config
    assert (default.patch_embed, default.stem_depth) == ("conv-stem", 2)
    assert [layer.conv.stride[0] for layer in run.parts.model.patch_embed.backbone] == [2, 1, 2, 1]
    plain = run_with(data, model_overrides={"patch_embed": "conv"}).plan.config
    assert plain == default.replace(patch_embed="conv", stem_depth=1)
    xiao = run_with(data, model_overrides={"stem_depth": 1}).plan.config
    assert xiao == default.replace(stem_depth=1)
