"""Weights from each peer library, saved the way that library saves them, loaded by vitkit: the
peer's own model is the oracle for the logits."""

import json
import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() < 1e-4 * max(scale, 1.0)


TIMM_CONFIGS = [
    pytest.param(dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, num_classes=5), id="p16"),
    pytest.param(dict(img_size=28, patch_size=14, embed_dim=48, depth=2, num_heads=3, num_classes=4), id="p14"),
    pytest.param(dict(img_size=(64, 96), patch_size=32, embed_dim=64, depth=1, num_heads=2, num_classes=3),
                 id="p32-non-square"),
    pytest.param(dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=6,
                      global_pool="avg", fc_norm=True), id="mean-fc-norm"),
    pytest.param(dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=6,
                      class_token=False, global_pool="avg"), id="no-class-token"),
    pytest.param(dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=2,
                      qkv_bias=False), id="no-qkv-bias"),
]


@pytest.mark.parametrize("kwargs", TIMM_CONFIGS)
def test_timm(tmp_path, kwargs):
    theirs = randomize(VisionTransformer(**kwargs))
    from timm.models._hub import save_for_hf

    theirs.pretrained_cfg = {"architecture": "vit_custom",
                             "input_size": [3, *timm.layers.to_2tuple(kwargs["img_size"])]}
    save_for_hf(theirs, tmp_path, model_args={"num_heads": kwargs["num_heads"]})
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(3, 3, *timm.layers.to_2tuple(kwargs["img_size"]))
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_timm_bare_pth_and_missing_heads(tmp_path):
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=40, depth=1, num_heads=5, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="heads"):
        vitkit.load(tmp_path / "w.pth")
    ours = vitkit.load(tmp_path / "w.pth", heads=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_round_trip_through_timm(tmp_path):
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=7))
    path = vitkit.save(model, tmp_path / "timm", format="timm")
    kwargs = json.loads(path.with_name("config.json").read_text())["model_args"]
    theirs = VisionTransformer(**kwargs).eval()
    from safetensors.torch import load_file

    theirs.load_state_dict(load_file(path))  # strict: every key and shape as timm expects
    back = vitkit.load(tmp_path / "timm")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(theirs(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


HF_CONFIGS = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(qkv_bias=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6), id="tanh-no-bias"),
    pytest.param(dict(image_size=28, patch_size=14, num_channels=1), id="gray-p14"),
]


@pytest.mark.parametrize("overrides", HF_CONFIGS)
def test_hugging_face_classifier(tmp_path, overrides):
    config = transformers.ViTConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=128, image_size=32, patch_size=8, num_labels=5),
                                       **overrides})
    theirs = randomize(transformers.ViTForImageClassification(config))
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    assert ours.config.norm_eps == config.layer_norm_eps
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    with torch.no_grad():
        close(ours(x), theirs(pixel_values=x).logits)


def test_hugging_face_model_with_pooler_is_pre_logits(tmp_path):
    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=96, image_size=32, patch_size=16)
    theirs = randomize(transformers.ViTModel(config))
    theirs.save_pretrained(tmp_path, safe_serialization=False)  # pytorch_model.bin
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(pixel_values=x).pooler_output)


