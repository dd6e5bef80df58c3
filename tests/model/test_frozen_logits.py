"""Frozen logits: small models whose weights, inputs and fp32 logits are stored beside this file
(frozen_logits.safetensors, written by make_frozen_logits.py) still compute those logits. Any
change to what the model computes fails here, intended or not: a LayerNorm eps, the attention
scale, a position table, the order of tokens, the pooling. When a change is intended, rerun the
generator and say why in the commit; the configs cover class and distillation tokens, registers,
attention pooling, qk-norm, layer scale, pre-norm, the conv stem, mean pooling with fc_norm, the
write-up's LayerNorm-linear-LayerNorm patches and 2-D sincos positions."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vitkit import ViT, ViTConfig

FILE = Path(__file__).with_name("frozen_logits.safetensors")
TOLERANCE = 1e-5  # of the largest logit: fp32 reorderings are ~1e-7, any real change far above


def frozen() -> dict[str, dict]:
    """Each stored config: its fields, weights (float16 values, computed with in float32), inputs, logits."""
    with safe_open(FILE, "pt") as f:
        configs = json.loads(f.metadata()["frozen_logits"])["configs"]
    tensors = load_file(FILE)
    return {name: {"config": fields,
                   "weights": {k.removeprefix(name + "."): v.float() for k, v in tensors.items()
                               if k.startswith(name + ".")},
                   "inputs": tensors[f"{name}:inputs"].float(), "logits": tensors[f"{name}:logits"]}
            for name, fields in configs.items()}


FROZEN = frozen()


@pytest.mark.parametrize("name", FROZEN)
def test_the_model_still_computes_the_frozen_logits(name):
    case = FROZEN[name]
    model = ViT(ViTConfig.from_dict(case["config"]))
    model.load_state_dict(case["weights"])  # strict: every stored weight has its place, and no other
    with torch.no_grad():
        logits = model.eval()(case["inputs"])
    want = case["logits"]
    assert logits.shape == want.shape
    error = ((logits - want).abs().max() / want.abs().max()).item()
    assert error < TOLERANCE, f"{name}: the logits moved by {error:.2e} of the largest one"


def test_the_frozen_configs_cover_the_models_options():
    """What the file must keep covering, should it be regenerated with other configs."""
    configs = [ViTConfig.from_dict(case["config"]) for case in FROZEN.values()]
    covered = {(field, getattr(c, field)) for c in configs for field in ViTConfig.__dataclass_fields__}
    for option in [("patch_embed", "conv"), ("patch_embed", "linear-ln"), ("patch_embed", "conv-stem"),
                   ("pool", "cls"), ("pool", "mean"), ("pool", "mean-all"), ("pool", "map"),
                   ("pos_embed", "learned"), ("pos_embed", "sincos2d"), ("class_token", False),
                   ("distilled", True), ("qk_norm", True), ("pre_norm", True), ("fc_norm", True),
                   ("no_embed_class", True), ("qkv_bias", False), ("act", "gelu-tanh"), ("act", "gelu")]:
        assert option in covered, option
    assert any(c.reg_tokens for c in configs) and any(c.init_values for c in configs)
    assert any(c.representation_size for c in configs) and any(c.head_dim for c in configs)
    assert any(c.image_hw[0] != c.image_hw[1] for c in configs) and any(c.in_channels == 1 for c in configs)
    assert {c.norm_eps for c in configs} >= {1e-6, 1e-5} and all(c.depth >= 2 for c in configs)
