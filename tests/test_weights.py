"""Weights from each peer library, saved the way that library saves them, loaded by vitkit: the
peer's own model is the oracle for the logits."""

import json
import pickle
import re

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import hub_cache, randomize
from vitkit.model.normalization import HALF, IMAGENET, Normalization


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """fp32 logits agree to a relative 1e-5 (a wrong activation or a dropped weight is far above)."""
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() < 1e-5 * max(scale, 1.0)


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
        close(model(x), theirs(x))  # not bit for bit: vitkit's last block runs for the class token alone
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
    for layer in source.encoder.layers:  # flax's nn.gelu is the tanh approximation
        layer.mlp[1] = torch.nn.GELU(approximate="tanh")
    flax_npz(source, 4, tmp_path / "vit.npz", big_vision)
    ours = vitkit.load(tmp_path / "vit.npz").eval()
    assert ours.config.heads == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), source(x))
    if representation is None and not big_vision:  # timm's own npz loader reads the same file
        theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                   mlp_ratio=2, num_classes=5, act_layer="gelu_tanh").eval()
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


def test_loaded_models_come_ready_to_predict(tmp_path):
    """A run's weights may carry patch dropout: `load` gives eval mode, so predictions are fixed."""
    model = randomize(vitkit.create_model("vit_ti4_32", depth=1, patch_dropout=0.5))
    model.save_pretrained(tmp_path / "m")
    vitkit.save(model, tmp_path / "t.safetensors", format="timm")
    x = torch.randn(2, 3, 32, 32)
    for loaded in (vitkit.load(tmp_path / "m"), vitkit.load(tmp_path / "t.safetensors")):
        assert not loaded.training
        torch.testing.assert_close(loaded(x), loaded(x))


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


# -- the ViT family from timm: registers, DeiT, CLIP, SigLIP, layer scale, qk-norm -------------------
TINY = dict(embed_dim=32, depth=2, num_heads=4, num_classes=3)
TIMM_FAMILY = [  # (timm model name or None for VisionTransformer, kwargs, image size)
    pytest.param("vit_small_patch14_reg4_dinov2", {}, 28, id="dinov2-reg4"),
    pytest.param("vit_base_patch16_reg4_gap_256", {}, 32, id="reg4-gap-no-class-token"),
    pytest.param("deit_tiny_distilled_patch16_224", {}, 32, id="deit-distilled"),
    pytest.param("vit_base_patch16_clip_224", {}, 32, id="clip-pre-norm-eps-1e-5"),
    pytest.param("vit_base_patch16_siglip_224", {}, 32, id="siglip-map"),
    pytest.param("vit_base_patch32_siglip_256", {}, 64, id="siglip-gelu-tanh-by-name"),
    pytest.param(None, dict(patch_size=8, qk_norm=True, init_values=0.1), 32, id="qk-norm-layer-scale"),
    pytest.param(None, dict(patch_size=8, act_layer="gelu_tanh", pre_norm=True), 32, id="gelu-tanh-pre-norm"),
    pytest.param(None, dict(patch_size=8, global_pool="map", reg_tokens=2, no_embed_class=True), (32, 48),
                 id="map-with-class-and-registers-non-square"),
    pytest.param(None, dict(patch_size=8, global_pool="avg", fc_norm=False), 32, id="avg-without-fc-norm"),
]


def timm_model(name, kwargs, image_size):
    """A timm model with random weights: from its own factory by name, or VisionTransformer. The
    embeddings are small, so that a wrong LayerNorm eps shows in the logits."""
    if name:
        model = randomize(timm.create_model(name, pretrained=False, img_size=image_size, **TINY, **kwargs))
    else:
        model = randomize(VisionTransformer(img_size=image_size, **TINY, **kwargs))
    with torch.no_grad():
        for p in model.patch_embed.parameters():
            p.mul_(1e-3)
        model.pos_embed.mul_(1e-3)
    if name:
        return model
    model.pretrained_cfg = {"architecture": "vit_custom", "input_size": [3, *timm.layers.to_2tuple(image_size)]}
    return model


