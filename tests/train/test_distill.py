"""DeiT distillation (--teacher, --distill) and gradient checkpointing in training."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

import vitkit
from vitkit.train.distill import SOFT_TEMPERATURE, SOFT_WEIGHT, distillation_losses, load_teacher
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import start, train

FAST = dict(batch_size=64, workers=0, precision="fp32")


def test_distillation_losses_are_deits():
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(5, 4, generator=g) for _ in range(3))
    labels = torch.tensor([0, 1, 2, 3, 0])
    hard = distillation_losses((cls, dist), labels, teacher, "hard", 0.0)
    expected = 0.5 * F.cross_entropy(cls, labels, reduction="none") + \
        0.5 * F.cross_entropy(dist, teacher.argmax(1), reduction="none")
    torch.testing.assert_close(hard, expected)
    soft = distillation_losses((cls, dist), labels, teacher, "soft", 0.0)
    t = SOFT_TEMPERATURE
    kl = (F.softmax(teacher / t, 1) * (F.log_softmax(teacher / t, 1) - F.log_softmax(dist / t, 1))).sum(1)
    torch.testing.assert_close(soft, (1 - SOFT_WEIGHT) * F.cross_entropy(cls, labels, reduction="none")
                               + SOFT_WEIGHT * t * t * kl)
    alone = distillation_losses((cls, dist), labels, None, "hard", 0.0)
    torch.testing.assert_close(alone, 0.5 * (F.cross_entropy(cls, labels, reduction="none")
                                             + F.cross_entropy(dist, labels, reduction="none")))


@pytest.fixture(scope="module")
def stubborn_teacher(tmp_path_factory):
    """A 'teacher' that answers 3 for every digit: what the distillation head must learn."""
    path = tmp_path_factory.mktemp("teacher") / "run"
    model = vitkit.ViT(image_size=16, patch_size=4, in_channels=1, num_classes=10, dim=32, depth=1, heads=2,
                       mlp_dim=32, class_token=False, pool="mean")
    with torch.no_grad():
        model.head.bias[3] = 10.0
    model.save_pretrained(path, {"classes": [str(i) for i in range(10)]})
    return path


@pytest.mark.slow  # a real training run (~10 s or more)
def test_the_distillation_head_learns_the_teacher_and_the_class_head_the_labels(tmp_path, stubborn_teacher):
    recipe = Recipe(epochs=8, teacher=str(stubborn_teacher), **FAST)
    run = start("digits", recipe, {"epochs", "teacher", *FAST}, out=tmp_path / "student")
    assert run.plan.config.distilled
    result = run.fit()
    student = vitkit.load(tmp_path / "student").eval()
    images = run.feed.normalization(run.plan.splits.test.images.float() / 255)
    tokens, _ = student.forward_tokens(images)
    dist_says = student.head_dist(tokens[:, 1]).argmax(1)
    cls_says = student.head(tokens[:, 0]).argmax(1)
    assert (dist_says == 3).float().mean() > 0.9  # the teacher's answer
    assert (cls_says == run.plan.splits.test.labels).float().mean() > 0.5  # the labels
    with torch.no_grad():  # at inference the two heads are averaged (DeiT), and that is what the run scores
        averaged = (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2
        torch.testing.assert_close(student(images), averaged)
    scored = (averaged.argmax(1) == run.plan.splits.test.labels).float().mean().item()
    assert result["test_top1"] == pytest.approx(scored, abs=1 / len(images))


def test_a_torchvision_teacher_is_fed_its_own_normalization_and_checked(tmp_path):
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    teacher = load_teacher(f"torchvision:resnet18:{tmp_path / 'r18.pth'}", 10, torch.device("cpu"))
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(teacher(pixels), resnet((pixels - mean) / std))
    with pytest.raises(ValueError, match="predicts 10 classes and the data has 3"):
        load_teacher(f"torchvision:resnet18:{tmp_path / 'r18.pth'}", 3, torch.device("cpu"))


def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    weights = []
    for checkpointing in (False, True):
        fields = dict(epochs=1, grad_checkpointing=checkpointing, **FAST)
        run = start("digits", Recipe(**fields), set(fields), out=tmp_path / str(checkpointing))
        assert run.parts.model.grad_checkpointing == checkpointing
        run.feed.sampler.set_epoch(0)
        for images, labels, _ in list(run.feed.loader)[:3]:
            run.step(images, labels)
        weights.append(run.parts.model.state_dict())
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=1e-6)


def test_teacher_with_a_student_that_cannot_distil_is_a_clear_error(tmp_path, stubborn_teacher):
    with pytest.raises(ValueError, match="distillation token"):
        train("digits", Recipe(epochs=1, teacher=str(stubborn_teacher), init=str(stubborn_teacher), **FAST),
              {"epochs", "teacher", "init", *FAST}, out=tmp_path / "r")
