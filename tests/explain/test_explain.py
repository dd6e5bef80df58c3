"""Explanations on synthetic attention with known answers, and the commands end to end."""

import itertools
import json
import math

import pytest
import torch
from PIL import Image

import vitkit
from helpers import randomize
from vitkit.cli import main
from vitkit.explain import figures, maps, report


def test_rollout_of_identity_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(maps.rollout_matrices([eye] * 4), torch.eye(5).expand(2, 5, 5))


def test_rollout_of_uniform_attention_is_uniform_plus_the_residual():
    uniform = torch.full((1, 2, 5, 5), 1 / 5)
    torch.testing.assert_close(maps.rollout_matrices([uniform] * 3, residual=False), torch.full((1, 5, 5), 1 / 5))
    joint = maps.rollout_matrices([uniform] * 3)  # with the residual, (1 - 2^-L) U + 2^-L I
    torch.testing.assert_close(joint, (1 - 1 / 8) * torch.full((1, 5, 5), 1 / 5) + torch.eye(5) / 8)
    class_row = joint[0, 0, 1:]
    assert torch.allclose(class_row, class_row[0].expand(4))  # the map over the patches is uniform


def test_rollout_rows_sum_to_one_on_a_real_model():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=3))
    x = torch.randn(2, 3, 32, 32)
    _, attentions = model(x, return_attention=True)
    joint = maps.rollout_matrices(attentions)
    torch.testing.assert_close(joint.sum(-1), torch.ones(2, 65))
    heat = maps.rollout(model, x)
    assert heat.shape == (2, 8, 8)
    torch.testing.assert_close(heat.sum((1, 2)), torch.ones(2))


def test_mean_attention_distance_known_answers():
    grid, patch = (3, 4), (8, 8)
    n = 12
    self_attention = torch.eye(n + 1).expand(2, 2, n + 1, n + 1)
    assert maps.mean_attention_distance(self_attention, grid, patch, 1).abs().max() < 1e-6
    uniform = torch.full((1, 1, n + 1, n + 1), 1 / (n + 1))
    centres = [(r * 8, c * 8) for r in range(3) for c in range(4)]
    expected = sum(math.dist(a, b) for a, b in itertools.product(centres, centres)) / n**2
    assert maps.mean_attention_distance(uniform, grid, patch, 1).item() == pytest.approx(expected, rel=1e-5)


def test_position_similarity_of_sincos_peaks_at_itself_and_falls_with_distance():
    model = vitkit.create_model("vit_ti4_32", pos_embed="sincos2d", class_token=False, pool="mean")
    similarity = maps.position_similarity(model)  # (64, 8, 8)
    assert similarity.shape == (64, 8, 8)
    flat = similarity.reshape(64, 64)
    assert torch.equal(flat.argmax(dim=1), torch.arange(64))
    distance = maps.patch_distances((8, 8), (1, 1))
    means = [flat[(distance > d - 0.5) & (distance <= d + 0.5)].mean().item() for d in (1, 2, 3, 4)]
    assert means == sorted(means, reverse=True)


def test_maps_use_the_predicting_model():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2))
    x = torch.randn(2, 3, 32, 32)
    logits, _ = maps._attentions(model, x)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)


def test_grad_rollout_and_last_layer_shapes():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, pool="mean", class_token=False))
    x = torch.randn(2, 3, 32, 32)
    heat = maps.grad_rollout(model, x, target=3)
    assert heat.shape == (2, 8, 8) and torch.allclose(heat.sum((1, 2)), torch.ones(2))
    assert maps.last_layer(model, x).shape == (2, 3, 8, 8)
    assert maps.embedding_components(model, 5).shape == (5, 3, 4, 4)
    assert maps.attention_distance(model, x).shape == (2, 3)


@pytest.mark.parametrize("method", ["rollout", "last-layer", "grad-rollout"])
def test_explain_command_writes_pictures(tmp_path, capsys, method):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=3))
    model.save_pretrained(tmp_path / "run", {"classes": ["a", "b", "c"]})
    Image.new("RGB", (40, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert main(["explain", str(tmp_path / "run"), str(tmp_path / "red.png"), str(tmp_path / "bad.jpg"),
                 "--method", method, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "error" in results[1]
    png = results[0]["png"]
    assert Image.open(png).size[0] > 300 and len(results[0]["top"]) == 3


def test_inspect_command_writes_attention_distances_and_a_picture(tmp_path, capsys):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=2))
    model.save_pretrained(tmp_path / "run", {"classes": ["x", "y"]})
    for name in ("x", "y"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (i * 60, 90, 10)).save(tmp_path / "data" / name / f"{i}.png")
    assert main(["inspect", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and len(result["mean_attention_distance"]) == 2
    assert Image.open(result["png"]).size[0] > 800


def test_grad_rollout_leaves_the_model_as_it_was():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2)).train()
    heat = maps.grad_rollout(model, torch.randn(2, 3, 32, 32), target=1)
    assert torch.allclose(heat.sum((1, 2)), torch.ones(2))
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    with torch.no_grad():  # it takes its own gradients even where the caller turned them off
        torch.testing.assert_close(maps.grad_rollout(model, torch.randn(2, 3, 32, 32), target=1).sum((1, 2)),
                                   torch.ones(2))
    for p in model.parameters():  # frozen weights: the gradient still reaches the attention maps
        p.requires_grad_(False)
    torch.testing.assert_close(maps.grad_rollout(model, torch.randn(2, 3, 32, 32), target=1).sum((1, 2)),
                               torch.ones(2))
    maps.rollout(model, torch.randn(1, 3, 32, 32))
    assert model.training


def test_explain_names_each_images_own_class_once(tmp_path, monkeypatch):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=3))
    model.save_pretrained(tmp_path / "run", {"classes": ["a", "b", "c"]})
    for name, colour in (("red", (200, 30, 30)), ("blue", (20, 30, 220)), ("grey", (90, 90, 90))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{name}.png")
    captions = []
    monkeypatch.setattr(figures, "explanation", lambda image, heat, top, method, note, png: captions.append(
        (note, top[0][0])))
    results = report.explain(tmp_path / "run", [str(tmp_path / f"{n}.png") for n in ("red", "blue", "grey")],
                             tmp_path / "out", "grad-rollout")
    assert len(results) == len(captions) == 3
    for note, predicted in captions:
        assert note == f" for class {predicted}"
