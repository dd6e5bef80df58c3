"""Convolutions before the patch projection: Xiao et al.'s conv stem, checked against a written-out
reference; the presets with a stem or the paper's ResNet hybrid, against timm's models; and the
FLOPs of both. (Loading timm's hybrids: tests/weights/test_timm_hybrid.py.)"""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from helpers import randomize
from peers import close
from vitkit.cli import main as cli_main

SMALL = dict(dim=32, depth=1, heads=2, mlp_dim=64, num_classes=5)


# -- the conv stem ------------------------------------------------------------------------------
def reference_conv_stem(model: vitkit.ViT, x: torch.Tensor) -> torch.Tensor:
    """Xiao et al.'s stem written out: per conv, 3x3 stride 2 -> LayerNorm over each pixel's
    channels -> ReLU; then the 1x1 projection; tokens in row-major order."""
    embed = model.patch_embed
    for layer in embed.backbone:
        x = F.conv2d(x, layer.conv.weight, stride=2, padding=1)
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], layer.norm.weight, layer.norm.bias, model.config.norm_eps)
        x = F.relu(x.permute(0, 3, 1, 2))
    x = F.conv2d(x, embed.proj.weight, embed.proj.bias)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(("patch", "image_size", "widths"), [
    (4, 32, [16, 32]), (8, (16, 40), [8, 16, 32]), (16, (32, 64), [4, 8, 16, 32])])
def test_conv_stem_is_log2_patch_stride_2_convolutions_on_the_patch_grid(patch, image_size, widths):
    config = vitkit.ViTConfig(image_size=image_size, patch_size=patch, patch_embed="conv-stem", **SMALL)
    model = randomize(vitkit.ViT(config))
    assert [layer.conv.out_channels for layer in model.patch_embed.backbone] == widths  # doubling up to dim
    assert model.patch_embed.proj.kernel_size == (1, 1)
    x = torch.randn(2, 3, *config.image_hw)
    with torch.no_grad():
        tokens = model.patch_embed(x)
        assert tokens.shape == (2, config.num_patches, 32)
        close(tokens, reference_conv_stem(model, x))
        assert model(x).shape == (2, 5)


def test_conv_stem_channels_are_configurable_and_go_through_config_json(tmp_path):
    config = vitkit.ViTConfig(image_size=32, patch_size=8, patch_embed="conv-stem", stem_channels=6, **SMALL)
    model = vitkit.ViT(config)
    assert [layer.conv.out_channels for layer in model.patch_embed.backbone] == [6, 12, 24]
    model.save_pretrained(tmp_path / "run")
    assert vitkit.load(tmp_path / "run").config == config


def test_conv_stem_computes_the_same_in_any_batch_and_in_both_modes():
    """What its LayerNorm buys over BatchNorm: one image's logits do not depend on the other images
    of its batch (so N processes compute what 1 computes) nor on train/eval mode."""
    model = randomize(vitkit.create_model("vit_ti4_32_convstem", depth=1))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        alone = model(x[:1])
        model.train()  # dropout and stochastic depth are off
        close(model(x[:1]), alone)  # the mode
        close(model(x)[:1], alone)  # the batch


@pytest.mark.parametrize(("fields", "message"), [
    (dict(patch_embed="conv-stem", patch_size=14, image_size=28), "power of two"),
    (dict(patch_embed="conv-stem", patch_size=(8, 16), image_size=32), "square power of two"),
    (dict(patch_embed="conv-stem", patch_size=1, image_size=32), "power of two"),
    (dict(stem_channels=16), "stem_channels"),
    (dict(stem_depth=2), "stem_depth"),
    (dict(patch_embed="conv-stem", patch_size=4, image_size=32, stem_depth=0), "stem_depth=0"),
    (dict(backbone_layers=(3, 4, 9)), "backbone_layers"),
    (dict(patch_embed="resnet", backbone_layers=(3, 4, 9), patch_size=8, image_size=32), "stride-16"),
    (dict(patch_embed="resnet", backbone_layers=(1, 1, 1, 1, 1), patch_size=32, image_size=64), "up to 4"),
    (dict(patch_embed="resnet", backbone_layers=(3, 0), patch_size=8, image_size=32), "backbone_layers=0"),
])
def test_impossible_stems_are_one_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        vitkit.ViTConfig(**{**SMALL, **fields})


