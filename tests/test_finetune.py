"""Fine-tuning pretrained ViTs end to end: weights from a Hugging Face Hub cache (offline) as
`vitkit.load("hf-hub:...")` and `vitkit train --init hf-hub:...`, a run that resumes without the
hub, and exported programs that carry the input normalization."""

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models._hub import save_for_hf
from timm.models.vision_transformer import VisionTransformer
from torchvision.transforms.v2.functional import normalize

import vitkit
from helpers import hub_cache, randomize
from vitkit.cli import main
from vitkit.model.normalization import IMAGENET, Normalization
from vitkit.train import trainer
from vitkit.weights.export import export

REPO = "acme/tiny-vit"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face Hub cache holding REPO as timm uploads it (ImageNet statistics in
    its pretrained_cfg); yields (cache folder, timm model)."""
    import huggingface_hub.constants as constants

    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5))
    theirs.pretrained_cfg = {"architecture": "vit_custom", "input_size": [3, 32, 32],
                             "mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    cache = tmp_path / "hub"
    hub_cache(cache, REPO, lambda folder: save_for_hf(theirs, folder, model_args={"num_heads": 2},
                                                      safe_serialization=True))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, theirs


def test_load_from_the_hub_cache(hub):
    _, theirs = hub
    ours = vitkit.load(f"hf-hub:{REPO}").eval()
    assert ours.normalization == IMAGENET  # from the repository's config.json
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"hf-hub:acme/absent: .*cached"):  # offline, not in the cache
        vitkit.load("hf-hub:acme/absent")


def tiny_folder(root, per_class=6):
    """Two classes of 32 px photos told apart by colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            pixels[..., 0 if c == 0 else 2] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_train_from_the_hub_then_resume_without_it(tmp_path, hub, monkeypatch):
    cache, theirs = hub
    data, run = tiny_folder(tmp_path / "data"), tmp_path / "run"

    def stop(r):  # a Ctrl-C before the second step of the first epoch
        if (r.progress.epoch, r.progress.step) == (0, 1):
            r.stop.requested = True

    monkeypatch.setattr(trainer, "STEP_HOOKS", [stop])
    flags = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--out", str(run)]
    assert main(["train", str(data), "--init", f"hf-hub:{REPO}", *flags]) == 130
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["recipe"]["init"] == f"hf-hub:{REPO}" and saved["progress"]["step"] == 1
    assert Normalization.parse(saved["normalize"]) == IMAGENET  # the weights' own, from the hub
    # the first step started from the hub's weights: the blocks moved away from them only a little
    blocks = {k: v for k, v in theirs.state_dict().items() if k.startswith("blocks.")}
    assert all(torch.allclose(saved["model"][k], v, atol=0.05) for k, v in blocks.items())
    shutil.rmtree(cache)  # the run is self-contained: its checkpoint has the weights
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    assert main(["train", str(data), "--init", f"hf-hub:{REPO}", "--out", str(tmp_path / "new")]) == 2  # gone
    assert main(["train", "--resume", str(run), "--json"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    model = vitkit.load(run)
    assert model.config.num_classes == 2 and model.config.dim == 32 and model.normalization == IMAGENET
    assert json.loads((run / "config.json").read_text())["classes"] == ["blue", "red"]


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


def test_train_normalize_is_recorded_fed_and_used_by_predict_and_eval(tmp_path):
    """`--normalize imagenet` on a new model: the run records it, the trainer feeds it, and
    predict and eval use it (checked against images normalised here with torchvision)."""
    from vitkit import infer
    from vitkit.train.recipe import Recipe

    data, run = tiny_folder(tmp_path / "data"), tmp_path / "run"
    flags = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--out", str(run)]
    assert main(["train", str(data), "--normalize", "imagenet", *flags]) == 0
    assert json.loads((run / "config.json").read_text())["normalize"] == IMAGENET.to_dict()
    fields = dict(epochs=1, batch_size=4, workers=0, precision="fp32", normalize="imagenet")
    fed = trainer.start(str(data), Recipe(**fields), set(fields), out=tmp_path / "fed")
    fed.feed.sampler.set_epoch(0)
    images, labels, _ = next(iter(fed.feed.loader))
    batch = fed.feed.prepare(images, labels, 0, 0)
    torch.testing.assert_close(batch.images, normalize(batch.pixels, list(IMAGENET.mean), list(IMAGENET.std)))

    # weights at a trained model's scale (3 steps barely move the initialisation), so that inputs matter
    model, classes = randomize(vitkit.load(run)).eval(), ["blue", "red"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run / "model.safetensors")
    files = sorted(data.rglob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files]) / 255.0
    with torch.no_grad():
        logits = model(normalize(pixels, list(IMAGENET.mean), list(IMAGENET.std)))
        assert (logits - model(normalize(pixels, [0.5] * 3, [0.5] * 3))).abs().max() > 0.01  # it matters
    got = infer.predict(run, [str(f) for f in files], topk=1)
    for result, probs in zip(got, logits.softmax(-1), strict=True):
        assert result["top"][0]["class"] == classes[int(probs.argmax())]
        assert result["top"][0]["probability"] == pytest.approx(probs.max().item(), abs=1e-5)
    truth = torch.tensor([classes.index(f.parent.name) for f in files])
    scored = infer.evaluate_run(run, data=str(data), workers=0)
    assert scored["images"] == len(files)
    assert scored["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, truth).item(), abs=1e-5)
    assert scored["top1"] == pytest.approx((logits.argmax(1) == truth).float().mean().item())


def test_init_chooses_the_papers_fine_tuning_recipe_unless_told_otherwise(tmp_path):
    from vitkit.train.recipe import Recipe

    data, weights = tiny_folder(tmp_path / "data"), tmp_path / "weights"
    # weights of a vitkit run, trained with patch dropout
    randomize(vitkit.create_model("vit_ti4_32", depth=1, num_classes=5, patch_dropout=0.5)).save_pretrained(weights)
    fields = dict(init=str(weights), workers=0)
    run = trainer.start(str(data), Recipe(**fields), set(fields), out=tmp_path / "a")
    assert isinstance(run.parts.optimizer, torch.optim.SGD) and run.parts.optimizer.defaults["momentum"] == 0.9
    assert all(g["weight_decay"] == 0 for g in run.parts.optimizer.param_groups)
    r = run.plan.recipe
    assert (r.clip_grad, r.label_smoothing, r.mixup, r.cutmix, r.drop_path) == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert r.patch_dropout == run.plan.config.patch_dropout == 0.0
    fields = dict(init=str(weights), workers=0, model_overrides={"patch_dropout": 0.25})
    assert trainer.start(str(data), Recipe(**fields), set(fields), out=tmp_path / "c").plan.config.patch_dropout == 0.25
    assert r.warmup_epochs > 0 and r.min_lr < r.lr
    fields = dict(init=str(weights), workers=0, optimizer="adamw", weight_decay=0.05)
    run = trainer.start(str(data), Recipe(**fields), set(fields), out=tmp_path / "b")
    assert isinstance(run.parts.optimizer, torch.optim.AdamW)
    assert {g["weight_decay"] for g in run.parts.optimizer.param_groups} == {0.0, 0.05}
