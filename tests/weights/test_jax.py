"""JAX checkpoints: the official ViT's Flax .npz (with or without pre-logits) and big_vision's
(`params/`, a MAP head, positions without a class-token row), written here from a torchvision or
timm model in those layouts, load into vitkit and compute the source model's logits; timm's own
npz reader reads the same files."""

import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize
from peers import TINY, close, flax_npz


@pytest.mark.parametrize(("representation", "big_vision"), [(None, False), (32, False), (None, True)])
def test_official_flax_npz_gives_its_source_models_logits_and_timm_reads_it_alike(tmp_path, representation, big_vision):
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
def test_big_vision_npz_gives_timms_logits_in_vitkit(tmp_path, kwargs, image_size):
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
