"""Fine-tuning pretrained ViTs end to end: `vitkit train --init hf-hub:...` from a Hugging Face Hub
cache (offline), a run that resumes without the hub, the normalization a run records, feeds and
predicts with, and the paper's fine-tuning recipe for --init. (Loading from the hub:
tests/weights/test_hub.py; exporting with the normalization: tests/weights/test_export.py.)"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.v2.functional import normalize

import vitkit
from helpers import randomize
from peers import timm_vit_in_an_offline_hub
from vitkit.cli import main
from vitkit.model.normalization import IMAGENET, Normalization
from vitkit.train import trainer

REPO = "acme/tiny-vit"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """REPO in an offline Hugging Face Hub cache: (cache folder, the timm model uploaded there)."""
    return timm_vit_in_an_offline_hub(tmp_path / "hub", REPO, monkeypatch)


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
