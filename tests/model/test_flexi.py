"""FlexiViT: a patch-embedding kernel resized by the pseudo-inverse (timm's resample_patch_embed
as the oracle, and the property that defines it: the resized kernel on the resized patch gives
the original kernel's output on the original patch), a model at another patch size (timm's
VisionTransformer.set_input_size as the oracle), and the same function run on the fly for
training, whose gradient reaches the one stored kernel."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import max_rel_diff, randomize
from vitkit.model.flexi import at_patch_size, resize_kernel


@pytest.mark.parametrize(("old", "new"), [(8, 16), (16, 8), (16, 14), (14, 16), (4, 2), (2, 8), (16, 32)])
def test_the_resized_kernel_is_timms(old, new):
    kernel = torch.randn(24, 3, old, old)
    ours, theirs = resize_kernel(kernel, new), resample_patch_embed(kernel, [new, new])
    assert ours.shape == (24, 3, new, new)
    assert max_rel_diff(ours, theirs) < 1e-5


@pytest.mark.parametrize(("old", "new"), [(4, 8), (8, 16), (6, 9)])
def test_on_upsampled_patches_the_resized_kernel_gives_the_original_output(old, new):
    """FlexiViT's defining property: <resize(x), w'> = <x, w> for each patch x when the patch grows."""
    kernel, patches = torch.randn(16, 3, old, old), torch.rand(10, 3, old, old)
    resized = F.interpolate(patches, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    bicubic = F.interpolate(kernel, size=(new, new), mode="bicubic", align_corners=False) * (old / new) ** 2
    expected = F.conv2d(patches, kernel, stride=old)
    assert max_rel_diff(F.conv2d(resized, resize_kernel(kernel, new), stride=new), expected) < 1e-4
    assert max_rel_diff(F.conv2d(resized, bicubic, stride=new), expected) > 1e-2  # a plain resize is not it


@pytest.mark.parametrize("patch", [4, 16])
def test_a_model_at_another_patch_size_is_timms(patch):
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5))
    ours = randomize(vitkit.ViT(vitkit.ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=128,
                                                 num_classes=5)))
    ours.load_state_dict(theirs.state_dict())
    theirs.set_input_size(patch_size=(patch, patch))
    resized = at_patch_size(ours, patch)
    assert resized.config.patch_size == patch and resized.config.grid == (32 // patch, 32 // patch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_rel_diff(resized(x), theirs(x)) < 1e-5
        assert max_rel_diff(ours(x), theirs(x)) > 1e-3  # and the original model is unchanged


def test_on_the_fly_is_the_resized_model_and_trains_the_stored_kernel():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, num_classes=5, reg_tokens=1))
    x = torch.randn(2, 3, 32, 32)
    expected = at_patch_size(model, 8)(x)
    model.set_patch_size(8)
    out = model(x)
    assert max_rel_diff(out, expected) < 1e-5
    out.sum().backward()
    assert model.patch_embed.proj.weight.grad.shape == (192, 3, 4, 4)
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0 and model.pos_embed.grad.abs().sum() > 0
    model.set_patch_size(None)
    assert model.state_dict()["patch_embed.proj.weight"].shape == (192, 3, 4, 4)  # the stored kernel stays


@pytest.mark.parametrize(("overrides", "patch", "words"), [
    ({}, 5, "does not divide the 32x32 images"),
    ({}, 0, "does not divide"),
    ({"patch_embed": "linear-ln"}, 8, "only a 'conv' patch embedding"),
])
def test_bad_patch_sizes_are_explained(overrides, patch, words):
    model = vitkit.create_model("vit_ti4_32", depth=1, **overrides)
    with pytest.raises(ValueError, match=words):
        at_patch_size(model, patch)
    with pytest.raises(ValueError, match=words):
        model.set_patch_size(patch)
