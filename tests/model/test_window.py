"""Windowed attention (ViTDet, SAM) as model options: what each token attends to, checked against
attention with an explicit mask; one window over the whole grid is global attention; plain ViTs
run windowed; feature maps for dense heads; clear errors. timm's SAM is the oracle for the
numerics of SAM's own layout (tests/weights/test_timm_sam.py)."""

import pytest
import torch
import torch.nn.functional as F

import vitkit
from helpers import max_rel_diff, randomize
from vitkit.model.window import heads_to_tokens

BASE = dict(image_size=32, patch_size=8, dim=32, depth=3, heads=4, mlp_dim=64, num_classes=5)


def window_mask(grid: tuple[int, int], size: int, prefix: int, global_prefix: bool = True) -> torch.Tensor:
    """(N, N) who may attend to whom: a patch sees its window and the prefix; the prefix sees all."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    window = (rows // size * 1000 + cols // size).flatten()
    same = window[:, None] == window[None, :]
    n = prefix + len(window)
    mask = torch.ones(n, n, dtype=torch.bool)
    mask[prefix:, prefix:] = same
    return mask


def masked_reference(model: vitkit.ViT, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model's function written out with global attention under `mask` in its windowed blocks."""
    tokens, _ = model.embed(x)
    for i, block in enumerate(model.blocks):
        windowed = i not in model.config.global_blocks  # from the config, not from the block's own idea
        q, k, v = block.attn.project(block.norm1(tokens))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if windowed else None)
        tokens = tokens + block.ls1(block.attn.output(heads_to_tokens(out)))
        tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
    return model.forward_head(model.norm(tokens))


@pytest.mark.parametrize("overrides", [dict(class_token=False, pool="mean"), dict(), dict(reg_tokens=2),
                                       dict(image_size=(32, 48), pool="map", class_token=False)])
def test_windowed_blocks_attend_within_their_window_and_the_prefix_tokens_globally(overrides):
    config = vitkit.ViTConfig(**BASE, window_size=2, global_blocks=(1,)).replace(**overrides)
    model = randomize(vitkit.ViT(config))
    x = torch.randn(2, 3, *config.image_hw)
    mask = window_mask(config.grid, 2, config.num_prefix_tokens)
    with torch.no_grad():
        assert max_rel_diff(model(x), masked_reference(model, x, mask)) < 1e-5
        assert max_rel_diff(model(x), masked_reference(model, x, None)) > 1e-3  # the windows matter


@pytest.mark.parametrize("overrides", [dict(class_token=False, pool="mean"), dict(reg_tokens=1)])
def test_one_window_over_the_whole_grid_is_global_attention(overrides):
    glob = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE).replace(**overrides)))
    windowed = vitkit.ViT(glob.config.replace(window_size=4))
    windowed.load_state_dict(glob.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_rel_diff(windowed.eval()(x), glob(x)) < 1e-5


def test_a_plain_vits_weights_run_windowed_at_a_higher_resolution(tmp_path):
    """A ViT trained at 32 px, loaded at 64 px with 4x4 windows and one global block: its
    position table resampled, the windows as the masked reference says."""
    plain = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE)))
    plain.save_pretrained(tmp_path / "plain")
    model = vitkit.load(tmp_path / "plain", image_size=64, window_size=4, global_blocks=[2])
    assert model.config.grid == (8, 8) and model.blocks[0].attn.window == 4 and not model.blocks[2].attn.window
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert max_rel_diff(model(x), masked_reference(model, x, window_mask((8, 8), 4, 1))) < 1e-5


def test_feature_maps_for_dense_heads():
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE, window_size=2, global_blocks=(2,), class_token=False,
                                                  pool="mean", rel_pos=True, neck_dim=16)))
    x = torch.randn(2, 3, 32, 32)
    maps = model.forward_intermediates(x, [0, 2], output="nchw").features
    assert [m.shape for m in maps] == [(2, 32, 4, 4)] * 2
    assert model.forward_intermediates(x, 1, output="nchw", norm=True).features[0].shape == (2, 16, 4, 4)


def test_gradient_checkpointing_gives_the_same_gradients_with_windows():
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE, window_size=3, global_blocks=(0,), class_token=False,
                                                  pool="mean", rel_pos=True))).train()
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(global_blocks=(1,)), "set window_size too"),
    (dict(window_size=2, global_blocks=(5,)), "not blocks of a depth-3"),
    (dict(rel_pos=True), "class_token=False"),
    (dict(neck_dim=16, class_token=False, pool="mean", fc_norm=True), "fc_norm=False"),
    (dict(window_size=2, patch_dropout=0.5), "patch_dropout=0"),
    (dict(window_size=-1), "window_size"),
])
def test_bad_window_options_are_explained(kwargs, words):
    with pytest.raises(ValueError, match=words):
        vitkit.ViTConfig(**BASE, **kwargs)


def test_a_windowed_block_has_no_attention_map_to_give():
    model = vitkit.ViT(vitkit.ViTConfig(**BASE, window_size=2))
    with pytest.raises(ValueError, match="no \\(tokens x tokens\\) attention map"):
        model(torch.randn(1, 3, 32, 32), return_attention=True)
