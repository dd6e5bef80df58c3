"""Export: onnxruntime and torch.export programs compute what the PyTorch model computes, with the
input normalization in the graph when asked (images in [0, 1])."""

import numpy as np
import onnxruntime
import pytest
import torch
from torchvision.transforms.v2.functional import normalize

import vitkit
from helpers import randomize
from vitkit.cli import main
from vitkit.model.normalization import IMAGENET, Normalization
from vitkit.weights.export import export


def test_onnx_dynamic_batch_matches_pytorch(tmp_path):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, image_size=(32, 48)))
    result = export(model, tmp_path / "m.onnx", "onnx", dynamic_batch=True)
    assert result["checked_batches"] == [1, 7]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "images"
    for batch in (1, 7, 3):  # one file, any batch size
        x = torch.randn(batch, 3, 32, 48)
        got = session.run(None, {"images": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4 * max(1, float(np.abs(got).max())))


def test_pt2_program_computes_the_models_logits_at_any_batch(tmp_path):
    model = randomize(vitkit.create_model("vit_ti4_28", depth=1, pool="mean", class_token=False))
    export(model, tmp_path / "m.pt2", "pt2", dynamic_batch=True)
    program = torch.export.load(tmp_path / "m.pt2").module()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), atol=1e-5, rtol=1e-5)


def test_convert_then_export_gives_the_torchvision_models_logits_in_onnxruntime(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    # randomised: torchvision zero-initialises its head, and zeros would match any export
    source = randomize(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                            hidden_dim=32, mlp_dim=64, num_classes=3))
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "conv"), "--heads", "2"]) == 0
    assert main(["export", str(tmp_path / "conv"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "matches PyTorch" in capsys.readouterr().out
    # the file computes what the torchvision model computes: conversion and export together
    x = torch.randn(2, 3, 32, 32)  # exported without --dynamic-batch: the example's batch of 2
    with torch.no_grad():
        want = source(x)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    tolerance = 1e-4 * want.abs().max().item()
    assert want.std().item() > 100 * tolerance  # logits that differ between images and classes by far more
    torch.testing.assert_close(got, want, atol=tolerance, rtol=0)
    assert main(["convert", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "x")]) == 2  # heads unknown
    assert not (tmp_path / "x").exists()


def test_export_leaves_the_callers_model_as_it_was(tmp_path):
    model = randomize(vitkit.create_model("vit_ti4_28", depth=1)).train().to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export(model, tmp_path / "m.pt2", "pt2")
    assert model.training
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_with_the_normalization_takes_images_in_0_1(tmp_path, fmt):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2))
    model.normalization = IMAGENET
    result = export(model, tmp_path / f"m.{fmt}", fmt, dynamic_batch=True, include_normalization=True)
    assert result["normalization_in_graph"] and result["normalization"] == IMAGENET.to_dict()
    x = torch.rand(3, 3, 32, 32)  # images scaled to [0, 1]
    with torch.no_grad():
        want = model(normalize(x, list(IMAGENET.mean), list(IMAGENET.std)))
        assert (model(x) - want).abs().max() > 100 * 1e-4 * want.abs().max()  # the normalization matters
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.export.load(tmp_path / "m.pt2").module()(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * want.abs().max().item())


def test_cli_export_includes_the_runs_normalization(tmp_path, capsys):
    model = randomize(vitkit.create_model("vit_ti4_28", depth=1, num_classes=4))
    model.normalization = Normalization((0.2,), (0.1,))
    model.save_pretrained(tmp_path / "run")  # records it, as a training run does
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--include-normalization"]) == 0
    assert "images in [0, 1]" in capsys.readouterr().out
    half = tmp_path / "half.onnx"  # --normalize replaces the run's own
    assert main(["export", str(tmp_path / "run"), "--out", str(half), "--include-normalization", "--normalize",
                 "half"]) == 0
    x = torch.rand(2, 1, 28, 28)
    for file, (mean, std) in ((out, (0.2, 0.1)), (half, (0.5, 0.5))):
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = model((x - mean) / std)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * want.abs().max().item())
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--normalize", "half"]) == 2  # nothing to set
