"""Frozen features: `vitkit embed` writes the model's own features (checked against the input of
its head and its forward_intermediates, on images read and normalised here); `vitkit fewshot` is
the paper's few-shot linear evaluation, whose closed form equals scikit-learn's Ridge."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from sklearn.linear_model import Ridge
from torchvision.transforms.v2.functional import normalize

import vitkit
from helpers import randomize
from vitkit.cli import main
from vitkit.model.normalization import IMAGENET
from vitkit.probe.fewshot import class_orders, fit_least_squares


def whiten(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The documented whitening: the training features' mean and standard deviation (+ 1e-5)."""
    return (x - like.mean(0)) / (like.std(0) + 1e-5)


@pytest.mark.parametrize(("n", "d", "l2"), [(60, 8, 1024.0), (60, 8, 0.5), (12, 40, 1024.0), (12, 40, 3.0)],
                         ids=["primal", "primal-weak", "dual", "dual-weak"])
def test_closed_form_equals_scikit_learns_ridge(n, d, l2):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, d) + rng.normal(size=d) * 5  # scaled, off-centre
    labels = np.arange(n) % 4
    x_test = rng.normal(size=(30, d)) * 3
    fitted = fit_least_squares(torch.from_numpy(x), torch.from_numpy(labels), 4, l2)
    targets = 2 * np.eye(4)[labels] - 1  # one-hot in {-1, 1}
    ridge = Ridge(alpha=l2, fit_intercept=True).fit(whiten(x, x), targets)  # an unpenalised intercept
    np.testing.assert_allclose(fitted.weight.numpy(), ridge.coef_.T, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(fitted.bias.numpy(), ridge.intercept_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(fitted.scores(torch.from_numpy(x_test)).numpy(), ridge.predict(whiten(x_test, x)),
                               rtol=1e-7, atol=1e-10)
    for bad in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="l2"):
            fit_least_squares(torch.from_numpy(x), torch.from_numpy(labels), 4, bad)


def test_shots_are_drawn_per_class_seeded_and_nested():
    labels = torch.tensor([0, 1, 2] * 20 + [2] * 5)
    first, again, other = (class_orders(labels, 3, seed) for seed in (0, 0, 1))
    for c, order in enumerate(first):
        assert sorted(order.tolist()) == torch.nonzero(labels == c).flatten().tolist()  # every image of the class
        assert np.array_equal(order, again[c])  # same seed, same draw
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))  # another seed, another


def write_image_folder(root, size=24, per_class=3):
    """train/ and test/ splits of three classes of RGB PNGs at the model's size."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for name in ("ant", "bee", "cat"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png")
    return root


@pytest.fixture
def run_and_folder(tmp_path):
    model = randomize(vitkit.create_model("vit_ti16", image_size=24, patch_size=8, depth=3, num_classes=3))
    model.normalization = IMAGENET
    model.save_pretrained(tmp_path / "run")  # records the normalization, as a training run does
    return model, tmp_path / "run", write_image_folder(tmp_path / "images")


def own_features(model, folder, split, layer, norm=False):
    """Read the PNGs here, normalise them with torchvision, and take the input of the model's head
    (a forward hook) and block `layer`'s tokens."""
    files = sorted((folder / split).glob("*/*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    x = normalize(pixels.float() / 255, list(IMAGENET.mean), list(IMAGENET.std))
    seen = []
    hook = model.head.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
        out = model.forward_intermediates(x, layers=[layer], norm=norm)
    hook.remove()
    labels = torch.tensor([["ant", "bee", "cat"].index(f.parent.name) for f in files])
    return seen[0], torch.cat([out.prefix[0], out.features[0]], dim=1), labels


@pytest.mark.parametrize(("suffix", "norm"), [(".npy", []), (".safetensors", ["--layer-norm"])])
def test_embed_writes_the_models_own_features(run_and_folder, tmp_path, suffix, norm):
    model, run, folder = run_and_folder
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", str(run), str(folder), "--split", "test", "--layer", "1", *norm, "--out", str(out),
                 "--workers", "0"]) == 0
    if suffix == ".npy":  # the labels and tokens beside the features
        got = {k: torch.from_numpy(np.load(tmp_path / f"emb{ext}.npy"))
               for k, ext in (("features", ""), ("labels", ".labels"), ("tokens", ".tokens"))}
    else:
        with safe_open(out, "pt") as f:
            got = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
            assert json.loads(f.metadata()["classes"]) == ["ant", "bee", "cat"]
            assert f.metadata()["layer"] == "1" and f.metadata()["split"] == "test"
    pooled, tokens, labels = own_features(model, folder, "test", 1, norm=bool(norm))
    assert got["features"].shape == (9, 192) and got["tokens"].shape == (9, 1 + 9, 192)
    torch.testing.assert_close(got["features"], pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["tokens"], tokens, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["labels"], labels)