def test_round_trip_through_hugging_face(tmp_path):
    model = randomize(vitkit.create_model("vit_ti16", image_size=32, depth=2, num_classes=3))
    vitkit.save(model, tmp_path / "hf", format="hf", class_names=["a", "b", "c"])
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label[2] == "c"
    back = vitkit.load(tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(theirs(pixel_values=x).logits, model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


@pytest.mark.parametrize("representation", [None, 48])
def test_torchvision(tmp_path, representation):
    theirs = randomize(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5,
        representation_size=representation))
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    ours = vitkit.load(tmp_path / "vit.pth", heads=4).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_torchvision_paper_size_needs_no_heads(tmp_path):
    theirs = randomize(torchvision.models.vit_b_32(image_size=64, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "b32.pth")
    ours = vitkit.load(tmp_path / "b32.pth").eval()
    assert ours.config.heads == 12
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_vit_pytorch_file(tmp_path):
    import vit_pytorch

    theirs = randomize(vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=4, dim=48, depth=2, heads=3,
                                       mlp_dim=96, dim_head=24))
    torch.save(theirs.state_dict(), tmp_path / "vp.pt")
    ours = vitkit.load(tmp_path / "vp.pt", heads=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def flax_npz(model: torchvision.models.VisionTransformer, heads: int, path, big_vision: bool = False):
    """Write a torchvision ViT's weights with the official Flax names and layouts."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = s["conv_proj.weight"].shape[0]
    out = {"embedding/kernel": s["conv_proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
           "embedding/bias": s["conv_proj.bias"], "cls": s["class_token"],
           "Transformer/posembed_input/pos_embedding": s["encoder.pos_embedding"],
           "Transformer/encoder_norm/scale": s["encoder.ln.weight"],
           "Transformer/encoder_norm/bias": s["encoder.ln.bias"],
           "head/kernel": s["heads.head.weight"].T, "head/bias": s["heads.head.bias"]}
    if "heads.pre_logits.weight" in s:
        out["pre_logits/kernel"], out["pre_logits/bias"] = s["heads.pre_logits.weight"].T, s["heads.pre_logits.bias"]
    names = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
        ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    i = 0
    while f"encoder.layers.encoder_layer_{i}.ln_1.weight" in s:
        src, dst = f"encoder.layers.encoder_layer_{i}.", f"Transformer/encoderblock_{i}/"
        n1, attn, n2, mlp = (dst + n for n in names)
        out[n1 + "/scale"], out[n1 + "/bias"] = s[src + "ln_1.weight"], s[src + "ln_1.bias"]
        out[n2 + "/scale"], out[n2 + "/bias"] = s[src + "ln_2.weight"], s[src + "ln_2.bias"]
        w, b = s[src + "self_attention.in_proj_weight"], s[src + "self_attention.in_proj_bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{attn}/{name}/kernel"] = w[j * dim:(j + 1) * dim].T.reshape(dim, heads, dim // heads)
            out[f"{attn}/{name}/bias"] = b[j * dim:(j + 1) * dim].reshape(heads, dim // heads)
        out[f"{attn}/out/kernel"] = s[src + "self_attention.out_proj.weight"].T.reshape(heads, dim // heads, dim)
        out[f"{attn}/out/bias"] = s[src + "self_attention.out_proj.bias"]
        out[mlp + "/Dense_0/kernel"], out[mlp + "/Dense_0/bias"] = s[src + "mlp.0.weight"].T, s[src + "mlp.0.bias"]
        out[mlp + "/Dense_1/kernel"], out[mlp + "/Dense_1/bias"] = s[src + "mlp.3.weight"].T, s[src + "mlp.3.bias"]
        i += 1
    if big_vision:
        out = {"params/" + k: v for k, v in out.items()}
    np.savez(path, **out)


@pytest.mark.parametrize(("representation", "big_vision"), [(None, False), (32, False), (None, True)])
def test_jax_npz(tmp_path, representation, big_vision):
    source = randomize(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5,
        representation_size=representation))
    flax_npz(source, 4, tmp_path / "vit.npz", big_vision)
    ours = vitkit.load(tmp_path / "vit.npz").eval()
    assert ours.config.heads == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), source(x))
    if representation is None and not big_vision:  # timm's own npz loader reads the same file
        theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                   mlp_ratio=2, num_classes=5).eval()
        theirs.load_pretrained(str(tmp_path / "vit.npz"))
        with torch.no_grad():
            close(ours(x), theirs(x))


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(1), "evil": RunsCode()}, tmp_path / "evil.pth", pickle_module=pickle)
    with pytest.raises(ValueError, match="refusing to load"):
        vitkit.load(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays"):
        vitkit.load(tmp_path / "obj.npz")


def test_truncated_file_names_the_file(tmp_path):
    model = vitkit.create_model("vit_ti4_32", depth=1)
    model.save_pretrained(tmp_path / "m")
    vitkit.save(model, tmp_path / "t.safetensors", format="timm")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.safetensors"):
        vitkit.load(tmp_path / "t.safetensors")


def test_mismatched_shapes_are_named(tmp_path):
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3)
    state = theirs.state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(100, 64\)"):
        vitkit.load(tmp_path / "bad.pth", heads=4)


def test_load_into_other_size_and_class_count(tmp_path, caplog):
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    ours = vitkit.load(tmp_path / "w.pth", heads=4, image_size=64, num_classes=10)
    assert ours.pos_embed.shape == (1, 1 + 64, 64) and ours.head.out_features == 10
    assert "new head for 10 classes" in caplog.text


def test_wrong_format_named_by_the_user_is_explained(tmp_path):
    """Found by the CLI fuzzer: `convert --from jax` on timm weights used to raise a KeyError."""
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3)
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    for fmt in ("jax", "hf", "torchvision", "vit-pytorch"):
        with pytest.raises(ValueError, match=f"not (in the|a) {fmt}|config.json"):
            vitkit.load(tmp_path / "w.pth", format=fmt, heads=4, image_size=32)
