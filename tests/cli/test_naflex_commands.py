"""--max-tokens on the commands: a run trained under a token budget records it, and eval, predict,
explain, serve and export default to it; every image is seen whole at its own aspect ratio. The
oracle is the model run on each image alone at its own grid (no padding, no batching), images
resized by the budget rule here."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.data import spec
from vitkit.data.naflex import ToGrid
from vitkit.infer import open_run
from vitkit.model.normalization import to_model_input
from vitkit.serve.app import load_engine


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("naflex") / "run"
    assert main(["train", "digits", "--epochs", "2", "--max-tokens", "16", "--workers", "0", "--out", str(out)]) == 0
    return out


def alone(run, images: list[torch.Tensor], tokens: int) -> torch.Tensor:
    """Each uint8 image resized under the budget, through the model alone at its own grid."""
    loaded = open_run(run)
    model, fit = loaded.model, ToGrid(loaded.model.config.patch_hw, tokens)
    model.config = model.config.replace(dynamic_size=True)
    with torch.no_grad():
        return torch.cat([model(to_model_input(fit(x)[None], loaded.normalize, 1)) for x in images])


def test_the_run_records_its_budget_and_eval_defaults_to_it(run, capsys):
    assert json.loads((run / "config.json").read_text())["recipe"]["max_tokens"] == 16
    capsys.readouterr()
    assert main(["eval", str(run), "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_tokens"] == 16
    test = spec.load("digits").test
    logits = alone(run, [x for x, _, _ in (test[i] for i in range(len(test)))], 16)
    assert result["top1"] == pytest.approx((logits.argmax(1) == test.labels).float().mean().item())
    assert main(["eval", str(run), "--workers", "0", "--max-tokens", "4", "--json"]) == 0  # 8 px: 2x2 patches
    assert json.loads(capsys.readouterr().out)["max_tokens"] == 4


def write_images(folder, sizes) -> list[torch.Tensor]:
    folder.mkdir(exist_ok=True)
    rng, images = np.random.default_rng(0), []
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        images.append(torch.from_numpy(pixels)[None])
    return images


def test_predict_sees_each_image_whole_at_its_own_shape(run, tmp_path, capsys):
    images = write_images(tmp_path / "images", [(20, 40), (40, 20), (30, 30), (9, 12)])
    Image.fromarray(np.zeros((1, 400), dtype=np.uint8)).save(tmp_path / "images" / "z-line.png")
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "images"), "--topk", "10", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert "cannot keep its shape in 16 tokens" in results[-1]["error"]  # 1x400: refused, not squashed
    probs = alone(run, images, 16).softmax(-1)
    for result, expected in zip(results[:-1], probs, strict=True):
        got = {t["class"]: t["probability"] for t in result["top"]}
        assert [got[str(c)] for c in range(10)] == pytest.approx(expected.tolist(), abs=1e-5)


def test_explain_serve_and_export_take_the_budget(run, tmp_path, capsys):
    images = write_images(tmp_path / "images", [(20, 40), (30, 30)])
    capsys.readouterr()
    assert main(["explain", str(run), str(tmp_path / "images"), "--out", str(tmp_path / "maps"), "--json"]) == 0
    assert all("png" in r for r in json.loads(capsys.readouterr().out))
    engine = load_engine(run, dtype="fp32")
    fit = ToGrid((4, 4), 16)
    shown = [engine.fit(x) for x in images]
    sizes = [tuple(x.shape[-2:]) for x in shown]
    assert sizes == [tuple(fit(x).shape[-2:]) for x in images] == [(12, 20), (16, 16)]  # 3x5 and 4x4 patches
    served = torch.stack(engine.probabilities(shown))
    torch.testing.assert_close(served, alone(run, images, 16).softmax(-1), rtol=1e-5, atol=1e-6)
    assert engine.explain(shown[0])["map"].shape == (3, 5)  # the image's own grid
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_tokens"] == 16 and result["max_rel_error"] < 1e-4
    assert {tuple(s[2:]) for s in result["checked_batches"]} == {(12, 20), (16, 16), (20, 12)}


def test_bad_budgets_are_one_line_errors(run, capsys):
    assert main(["predict", str(run), "x.png", "--max-tokens", "0"]) == 2
    assert "at least 1 token per image" in capsys.readouterr().err
    assert main(["train", "digits", "--max-tokens", "0", "--epochs", "1"]) == 2
    assert "--max-tokens must be positive" in capsys.readouterr().err
    assert main(["export", str(run), "--out", "m.onnx", "--max-tokens", "0"]) == 2
    assert "at least 1 token per image" in capsys.readouterr().err
