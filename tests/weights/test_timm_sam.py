"""timm's Segment Anything / ViTDet encoders (VisionTransformerSAM) load into vitkit and compute
timm's logits and feature maps: windowed blocks (padded where the grid is not a multiple of the
window), global blocks, SAM's decomposed relative position terms, the neck, with or without an
absolute position table, at the weights' own size and at others."""

import pytest
import torch
from timm.models import save_for_hf
from timm.models.vision_transformer_sam import VisionTransformerSAM

import vitkit
from helpers import randomize
from peers import close

SMALL = dict(patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=5)
SAMS = [
    # SAM's own layout: an absolute table, relative terms, a conv neck; 8x8 grid in 3x3 windows (padded to 9x9)
    pytest.param(dict(img_size=64, window_size=3, global_attn_indexes=(1, 3), use_rel_pos=True, neck_chans=16),
                 id="sam-neck-padded-windows"),
    # samvit_base_patch16_224's: no absolute table, the final norm as the neck
    pytest.param(dict(img_size=56, window_size=3, global_attn_indexes=(2,), use_rel_pos=True, use_abs_pos=False,
                      neck_chans=None), id="relative-only-no-neck"),
    pytest.param(dict(img_size=(48, 64), window_size=4, global_attn_indexes=(0, 3), use_rel_pos=True,
                      neck_chans=8), id="non-square"),
    pytest.param(dict(img_size=64, window_size=4, global_attn_indexes=(1,), neck_chans=16, qk_norm=True),
                 id="vitdet-no-relative-terms-qk-norm"),
]


def sam(kwargs: dict) -> VisionTransformerSAM:
    model = randomize(VisionTransformerSAM(**SMALL, **kwargs))
    size = kwargs["img_size"]
    model.pretrained_cfg = {"architecture": "samvit_custom",
                            "input_size": [3, *(size if isinstance(size, tuple) else (size, size))]}
    return model


def saved(tmp_path, kwargs: dict) -> tuple[VisionTransformerSAM, torch.Tensor]:
    theirs = sam(kwargs)
    save_for_hf(theirs, tmp_path, model_args={**{k: v for k, v in SMALL.items() if k != "num_classes"}, **kwargs})
    size = kwargs["img_size"]
    return theirs, torch.randn(2, 3, *(size if isinstance(size, tuple) else (size, size)))


@pytest.mark.parametrize("kwargs", SAMS)
def test_sam_saved_by_timm_gives_timms_logits_and_feature_maps(tmp_path, kwargs):
    theirs, x = saved(tmp_path, kwargs)
    ours = vitkit.load(tmp_path)
    assert ours.config.window_size == kwargs["window_size"]
    assert ours.config.global_blocks == kwargs["global_attn_indexes"]
    with torch.no_grad():
        close(ours(x), theirs(x))
        for norm in (False, True):  # with norm: through the neck, as timm's
            maps = ours.forward_intermediates(x, [0, 2, 3], output="nchw", norm=norm).features
            their_maps = theirs.forward_intermediates(x, indices=[0, 2, 3], norm=norm, intermediates_only=True)
            for a, b in zip(maps, their_maps, strict=True):
                assert a.shape == b.shape
                close(a, b)


def test_a_bare_sam_state_dict_tells_its_windows_by_its_relative_tables(tmp_path):
    theirs, x = saved(tmp_path, SAMS[0].values[0])
    (tmp_path / "bare").mkdir()
    torch.save(theirs.state_dict(), tmp_path / "bare" / "w.pth")  # no config.json beside it
    ours = vitkit.load(tmp_path / "bare" / "w.pth", heads=4)
    assert (ours.config.window_size, ours.config.global_blocks) == (3, (1, 3))
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_sam_weights_without_relative_tables_or_config_ask_for_the_windows(tmp_path):
    theirs, x = saved(tmp_path, SAMS[3].values[0])
    (tmp_path / "bare").mkdir()
    torch.save(theirs.state_dict(), tmp_path / "bare" / "w.pth")
    with pytest.raises(ValueError, match="window_size=N and global_blocks"):
        vitkit.load(tmp_path / "bare" / "w.pth", heads=4)
    ours = vitkit.load(tmp_path / "bare" / "w.pth", heads=4, window_size=4, global_blocks=[1])
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_a_named_sam_model_takes_its_windows_from_timms_definition(tmp_path):
    """config.json names samvit_base_patch16 and records no window: timm's definition has 14x14
    windows and global blocks 2, 5, 8, 11 (an 8x8 grid is one padded window)."""
    args = dict(img_size=64, patch_size=8, embed_dim=32, num_heads=4, use_rel_pos=False, neck_chans=16)
    import timm

    theirs = randomize(timm.create_model("samvit_base_patch16", pretrained=False, num_classes=3, **args))
    save_for_hf(theirs, tmp_path, model_args=args)
    ours = vitkit.load(tmp_path)
    assert (ours.config.window_size, ours.config.global_blocks) == (14, (2, 5, 8, 11))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_sam_at_another_size_resamples_like_timm(tmp_path):
    """At 80 px (a 10x10 grid) timm resamples the absolute table bicubically and the global blocks'
    relative tables linearly at run time; vitkit does the same at run time (dynamic_size) and at
    load time (image_size=80)."""
    theirs, _ = saved(tmp_path, SAMS[0].values[0])
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        expected = theirs(x)
        close(vitkit.load(tmp_path, dynamic_size=True)(x), expected)
        close(vitkit.load(tmp_path, image_size=80)(x), expected)