@pytest.mark.parametrize(("name", "kwargs", "image_size"), TIMM_FAMILY)
def test_timm_family(tmp_path, name, kwargs, image_size):
    from timm.models._hub import save_for_hf

    theirs = timm_model(name, kwargs, image_size)
    save_for_hf(theirs, tmp_path, model_args={**TINY, **kwargs})  # what timm writes, as timm writes it
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, *timm.layers.to_2tuple(image_size))
    with torch.no_grad():
        close(ours(x), theirs(x))


@pytest.mark.parametrize(("name", "kwargs", "image_size"), TIMM_FAMILY)
def test_timm_family_round_trip(tmp_path, name, kwargs, image_size):
    """vitkit -> timm: the written kwargs build timm's model, which loads the file strictly and computes
    the same logits; and back. CLIP's LayerNorm eps (1e-5) is a norm_layer partial in timm, which
    model_args (JSON) cannot hold: saving it refuses with the reason."""
    from safetensors.torch import load_file
    from timm.models._hub import save_for_hf
    from timm.models.deit import VisionTransformerDistilled

    source = timm_model(name, kwargs, image_size)
    save_for_hf(source, tmp_path / "source", model_args={**TINY, **kwargs})
    model = vitkit.load(tmp_path / "source").eval()
    if name and "clip" in name:
        with pytest.raises(ValueError, match="LayerNorm eps 1e-6"):
            vitkit.save(model, tmp_path / "timm", format="timm")
        return
    path = vitkit.save(model, tmp_path / "timm", format="timm")
    written = json.loads(path.with_name("config.json").read_text())
    cls = VisionTransformerDistilled if written["architecture"].endswith("distilled") else VisionTransformer
    theirs = cls(**written["model_args"]).eval()
    theirs.load_state_dict(load_file(path))
    x = torch.randn(2, 3, *timm.layers.to_2tuple(image_size))
    with torch.no_grad():
        close(model(x), theirs(x))
        close(model(x), source(x))
    back = vitkit.load(tmp_path / "timm")
    assert back.config == model.config


def test_deit_training_mode_gives_both_logits(tmp_path):
    from timm.models._hub import save_for_hf

    theirs = timm_model("deit_tiny_distilled_patch16_224", {}, 32)
    save_for_hf(theirs, tmp_path)
    ours = vitkit.load(tmp_path).train()
    theirs.set_distilled_training(True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (logits, dist), (their_logits, their_dist) = ours(x), theirs.train()(x)
    close(logits, their_logits)
    close(dist, their_dist)


@pytest.mark.parametrize(("config", "pool"), [
    ({"global_pool": "avg"}, "mean"), ({"model_args": {"global_pool": "map"}}, "map"),
    ({"global_pool": "avg", "model_args": {"global_pool": "token"}}, "cls"),
])
def test_timm_pooling_is_read_not_guessed(config, pool):
    from vitkit.weights.timm import hints_from_config

    assert hints_from_config(config)["pool"] == pool


@pytest.mark.parametrize("pool", ["avgmax", "", "max"])
def test_timm_pooling_vitkit_cannot_express_is_refused(tmp_path, pool):
    from timm.models._hub import save_for_hf

    theirs = timm_model(None, dict(patch_size=8, global_pool=pool), 32)
    save_for_hf(theirs, tmp_path, model_args={**TINY, "global_pool": pool})
    with pytest.raises(ValueError, match=f"global_pool='{pool}'"):
        vitkit.load(tmp_path)


def test_non_square_timm_at_its_own_size(tmp_path):
    """No config.json: the grid of the size asked for has as many positions, so it is the source's."""
    theirs = randomize(VisionTransformer(img_size=(48, 80), patch_size=16, **TINY))
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    ours = vitkit.load(tmp_path / "w.pth", image_size=(48, 80), heads=4).eval()
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="source_image_size"):  # 15 positions: 3x5 or 5x3? not guessed
        vitkit.load(tmp_path / "w.pth", image_size=(96, 160), heads=4)


