"""torchvision CNNs trained by vitkit (`--model torchvision:ARCH`): a run like any other, and a
convolutional teacher for a ViT student (DeiT)."""

import json

import torch
import torchvision

import vitkit
from helpers import make_folder, run_cli
from vitkit.model.cnn import CNN


def test_a_cnn_run_trains_reloads_predicts_and_teaches_a_vit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_folder(tmp_path / "imgs", corrupt=False)
    common = ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--json"]
    code, _, err = run_cli(capsys, "train", data, "--model", "torchvision:resnet18", "--out", tmp_path / "cnn",
                                *common)
    assert code == 0, err
    cnn = vitkit.load(tmp_path / "cnn").eval()
    assert isinstance(cnn, CNN) and cnn.config.arch == "resnet18" and cnn.config.small_images
    reference = torchvision.models.resnet18(num_classes=3)  # the same network, built by torchvision
    reference.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.load_state_dict({k.removeprefix("net."): v for k, v in cnn.state_dict().items()})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(cnn(x), reference.eval()(x))

    code, evaluation, err = run_cli(capsys, "eval", tmp_path / "cnn", "--data", data, "--json")
    assert code == 0 and evaluation["images"] == 18, err
    code, predictions, err = run_cli(capsys, "predict", tmp_path / "cnn", data / "red", "--json")
    assert code == 0 and len(predictions) == 6, err
    code, _, err = run_cli(capsys, "explain", tmp_path / "cnn", data / "red" / "0.png")
    assert code == 2 and "attention maps need a ViT" in err

    code, _, err = run_cli(capsys, "train", data, "--teacher", tmp_path / "cnn", "--out", tmp_path / "vit",
                                 *common)
    assert code == 0, err
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert config["vit"]["distilled"] and config["recipe"]["teacher"] == str(tmp_path / "cnn")
