"""The paper's ResNet hybrids from timm: loaded with timm's logits, saved back for timm, and the
hybrids vitkit cannot build or timm cannot hold refused."""

import json

import pytest
import timm
import torch
from timm.models import save_for_hf

import vitkit
from helpers import randomize
from peers import close

SMALL = dict(dim=32, depth=1, heads=2, mlp_dim=64, num_classes=5)

HYBRIDS = [  # timm name, image size, vitkit's backbone_layers and patch_size (the total stride)
    pytest.param("vit_base_r50_s16_224", (64, 96), (3, 4, 9), 16, id="r50-s16-non-square"),
    pytest.param("vit_small_r26_s32_224", 64, (2, 2, 2, 2), 32, id="r26-s32"),
    pytest.param("vit_tiny_r_s16_p8_224", 64, (), 32, id="stem-only-p8"),
]


TIMM_TINY = dict(embed_dim=32, depth=1, num_heads=2, num_classes=5)


def timm_hybrid(name, image_size):
    """A timm hybrid with random weights. Its filters are small, so that a wrong eps of the weight
    standardisation shows in the logits, and so are its GroupNorms' outputs, so that the next one's
    input is and a wrong GroupNorm eps shows too."""
    model = randomize(timm.create_model(name, pretrained=False, img_size=image_size, **TIMM_TINY))
    with torch.no_grad():
        for module in model.patch_embed.backbone.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(1e-3)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.mul_(1e-2)
                module.bias.mul_(1e-2)
    return model


@pytest.mark.parametrize(("name", "image_size", "layers", "patch"), HYBRIDS)
def test_timm_hybrid_loads_computes_timms_logits_and_saves_back(tmp_path, name, image_size, layers, patch):
    """timm -> vitkit: the same logits. vitkit -> timm: the written architecture and kwargs build
    timm's hybrid, which loads the file strictly and computes the same logits; and back."""
    from safetensors.torch import load_file

    theirs = timm_hybrid(name, image_size)
    save_for_hf(theirs, tmp_path / "source", model_args={"img_size": image_size, **TIMM_TINY})  # as timm does
    ours = vitkit.load(tmp_path / "source").eval()
    assert (ours.config.patch_embed, ours.config.backbone_layers, ours.config.patch_size) == ("resnet", layers, patch)
    x = torch.randn(2, 3, *timm.layers.to_2tuple(image_size))
    with torch.no_grad():
        close(ours(x), theirs(x))
    path = vitkit.save(ours, tmp_path / "timm", format="timm")
    written = json.loads(path.with_name("config.json").read_text())
    back = timm.create_model(written["architecture"], pretrained=False, **written["model_args"]).eval()
    back.load_state_dict(load_file(path))
    with torch.no_grad():
        close(back(x), theirs(x))
    assert vitkit.load(tmp_path / "timm").config == ours.config


def test_timm_hybrid_vitkit_cannot_build_is_refused(tmp_path):
    theirs = timm.create_model("vit_small_resnet26d_224", pretrained=False, img_size=64, **TIMM_TINY)
    save_for_hf(theirs, tmp_path, model_args={"img_size": 64, **TIMM_TINY})
    with pytest.raises(ValueError, match="backbone vitkit does not build"):
        vitkit.load(tmp_path)


def test_backbone_timm_has_no_model_for_is_not_saved_as_timm(tmp_path):
    model = vitkit.ViT(image_size=32, patch_size=8, patch_embed="resnet", backbone_layers=(1, 1), **SMALL)
    with pytest.raises(ValueError, match="timm has no hybrid"):
        vitkit.save(model, tmp_path / "timm", format="timm")
    assert not (tmp_path / "timm").exists()  # refused before anything is written
