"""Every value read from a run folder is checked before use: a run's config.json with any field
replaced by any JSON value gives a clean error (exit 2, one line) or a correct answer, never a
traceback, and the answer's JSON never carries NaN or Infinity."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import vitkit
from vitkit.cli import main
from vitkit.model.config import MAX_PARAMETERS, ViTConfig
from vitkit.model.normalization import Normalization

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
TOP = ["classes", "normalize", "data", "recipe", "format", "vit"]
VIT = ["image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes", "in_channels", "pool",
       "class_token", "norm_eps", "patch_embed", "pos_embed", "reg_tokens", "head_dim", "representation_size"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    model = vitkit.create_model("vit_ti4_32", depth=1, num_classes=3, image_size=8)
    model.save_pretrained(root / "run", {"classes": ["a", "b", "c"], "data": "digits"})
    Image.new("RGB", (8, 8), (90, 20, 200)).save(root / "image.png")
    return root, json.loads((root / "run" / "config.json").read_text())


def strict_json(text: str) -> object:
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output")
    return json.loads(text, parse_constant=refuse)


def predict_with(root, good: dict, changes: dict, capsys) -> tuple[int, str, str]:
    """`vitkit predict --json` on the run with its config.json changed: {"FIELD" or "PART.FIELD": value}."""
    config = json.loads(json.dumps(good))
    for field, value in changes.items():
        where, _, name = field.rpartition(".")
        (config[where] if where else config)[name] = value
    (root / "run" / "config.json").write_text(json.dumps(config))
    code = main(["predict", str(root / "run"), str(root / "image.png"), "--json"])
    out, err = capsys.readouterr()
    return code, out, err


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(TOP + [f"vit.{name}" for name in VIT]), value=JSON)
def test_a_malformed_run_config_is_one_line_and_exit_2(run, capsys, field, value):
    code, out, err = predict_with(*run, {field: value}, capsys)
    assert code in (0, 2), (field, value, err)
    assert "Traceback" not in err, (field, value, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1, (field, value, err)
    else:
        assert all(math.isfinite(p["probability"]) for p in strict_json(out)[0]["top"]), (field, value)


@pytest.mark.parametrize(("normalize", "classes"), [
    ({"mean": [float("nan")], "std": [1.0]}, None), ({"mean": [0.5], "std": [float("inf")]}, None),
    ({"mean": [0.5], "std": [0.0]}, None), (None, ["a", "b"]), (None, 7), (None, ["a", "b", 3]),
])
def test_the_findings_each_give_one_line(run, capsys, normalize, classes):
    """What a hostile user tried: NaN or infinite normalization, a classes list shorter than the
    head, classes that are not a list of strings."""
    changes = {"normalize": normalize, "classes": classes}
    code, _, err = predict_with(*run, {k: v for k, v in changes.items() if v is not None}, capsys)
    assert code == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and ("normalization" in err[0] or "classes" in err[0]), err


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    from vitkit.model.cnn import CNN, CNNConfig
    from vitkit.model.native import save_weights

    root = tmp_path_factory.mktemp("cnn")
    config = CNNConfig("resnet18", num_classes=3, image_size=8, small_images=True)
    save_weights(CNN(config).state_dict(), config, root / "run", {"classes": ["a", "b", "c"]})
    Image.new("RGB", (8, 8), (90, 20, 200)).save(root / "image.png")
    return root, json.loads((root / "run" / "config.json").read_text())


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["cnn", "cnn.arch", "cnn.num_classes", "cnn.in_channels", "cnn.image_size",
                              "cnn.small_images", "cnn.unknown"]), value=JSON)
def test_a_malformed_cnn_run_config_is_one_line_and_exit_2(cnn_run, capsys, field, value):
    code, _, err = predict_with(*cnn_run, {field: value}, capsys)
    assert code in (0, 2) and "Traceback" not in err, (field, value, err)
    assert code == 0 or len(err.strip().splitlines()) == 1, (field, value, err)


def test_normalization_flags_must_be_finite_and_positive():
    for spec in ("nan,nan", "0.5,inf", "0.5,0", "0.5,-1"):
        with pytest.raises(ValueError, match="finite"):
            Normalization.parse(spec)


def test_a_model_beyond_the_parameter_bound_is_refused_before_it_is_built():
    with pytest.raises(ValueError, match=r"about 2,749\.0 billion parameters; vitkit builds at most 8 billion"):
        ViTConfig(dim=16384, depth=512, heads=16, mlp_dim=131072)
    giant = vitkit.get_config("vit_b16").replace(dim=1408, depth=40, heads=16, mlp_dim=6144, patch_size=14)  # ViT-g/14
    assert 0.9e9 < giant.approx_parameters < MAX_PARAMETERS
    with torch.device("meta"):
        for name in ("vit_b16", "vit_h14", "deit_b16_distilled", "vit_b16_siglip"):
            config = vitkit.get_config(name)
            assert abs(config.approx_parameters / vitkit.ViT(config).num_parameters() - 1) < 0.01, name


def test_weights_with_nan_are_refused(run, capsys, tmp_path):
    model = vitkit.create_model("vit_ti4_32", depth=1, num_classes=3, image_size=8)
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    model.save_pretrained(tmp_path / "broken", {"classes": ["a", "b", "c"]})
    assert main(["predict", str(tmp_path / "broken"), str(run[0] / "image.png"), "--json"]) == 2
    assert "'head.bias' holds NaN or infinite values" in capsys.readouterr().err