def test_stem_fields_read_from_json_are_checked():
    config = vitkit.ViTConfig.from_dict({"patch_embed": "resnet", "backbone_layers": [2, 2], "patch_size": 8,
                                         "image_size": 32})
    assert config.backbone_layers == (2, 2) and config.stem_stride == 8
    with pytest.raises(ValueError, match="backbone_layers"):
        vitkit.ViTConfig.from_dict({"patch_embed": "resnet", "backbone_layers": ["3"]})


# -- the ResNet hybrid against timm -------------------------------------------------------------
# -- presets and compute ------------------------------------------------------------------------
HYBRID_PRESETS = {"vit_b16_r50": "vit_base_r50_s16_224", "vit_l32_r50": "vit_large_r50_s32_224",
                  "vit_s32_r26": "vit_small_r26_s32_224", "vit_b32_r26": "vit_base_r26_s32_224",
                  "vit_ti32_rstem": "vit_tiny_r_s16_p8_224"}


@pytest.mark.parametrize(("name", "timm_name"), HYBRID_PRESETS.items())
def test_hybrid_presets_equal_timm(name, timm_name):
    with torch.device("meta"):
        ours = vitkit.create_model(name)
        theirs = timm.create_model(timm_name, num_classes=ours.config.num_classes)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert ours.config.grid == theirs.patch_embed.grid_size


def test_conv_stem_presets_keep_their_grid_and_are_listed(capsys):
    small = vitkit.get_config("vit_ti4_32_convstem")
    assert small.grid == vitkit.get_config("vit_ti4_32").grid == (8, 8)
    assert small.replace(patch_embed="conv") == vitkit.get_config("vit_ti4_32")
    with torch.device("meta"):
        stem = vitkit.create_model("vit_ti4_32_convstem").patch_embed.backbone
    assert len(stem) == 2 and stem[-1].conv.out_channels == small.dim
    assert cli_main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"vit_ti4_32_convstem", "vit_b16_convstem", *HYBRID_PRESETS} <= set(rows)
    # ViT-B/16 as timm's model card counts it (17.6 GMACs), and what model(x) computes: 1.1 fewer
    assert round(rows["vit_b16"]["gmacs"], 1) == 17.6 and round(rows["vit_b16"]["gmacs_logits"], 1) == 16.5


@pytest.mark.parametrize("fields", [
    dict(patch_embed="conv-stem", patch_size=16, image_size=(32, 64)),
    dict(patch_embed="conv-stem", patch_size=4, image_size=32, stem_channels=12),
    dict(patch_embed="conv-stem", patch_size=4, image_size=32, stem_depth=2),
    dict(patch_embed="resnet", backbone_layers=(3, 4, 9), patch_size=16, image_size=(32, 48)),
    dict(patch_embed="resnet", backbone_layers=(2, 2, 2, 2), patch_size=32, image_size=64),
    dict(patch_embed="resnet", backbone_layers=(), patch_size=32, image_size=64),
])
def test_flops_count_the_stem(fields):
    config = vitkit.ViTConfig(**{**SMALL, **fields})
    model = vitkit.ViT(config).eval()
    x = torch.randn(2, 3, *config.image_hw)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    measured = counter.get_total_flops() / 2 / x.shape[0]
    assert abs(vitkit.flops(config) - measured) / measured < 0.01


def test_a_deeper_conv_stem_adds_stride_one_convolutions():
    config = vitkit.ViTConfig(**{**SMALL, "patch_embed": "conv-stem", "patch_size": 4, "image_size": 32,
                                 "stem_depth": 2})
    stem = vitkit.ViT(config).patch_embed.backbone
    strides = [unit.conv.stride[0] for unit in stem]
    assert strides == [2, 1, 2, 1]
    shape = stem(torch.randn(1, 3, 32, 32)).shape
    assert shape[-2:] == (8, 8) and shape[1] == stem[-1].conv.out_channels
