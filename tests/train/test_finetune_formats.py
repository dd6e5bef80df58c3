"""Fine-tuning from each library's weights whose architecture differs from vitkit's own presets:
the run keeps the weights' architecture, reloads as the model it trained, and every command
works on it."""

import json

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers

import vitkit
from helpers import make_folder, randomize, run_cli
from peers import flax_npz
from vitkit.model.fast import use_training_kernels
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import start


def timm_weights(path):  # a width no paper size has, mean pooling with fc_norm
    model = randomize(timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=40, depth=2, num_heads=5, num_classes=7, global_pool="avg",
        fc_norm=True))
    model.pretrained_cfg = {"architecture": "vit_custom", "input_size": [3, 32, 32]}
    timm.models.save_for_hf(model, path, model_args={"num_heads": 5})
    return path, {}


def hf_weights(path):  # patch 14, LayerNorm eps 1e-12
    config = transformers.ViTConfig(image_size=28, patch_size=14, hidden_size=48, num_hidden_layers=2,
                                    num_attention_heads=3, intermediate_size=96, num_labels=4, layer_norm_eps=1e-12)
    randomize(transformers.ViTForImageClassification(config)).save_pretrained(path)
    return path, {}


def torchvision_weights(path):  # trained with ImageNet normalization
    model = randomize(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                           hidden_dim=64, mlp_dim=128, num_classes=5))
    path.mkdir()
    torch.save(model.state_dict(), path / "vit.pth")
    return path / "vit.pth", {"heads": 4}


def vit_pytorch_weights(path):  # the write-up's code: LayerNorm patch embedding, mean over all tokens
    import vit_pytorch

    model = randomize(vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=4, dim=48, depth=2, heads=3,
                                      mlp_dim=96, dim_head=24, pool="mean"))
    path.mkdir()
    torch.save(model.state_dict(), path / "vp.pt")
    return path / "vp.pt", {"heads": 3, "source_image_size": 32}


def jax_weights(path):  # the original .npz: tanh GELU
    model = randomize(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                           hidden_dim=64, mlp_dim=128, num_classes=5))
    path.mkdir()
    flax_npz(model, 4, path / "w.npz")
    return path / "w.npz", {}


SOURCES = {"timm": timm_weights, "hf": hf_weights, "torchvision": torchvision_weights,
           "vit-pytorch": vit_pytorch_weights, "jax": jax_weights}


@pytest.mark.parametrize("source", SOURCES)
def test_fine_tuning_from_each_format_keeps_its_architecture_and_every_command_works(tmp_path, capsys, monkeypatch,
                                                                                      source):
    monkeypatch.chdir(tmp_path)
    data = make_folder(tmp_path / "imgs", corrupt=False)
    weights, hints = SOURCES[source](tmp_path / "weights")
    original = vitkit.load(weights, **hints)
    recipe = Recipe(init=str(weights), epochs=1, batch_size=8, workers=0, model_overrides=hints)
    run = start(str(data), recipe, {"init", "epochs", "batch_size", "workers", "model_overrides"}, out=tmp_path / "run")
    run.fit()

    tuned = vitkit.load(tmp_path / "run").eval()  # the published run is the model that was trained,
    use_training_kernels(tuned, torch.device("cpu"))  # compared through the trainer's CPU kernels
    kept = {k: v for k, v in original.config.to_dict().items() if k not in ("num_classes", "drop_path", "dropout")}
    assert {k: tuned.config.to_dict()[k] for k in kept} == kept and tuned.config.num_classes == 3
    x = torch.randn(2, tuned.config.in_channels, *tuned.config.image_hw)
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), run.parts.eval_model.eval()(x), rtol=0, atol=0)
    expected = (original.normalization or vitkit.model.normalization.HALF).to_dict()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["normalize"] == expected

    for args in (["eval", tmp_path / "run", "--data", data, "--workers", "0"],
                 ["predict", tmp_path / "run", data / "red"],
                 ["explain", tmp_path / "run", data / "red" / "0.png", "--out", tmp_path / "maps"],
                 ["export", tmp_path / "run", "--out", tmp_path / "m.onnx"]):
        code, _, err = run_cli(capsys, *args, "--json")
        assert code == 0, (args[0], err)


def test_torchvision_weights_are_fine_tuned_with_imagenet_normalization(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights, hints = torchvision_weights(tmp_path / "w")
    assert vitkit.load(weights, **hints).normalization == vitkit.model.normalization.IMAGENET
    data = make_folder(tmp_path / "imgs", corrupt=False)
    fields = dict(init=str(weights), epochs=1, batch_size=8, workers=0, model_overrides=hints, crop="none",
                  flip=False)
    run = start(str(data), Recipe(**fields), set(fields), out=tmp_path / "r")
    images, labels, _ = next(iter(run.feed.loader))
    model_input = run.feed.prepare(images, labels, 0, 0).images.numpy()
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(model_input - (images.float().numpy() / 255.0 - mean) / std).max() < 1e-5


def test_gray_data_fine_tunes_rgb_weights_with_the_channel_repeated(tmp_path, monkeypatch):
    """digits (1 channel) from torchvision's RGB weights: each gray pixel feeds all three channels,
    each normalised with its own ImageNet mean and std."""
    monkeypatch.chdir(tmp_path)
    weights, hints = torchvision_weights(tmp_path / "w")
    fields = dict(init=str(weights), epochs=1, batch_size=16, workers=0, model_overrides=hints, flip=False)
    run = start("digits", Recipe(**fields), set(fields), out=tmp_path / "r")
    assert run.plan.config.in_channels == 3
    images, labels, _ = next(iter(run.feed.loader))
    assert images.shape[1] == 1
    model_input = run.feed.prepare(images, labels, 0, 0).images.numpy()
    assert model_input.shape[1] == 3
    gray = model_input[:, :1] * 0.229 + 0.485  # channel 0 back to [0, 1]
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(model_input - (gray - mean) / std).max() < 1e-5
    assert run.fit()["epochs"] == 1