def test_embed_without_layer_and_whole_folder(run_and_folder, tmp_path, capsys):
    model, run, folder = run_and_folder
    out = tmp_path / "train.npy"
    assert main(["embed", str(run), str(folder / "train"), "--out", str(out), "--workers", "0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["split"] == "all" and info["images"] == 9 and info["tokens_shape"] is None
    assert not (tmp_path / "train.tokens.npy").exists()
    pooled, _, labels = own_features(model, folder, "train", 0)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), pooled, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "train.labels.npy")), labels)
    assert main(["embed", str(run), str(folder), "--out", str(out), "--layer", "3"]) == 2  # 3 blocks: 0, 1, 2
    assert "layer 3 is not a block of this 3-block model" in capsys.readouterr().err
    assert main(["embed", str(run), str(folder), "--out", str(tmp_path / "x.txt")]) == 2


def test_fewshot_cli_matches_the_protocol_on_embedded_features(tmp_path, capsys):
    """`vitkit fewshot` on digits equals the documented protocol recomputed here with numpy and
    scikit-learn's Ridge on the features `vitkit embed` writes."""
    model = randomize(vitkit.create_model("vit_ti4_28", image_size=16, depth=1, num_classes=10))
    model.save_pretrained(tmp_path / "run", {"data": "digits"})
    assert main(["fewshot", str(tmp_path / "run"), "--shots", "1,5", "--seeds", "2", "--l2", "100",
                 "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_split"] == "test" and [r["shots"] for r in result["results"]] == [1, 5]
    arrays = {}
    for split in ("train", "test"):
        assert main(["embed", str(tmp_path / "run"), "digits", "--split", split, "--workers", "0",
                     "--out", str(tmp_path / f"{split}.npy")]) == 0
        arrays[split] = np.load(tmp_path / f"{split}.npy"), np.load(tmp_path / f"{split}.labels.npy")
    (x, y), (x_test, y_test) = arrays["train"], arrays["test"]
    assert result["test_images"] == len(y_test) == 360
    for row in result["results"]:
        for seed, reported in enumerate(row["per_seed"]):
            rng = np.random.default_rng(seed)
            chosen = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:row["shots"]] for c in range(10)])
            ridge = Ridge(alpha=100).fit(whiten(x[chosen], x[chosen]), 2 * np.eye(10)[y[chosen]] - 1)
            accuracy = (ridge.predict(whiten(x_test, x[chosen])).argmax(1) == y_test).mean()
            assert abs(reported - accuracy) <= 1 / 360  # features of other batches: a near-tie may flip
        assert row["top1"] == pytest.approx(np.mean(row["per_seed"]))
    capsys.readouterr()
    assert main(["fewshot", str(tmp_path / "run"), "--shots", "1,5", "--seeds", "1", "--workers", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "l2 1024" in table[1] and [line.split()[0] for line in table[3:]] == ["1", "5"]
    assert main(["fewshot", str(tmp_path / "run"), "--shots", "1,x"]) == 2
