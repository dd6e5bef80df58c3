"""The peer libraries' weight files, written here the way each library writes them, and the
check that two models' logits agree: shared by the weights tests and the fine-tuning tests."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

from helpers import hub_cache, randomize
from vitkit.model.normalization import IMAGENET

TINY = dict(embed_dim=32, depth=2, num_heads=4, num_classes=3)  # a timm ViT's size in most tests


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """fp32 logits agree to a relative 1e-5 (a wrong activation or a dropped weight is far above)."""
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() < 1e-5 * max(scale, 1.0)


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


def offline_hub(cache: Path, repo: str, theirs: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, **saved) -> None:
    """`theirs` uploaded to `repo` as timm uploads a model, in a Hugging Face Hub cache at `cache`,
    which huggingface_hub reads offline until the test ends."""
    import huggingface_hub.constants as constants

    hub_cache(cache, repo, lambda folder: save_for_hf(theirs, folder, safe_serialization=True, **saved))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def timm_vit_in_an_offline_hub(cache: Path, repo: str, monkeypatch: pytest.MonkeyPatch):
    """A small timm ViT with random weights, uploaded as timm uploads it (ImageNet statistics in its
    pretrained_cfg) to `repo` in a Hugging Face Hub cache at `cache`, which huggingface_hub reads
    offline until the test ends; returns (cache, the timm model)."""
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5))
    theirs.pretrained_cfg = {"architecture": "vit_custom", "input_size": [3, 32, 32],
                             "mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    offline_hub(cache, repo, theirs, monkeypatch, model_args={"num_heads": 2})
    return cache, theirs
