"""timm's ViTs, saved as timm saves them (config.json and safetensors, or a bare state dict), load
into vitkit and compute timm's logits; vitkit's models saved as timm load strictly into timm's
classes and back. The family: registers, DeiT, CLIP, SigLIP, layer scale, qk-norm, pooling."""

import json

import pytest
import timm
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize
from peers import TINY, close

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
def test_timm_vit_saved_by_timm_gives_timms_logits_in_vitkit(tmp_path, kwargs):
    theirs = randomize(VisionTransformer(**kwargs))
    theirs.pretrained_cfg = {"architecture": "vit_custom",
                             "input_size": [3, *timm.layers.to_2tuple(kwargs["img_size"])]}
    save_for_hf(theirs, tmp_path, model_args={"num_heads": kwargs["num_heads"]})
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(3, 3, *timm.layers.to_2tuple(kwargs["img_size"]))
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_a_bare_timm_state_dict_needs_the_heads_then_gives_timms_logits(tmp_path):
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=40, depth=1, num_heads=5, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="heads"):
        vitkit.load(tmp_path / "w.pth")
    ours = vitkit.load(tmp_path / "w.pth", heads=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_vitkit_saved_as_timm_loads_strictly_into_timm_and_back_unchanged(tmp_path):
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
def test_each_timm_family_model_gives_timms_logits_in_vitkit(tmp_path, name, kwargs, image_size):
    theirs = timm_model(name, kwargs, image_size)
    save_for_hf(theirs, tmp_path, model_args={**TINY, **kwargs})  # what timm writes, as timm writes it
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, *timm.layers.to_2tuple(image_size))
    with torch.no_grad():
        close(ours(x), theirs(x))


@pytest.mark.parametrize(("name", "kwargs", "image_size"), TIMM_FAMILY)
def test_each_timm_family_model_saved_by_vitkit_loads_strictly_into_timm(tmp_path, name, kwargs, image_size):
    """vitkit -> timm: the written kwargs build timm's model, which loads the file strictly and computes
    the same logits; and back. CLIP's LayerNorm eps (1e-5) is a norm_layer partial in timm, which
    model_args (JSON) cannot hold: saving it refuses with the reason."""
    from safetensors.torch import load_file
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
    theirs = timm_model(None, dict(patch_size=8, global_pool=pool), 32)
    save_for_hf(theirs, tmp_path, model_args={**TINY, "global_pool": pool})
    with pytest.raises(ValueError, match=f"global_pool='{pool}'"):
        vitkit.load(tmp_path)


def test_non_square_timm_weights_load_at_their_own_size_and_other_grids_are_not_guessed(tmp_path):
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
    theirs = timm_model(None, dict(patch_size=16, reg_tokens=1), (80, 48))
    save_for_hf(theirs, tmp_path, model_args=TINY)
    ours = vitkit.load(tmp_path, image_size=(96, 160)).eval()
    theirs.set_input_size((96, 160))  # timm resamples from its own grid
    torch.testing.assert_close(ours.pos_embed, theirs.pos_embed)
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        close(ours(x), theirs(x))
