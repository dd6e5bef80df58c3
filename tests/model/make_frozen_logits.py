"""Writes frozen_logits.safetensors, beside this file: for a few small configs that together cover
the model's options, the weights, fixed inputs and the fp32 logits that `vitkit.ViT` computes on
them today. tests/model/test_frozen_logits.py checks that the model still computes those logits.

Run it (`python tests/model/make_frozen_logits.py`) only when a numerical change is intended (a
corrected formula, a new default that changes what a config computes), say so in the commit, and
never to make the test pass after a change that was not meant to move the numbers.

The weights and inputs are drawn here from a fixed seed and stored, so the file does not depend on
how vitkit or torch initialise a model. They are stored in float16 (values that float16 holds
exactly, half the size) and computed with in float32. The patch projection is scaled down, so
that the patch tokens entering the first LayerNorm are small and its eps shows in the logits.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vitkit import ViT, ViTConfig

FILE = Path(__file__).with_name("frozen_logits.safetensors")
COMMON = dict(patch_size=4, dim=12, depth=2, heads=2, mlp_dim=24)
CONFIGS = {
    # the paper's ViT: class token, learned positions, conv patches; DeiT's distillation token
    # and head; a non-square image
    "cls-conv-distilled": dict(COMMON, image_size=(16, 24), num_classes=10, distilled=True),
    # registers, attention pooling (MAP), qk-norm, layer scale, CLIP's pre-norm, gelu-tanh, eps 1e-5,
    # positions for the patches only, a pre-logits layer, no bias in the patch projection
    "map-registers-qknorm": dict(COMMON, image_size=16, heads=3, num_classes=7, class_token=False, pool="map",
                                 reg_tokens=2, qk_norm=True, init_values=0.1, act="gelu-tanh", pre_norm=True,
                                 no_embed_class=True, norm_eps=1e-5, representation_size=12),
    # Xiao et al.'s conv stem, no class token, mean pooling with fc_norm, no qkv bias, one channel
    "convstem-mean": dict(COMMON, image_size=16, in_channels=1, num_classes=5, class_token=False, pool="mean",
                          fc_norm=True, qkv_bias=False, patch_embed="conv-stem"),
    # the write-up's code: LayerNorm-linear-LayerNorm patches, fixed 2-D sincos positions, the mean
    # of every token (the class token's too), heads of 8 (inner width 16, not the model's 12)
    "writeup-sincos": dict(COMMON, image_size=16, head_dim=8, num_classes=6, patch_embed="linear-ln",
                           pos_embed="sincos2d", pool="mean-all"),
}
BATCH = 2


def weights(model: ViT, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every parameter drawn at the scale a trained model has: LayerNorm weights around 1, matrices
    scaled by their fan-in, biases, tokens and layer scales around 0.2; float16 values."""
    norms = {f"{name}.{p}" for name, m in model.named_modules() if "Norm" in type(m).__name__
             for p, _ in m.named_parameters(recurse=False)}
    out = {}
    for name, p in model.state_dict().items():
        draw = torch.randn(p.shape, generator=generator)
        if name in norms:
            value = (1 + 0.2 * draw) if name.endswith("weight") else 0.2 * draw
        elif name.endswith("weight") and p.dim() >= 2:
            value = draw * p[0].numel() ** -0.5
        else:  # biases, tokens, position tables, layer scales, the MAP head's probe
            value = 0.2 * draw
        if name.startswith("patch_embed.proj.") or name == "pos_embed":
            value = value * 1e-3
        out[name] = value.half()
    return out


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    tensors, configs = {}, {}
    for name, fields in CONFIGS.items():
        config = ViTConfig(**fields)
        model = ViT(config).eval()
        state = weights(model, generator)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        x = torch.randn(BATCH, config.in_channels, *config.image_hw, generator=generator).half()
        with torch.no_grad():
            logits = model(x.float())
        configs[name] = config.to_dict()
        tensors.update({f"{name}.{k}": v for k, v in state.items()})
        tensors[f"{name}:inputs"] = x
        tensors[f"{name}:logits"] = logits.contiguous()
    # one metadata entry: safetensors writes several in no fixed order, and the file would change each run
    save_file(tensors, FILE, metadata={"frozen_logits": json.dumps({"configs": configs, "torch": torch.__version__})})
    print(f"wrote {FILE} ({FILE.stat().st_size // 1024} KB): {', '.join(configs)}")


if __name__ == "__main__":
    main()