def test_non_square_grid_is_resampled_from_the_recorded_size(tmp_path):
    """A 5x3 grid (80x48 images) to 96x160: the old aspect-ratio guess took the source for 3x5."""
    from timm.models._hub import save_for_hf

    theirs = timm_model(None, dict(patch_size=16, reg_tokens=1), (80, 48))
    save_for_hf(theirs, tmp_path, model_args=TINY)
    ours = vitkit.load(tmp_path, image_size=(96, 160)).eval()
    theirs.set_input_size((96, 160))  # timm resamples from its own grid
    torch.testing.assert_close(ours.pos_embed, theirs.pos_embed)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        close(ours(x), theirs(x))


def big_vision_npz(model: VisionTransformer, path) -> None:
    """Write a timm ViT in big_vision's layout: `params/`, Flax kernels, a top-level position table
    without a class-token row, `MAPHead_0` for attention pooling."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim, heads = s["patch_embed.proj.weight"].shape[0], model.blocks[0].attn.num_heads
    out = {"embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": s["patch_embed.proj.bias"], "pos_embedding": s["pos_embed"],
           "Transformer/encoder_norm/scale": s["norm.weight"], "Transformer/encoder_norm/bias": s["norm.bias"],
           "head/kernel": s["head.weight"].T, "head/bias": s["head.bias"]}
    if "cls_token" in s:
        out["cls"] = s["cls_token"]

    def attention(dst, names, weight, bias, proj):
        for name, w, b in zip(names, np.split(weight, len(names)), np.split(bias, len(names)), strict=True):
            out[f"{dst}/{name}/kernel"] = w.T.reshape(dim, heads, dim // heads)
            out[f"{dst}/{name}/bias"] = b.reshape(heads, dim // heads)
        out[f"{dst}/out/kernel"] = s[proj + ".weight"].T.reshape(heads, dim // heads, dim)
        out[f"{dst}/out/bias"] = s[proj + ".bias"]

    def layer(dst, src, to="scale"):
        out[f"{dst}/{to}"], out[f"{dst}/bias"] = s[src + ".weight"].T, s[src + ".bias"]

    for i in range(len(model.blocks)):
        src, dst = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        attention(dst + "MultiHeadDotProductAttention_0", ("query", "key", "value"), s[src + "attn.qkv.weight"],
                  s[src + "attn.qkv.bias"], src + "attn.proj")
        layer(dst + "LayerNorm_0", src + "norm1")
        layer(dst + "LayerNorm_1", src + "norm2")
        layer(dst + "MlpBlock_0/Dense_0", src + "mlp.fc1", "kernel")
        layer(dst + "MlpBlock_0/Dense_1", src + "mlp.fc2", "kernel")
    if model.attn_pool is not None:
        out["MAPHead_0/probe"] = s["attn_pool.latent"]
        attention("MAPHead_0/MultiHeadDotProductAttention_0", ("query",), s["attn_pool.q.weight"],
                  s["attn_pool.q.bias"], "attn_pool.proj")
        attention("MAPHead_0/MultiHeadDotProductAttention_0", ("key", "value"), s["attn_pool.kv.weight"],
                  s["attn_pool.kv.bias"], "attn_pool.proj")
        layer("MAPHead_0/LayerNorm_0", "attn_pool.norm")
        layer("MAPHead_0/MlpBlock_0/Dense_0", "attn_pool.mlp.fc1", "kernel")
        layer("MAPHead_0/MlpBlock_0/Dense_1", "attn_pool.mlp.fc2", "kernel")
    np.savez(path, **{"params/" + k: v for k, v in out.items()})


@pytest.mark.parametrize(("kwargs", "image_size"), [
    pytest.param(dict(global_pool="token", no_embed_class=True), 32, id="tok-no-class-row"),
    pytest.param(dict(global_pool="avg", fc_norm=False, class_token=False), 32, id="gap"),
    pytest.param(dict(global_pool="map", class_token=False), 32, id="map"),
    pytest.param(dict(global_pool="map", class_token=False), (32, 48), id="map-non-square"),
])
def test_big_vision_npz(tmp_path, kwargs, image_size):
    theirs = randomize(VisionTransformer(img_size=image_size, patch_size=8, **TINY, act_layer="gelu_tanh", **kwargs))
    big_vision_npz(theirs, tmp_path / "bv.npz")
    check = VisionTransformer(img_size=image_size, patch_size=8, **TINY, act_layer="gelu_tanh", **kwargs)
    check.load_pretrained(str(tmp_path / "bv.npz"))  # timm's big_vision reader gets the same weights back
    for key, value in theirs.state_dict().items():
        assert torch.equal(check.state_dict()[key], value), key
    if isinstance(image_size, tuple):
        with pytest.raises(ValueError, match="source_image_size"):
            vitkit.load(tmp_path / "bv.npz")
    ours = vitkit.load(tmp_path / "bv.npz", source_image_size=image_size).eval()
    assert ours.config.act == "gelu-tanh"
    x = torch.randn(2, 3, *timm.layers.to_2tuple(image_size))
    with torch.no_grad():
        close(ours(x), theirs(x))


def with_extra_key(tmp_path, fmt):
    """A valid file of each format plus one weight that no converter knows; the load arguments."""
    if fmt == "hf":
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
        from safetensors.torch import load_file, save_file

        state = load_file(tmp_path / "model.safetensors")
        save_file({**state, "vit.encoder.layer.0.surprise.weight": torch.ones(2)}, tmp_path / "model.safetensors")
        return tmp_path, {}, "vit.encoder.layer.0.surprise.weight"
    if fmt == "vit-pytorch":
        import vit_pytorch

        state = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=4,
                                mlp_dim=64).state_dict()
        args = {"heads": 4, "image_size": 32}
    elif fmt == "jax":
        source = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3)
        flax_npz(source, 4, tmp_path / "w.npz")
        state = dict(np.load(tmp_path / "w.npz"))
        extra = "Transformer/encoderblock_0/LayerScale_0/scale"
        np.savez(tmp_path / "w.npz", **state, **{extra: np.ones(32, np.float32)})
        return tmp_path / "w.npz", {}, extra
    elif fmt == "torchvision":
        state = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3).state_dict()
        args = {"heads": 4}
    else:
        state = VisionTransformer(img_size=32, patch_size=8, **TINY).state_dict()
        args = {"heads": 4}
    torch.save({**state, "surprise": torch.ones(2)}, tmp_path / "w.pth")
    return tmp_path / "w.pth", args, "surprise"


@pytest.mark.parametrize("fmt", ["timm", "hf", "torchvision", "jax", "vit-pytorch"])
def test_every_weight_is_converted_or_the_load_fails(tmp_path, fmt):
    path, args, extra = with_extra_key(tmp_path, fmt)
    with pytest.raises(ValueError, match=re.escape(repr(extra))):
        vitkit.load(path, **args)


def test_weights_by_name_from_the_hub_cache(tmp_path, monkeypatch):
    """Offline: a Hugging Face Hub cache laid out as huggingface_hub keeps it, holding what timm uploads
    for the repository that the name resolves to."""
    import huggingface_hub.constants as hub
    from timm.models._hub import save_for_hf

    theirs = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    hub_cache(tmp_path, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
              lambda folder: save_for_hf(theirs, folder, safe_serialization=True))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    ours = vitkit.create_model("vit_ti16", pretrained="augreg_in21k_ft_in1k").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        close(ours(x), theirs(x))
    assert vitkit.create_model("vit_ti16", pretrained="augreg_in21k_ft_in1k", num_classes=10).head.out_features == 10
    by_name = vitkit.load("vit_ti16:augreg_in21k_ft_in1k").eval()  # what --init, convert, fewshot, ... take
    with torch.no_grad():
        close(by_name(x), theirs(x))
    with pytest.raises(ValueError, match="no pretrained weights 'nope' for vit_ti16"):
        vitkit.load("vit_ti16:nope")
    tiny = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    monkeypatch.setitem(vitkit.weights.hub.PRETRAINED, "vit_s16", {"wrong": tiny})  # a table entry in error
    with pytest.raises(ValueError, match="differ from the preset"):
        vitkit.create_model("vit_s16", pretrained="wrong")


# -- the family from Hugging Face transformers ---------------------------------------------------------
HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
HF_FAMILY = [  # (model class, config), what the model computes that vitkit computes
    pytest.param(transformers.DeiTForImageClassificationWithTeacher,
                 transformers.DeiTConfig(**HF_SMALL, intermediate_size=64, num_labels=3), "logits", id="deit"),
    pytest.param(transformers.Dinov2Model, transformers.Dinov2Config(**HF_SMALL), "pooler_output", id="dinov2"),
    pytest.param(transformers.Dinov2WithRegistersModel,
                 transformers.Dinov2WithRegistersConfig(**HF_SMALL, num_register_tokens=4), "pooler_output",
                 id="dinov2-registers"),
    pytest.param(transformers.SiglipVisionModel, transformers.SiglipVisionConfig(**HF_SMALL, intermediate_size=64),
                 "pooler_output", id="siglip"),
    pytest.param(transformers.CLIPVisionModel,
                 transformers.CLIPVisionConfig(**HF_SMALL, intermediate_size=64, hidden_act="gelu"),
                 "pooler_output", id="clip"),
]


@pytest.mark.parametrize(("cls", "config", "output"), HF_FAMILY)
def test_hugging_face_family(tmp_path, cls, config, output):
    theirs = randomize(cls(config))
    with torch.no_grad():
        for name, p in theirs.named_parameters():  # small embeddings: a wrong LayerNorm eps shows
            if "patch_embedding" in name or "position_embedding" in name:
                p.mul_(1e-3)
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), getattr(theirs(pixel_values=x), output))


def test_siglip_image_tower_of_a_two_tower_model(tmp_path):
    config = transformers.SiglipConfig(vision_config=dict(**HF_SMALL, intermediate_size=64),
                                       text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                        intermediate_size=64, vocab_size=50))
    theirs = randomize(transformers.SiglipModel(config))
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs.vision_model(pixel_values=x).pooler_output)


# -- the input normalization travels with the weights ----------------------------------------------------
def weights_without_normalization(tmp_path, fmt):
    """A file of each format that records no normalization, and the load arguments."""
    if fmt == "vit-pytorch":
        import vit_pytorch

        state = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=4,
                                mlp_dim=64).state_dict()
        torch.save(state, tmp_path / "w.pt")
        return tmp_path / "w.pt", {"heads": 4, "image_size": 32}
    if fmt == "jax":
        flax_npz(torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3), 4, tmp_path / "w.npz")
        return tmp_path / "w.npz", {}
    if fmt == "torchvision":
        state = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3).state_dict()
    elif fmt == "hf":
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
        return tmp_path, {}
    elif fmt == "deit":
        state = timm.models.deit.VisionTransformerDistilled(img_size=32, patch_size=8, **TINY).state_dict()
    else:
        state = VisionTransformer(img_size=32, patch_size=8, **TINY).state_dict()
    torch.save(state, tmp_path / "w.pth")
    return tmp_path / "w.pth", {"heads": 4}


@pytest.mark.parametrize(("fmt", "expected"), [("timm", "half"), ("deit", "imagenet"), ("hf", "half"),
                                               ("torchvision", "imagenet"), ("jax", "half"), ("vit-pytorch", "half")])
def test_each_source_gets_its_known_normalization_and_says_so(tmp_path, caplog, fmt, expected):
    path, args = weights_without_normalization(tmp_path, fmt)
    with caplog.at_level("INFO", logger="vitkit"):
        model = vitkit.load(path, **args)
    assert model.normalization == Normalization.parse(expected)
    said = [r.getMessage() for r in caplog.records if "do not record their input normalization" in r.getMessage()]
    assert len(said) == 1 and f"assuming {expected}" in said[0] and "--normalize" in said[0]
    caplog.clear()
    assert vitkit.load(path, **args, normalize="0.2,0.3").normalization == Normalization((0.2,), (0.3,))
    assert not caplog.records  # the caller's choice needs no word


def small_timm_dir(tmp_path, config_json):
    theirs = VisionTransformer(img_size=32, patch_size=8, **TINY)
    from safetensors.torch import save_file

    tmp_path.mkdir()
    save_file(theirs.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_args": {"num_heads": 4}, **config_json}))
    return tmp_path


def test_timm_normalization_from_config_json_then_timm_registry(tmp_path, caplog):
    caplog.set_level("INFO", logger="vitkit")
    cfg = {"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    model = vitkit.load(small_timm_dir(tmp_path / "a", cfg))
    assert model.normalization == Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert not caplog.records  # recorded: nothing to say
    model = vitkit.load(small_timm_dir(tmp_path / "half", {"pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    assert model.normalization == HALF and model.normalization.describe() == "half"
    # no mean/std in config.json: the architecture's own pretrained_cfg from timm's registry
    registered = timm.models.get_pretrained_cfg("deit_tiny_patch16_224")
    model = vitkit.load(small_timm_dir(tmp_path / "b", {"architecture": "deit_tiny_patch16_224"}))
    assert model.normalization == Normalization.parse({"mean": registered.mean, "std": registered.std}) == IMAGENET
    assert "timm's registry" in caplog.text
    model = vitkit.load(small_timm_dir(tmp_path / "c", {"architecture": "vit_base_patch16_clip_224",
                                                        "pretrained_cfg": {"tag": "openai"}}))
    clip = timm.models.get_pretrained_cfg("vit_base_patch16_clip_224.openai")
    assert model.normalization == Normalization(clip.mean, clip.std)


def test_hugging_face_preprocessor_config_gives_what_its_image_processor_computes(tmp_path):
    weights_without_normalization(tmp_path, "hf")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    for kwargs in (dict(image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.2, 0.1]),
                   dict(image_mean=[0.5] * 3, image_std=[0.25] * 3, rescale_factor=1 / 127.5),
                   dict(do_normalize=False, rescale_factor=1 / 127.5),
                   dict(do_rescale=False, image_mean=[100] * 3, image_std=[50] * 3)):
        processor = transformers.ViTImageProcessor(do_resize=False, **kwargs)
        processor.save_pretrained(tmp_path)
        model = vitkit.load(tmp_path)
        want = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
        torch.testing.assert_close(model.normalization(pixels, 3), want, rtol=1e-5, atol=1e-5)
    deit = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   image_size=32, patch_size=8, num_labels=3)
    transformers.DeiTForImageClassificationWithTeacher(deit).save_pretrained(tmp_path / "deit")
    assert vitkit.load(tmp_path / "deit").normalization == IMAGENET  # facebook/deit-*'s published value


@pytest.mark.parametrize("fmt", ["hf", "timm", "vitkit"])
def test_saved_weights_carry_the_normalization(tmp_path, fmt):
    model = randomize(vitkit.create_model("vit_ti16", image_size=32, depth=1, num_classes=3))
    model.normalization = Normalization((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    vitkit.save(model, tmp_path / fmt, format=fmt)
    assert vitkit.load(tmp_path / fmt).normalization == model.normalization
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = model.normalization(torch.from_numpy(image).permute(2, 0, 1)[None], 3)
    if fmt == "hf":  # what Hugging Face's own processor makes of the file
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / fmt)
        got = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if fmt == "timm":  # and timm's data config
        kwargs = json.loads((tmp_path / fmt / "config.json").read_text())
        theirs = VisionTransformer(**kwargs["model_args"])
        theirs.pretrained_cfg = kwargs["pretrained_cfg"]
        data = timm.data.resolve_data_config({}, model=theirs)
        assert (tuple(data["mean"]), tuple(data["std"])) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))


def test_vitkit_directory_without_a_recorded_normalization_says_what_it_assumes(tmp_path, caplog):
    from vitkit.model.native import save_weights

    model = vitkit.create_model("vit_ti4_32", depth=1)
    save_weights(model.state_dict(), model.config, tmp_path)  # as vitkit wrote runs before it recorded one
    with caplog.at_level("INFO", logger="vitkit"):
        assert vitkit.load(tmp_path).normalization == HALF
    assert "does not record its input normalization" in caplog.text and "assuming half" in caplog.text
