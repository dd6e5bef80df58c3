"""The model against independent oracles: the write-up's code (vit-pytorch), timm, torch's counters."""

import pytest
import torch
import vit_pytorch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitkit
from helpers import max_rel_diff, randomize
from oracles.writeup_vit import ViT as WriteupViT
from vitkit.model import position

# (constructor kwargs of vit-pytorch's ViT, input size); each exercises a different trap.
VIT_PYTORCH_CONFIGS = [
    pytest.param(dict(image_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=4,
                      mlp_dim=128, dim_head=16), (3, 32, 32), id="cls-rgb"),
    pytest.param(dict(image_size=28, patch_size=7, num_classes=5, dim=48, depth=3, heads=2,
                      mlp_dim=96, dim_head=24, pool="mean", channels=1), (1, 28, 28), id="mean-gray"),
    pytest.param(dict(image_size=(32, 48), patch_size=(8, 16), num_classes=7, dim=32, depth=2,
                      heads=2, mlp_dim=64, dim_head=16), (3, 32, 48), id="non-square"),
    pytest.param(dict(image_size=32, patch_size=4, num_classes=3, dim=48, depth=2, heads=3,
                      mlp_dim=64, dim_head=32), (3, 32, 32), id="inner-ne-dim"),
    pytest.param(dict(image_size=16, patch_size=4, num_classes=4, dim=32, depth=1, heads=1,
                      mlp_dim=64, dim_head=32), (3, 16, 16), id="one-head-no-out-proj"),
]


@pytest.mark.parametrize(("kwargs", "shape"), VIT_PYTORCH_CONFIGS)
def test_logits_equal_vit_pytorchs_on_each_trap(kwargs, shape):
    theirs = randomize(vit_pytorch.ViT(**kwargs))
    ours = vitkit.from_vit_pytorch(theirs.state_dict(), image_size=kwargs["image_size"],
                                   heads=kwargs["heads"], patch_size=kwargs["patch_size"]).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_logits_equal_the_writeup_codes_with_cls_and_mean_pooling(pool):
    """The write-up's own class: always a class token, so its mean pooling averages it too."""
    kwargs = dict(image_size=(24, 40), patch_size=8, num_classes=6, dim=40, depth=2, heads=2,
                  mlp_dim=80, dim_head=24, pool=pool)
    theirs = randomize(WriteupViT(**kwargs))
    ours = vitkit.from_vit_pytorch(theirs.state_dict(), image_size=(24, 40), heads=2, pool=pool).eval()
    assert ours.config.pool == ("cls" if pool == "cls" else "mean-all")
    x = torch.randn(4, 3, 24, 40)
    with torch.no_grad():
        assert max_rel_diff(ours(x), theirs(x)) < 1e-5


# Parameter counts of timm's models at 224 px with 1000 classes.
TIMM_PARAMS = {"vit_ti16": 5_717_416, "vit_s16": 22_050_664, "vit_b16": 86_567_656,
               "vit_l16": 304_326_632, "vit_h14": 632_045_800}


@pytest.mark.parametrize(("name", "expected"), TIMM_PARAMS.items())
def test_parameter_counts_equal_timm(name, expected):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert model.num_parameters() == expected


def test_parameter_count_equals_live_timm():
    timm = pytest.importorskip("timm")
    ours = vitkit.create_model("vit_s32", num_classes=37, image_size=(160, 96))
    theirs = timm.create_model("vit_small_patch32_224", num_classes=37, img_size=(160, 96))
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(("name", "overrides"), [
    ("vit_ti16", {}),
    ("vit_s32", {"image_size": (96, 160)}),
    ("vit_b16", {"image_size": 64, "representation_size": 768}),
    ("vit_ti4_32", {"pool": "mean", "class_token": False}),
    ("vit_ti4_28", {"patch_embed": "linear-ln", "head_dim": 96}),
    ("vit_ti16", {"image_size": 64, "depth": 1, "pool": "map", "class_token": False, "reg_tokens": 4}),
    ("vit_ti16", {"image_size": 64, "depth": 1, "distilled": True}),
])
def test_flops_agree_with_flop_counter(name, overrides):
    config = vitkit.get_config(name, **overrides)
    model = vitkit.ViT(config).eval()
    x = torch.randn(2, config.in_channels, *config.image_hw)
    # The math backend decomposes attention into matmuls, which the counter sees.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(x)
    measured_macs = counter.get_total_flops() / 2 / x.shape[0]
    assert abs(vitkit.flops(config) - measured_macs) / measured_macs < 0.01
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.forward_head(model.forward_tokens(x)[0])  # the last block for every token, as the peers
    every_token = counter.get_total_flops() / 2 / x.shape[0]
    assert abs(vitkit.flops(config, every_token=True) - every_token) / every_token < 0.01


CONFIG_FAMILIES = [
    dict(),
    dict(pool="mean", class_token=False, pos_embed="sincos2d", fc_norm=True),
    dict(patch_embed="linear-ln", pool="mean-all", qkv_bias=False, head_dim=8),
    dict(image_size=(16, 32), representation_size=24, act="gelu-tanh"),
    dict(reg_tokens=2, no_embed_class=True, init_values=0.1, qk_norm=True, pre_norm=True),
    dict(pool="map", class_token=False),
    dict(distilled=True, reg_tokens=1),
]


@pytest.mark.parametrize("overrides", CONFIG_FAMILIES)
def test_sdpa_and_explicit_attention_agree(overrides):
    config = vitkit.ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64,
                              num_classes=5).replace(**overrides)
    model = randomize(vitkit.ViT(config))
    x = torch.randn(3, 3, *config.image_hw)
    with torch.no_grad():
        fast = model(x)
        slow, attentions = model(x, return_attention=True)
    assert max_rel_diff(fast, slow) < 1e-5
    tokens = config.num_patches + config.num_prefix_tokens
    assert len(attentions) == config.depth
    for a in attentions:
        assert a.shape == (3, config.heads, tokens, tokens)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, config.heads, tokens))


@pytest.mark.parametrize("overrides", [{}, dict(distilled=True, reg_tokens=1), dict(distilled=True, num_classes=0),
                                       dict(reg_tokens=2, qk_norm=True, init_values=0.1, pre_norm=True),
                                       dict(fc_norm=True, representation_size=24)])
def test_the_last_block_runs_only_for_the_tokens_the_head_reads(overrides):
    """`model(x)` runs the last block for the class (and distillation) token only: in training the
    logits and gradients of running it for every token, for less work. (Without dropout: with it,
    the last block draws masks of another shape.)"""
    config = vitkit.ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, num_classes=5,
                              drop_path=0.2, patch_dropout=0.25).replace(**overrides)
    model = randomize(vitkit.ViT(config)).train()
    x = torch.randn(4, 3, 32, 32)

    def run(every_token: bool) -> tuple[torch.Tensor, list[torch.Tensor], float]:
        model.zero_grad()
        torch.manual_seed(1)  # the same patches and stochastic-depth rows dropped
        with FlopCounterMode(display=False) as counter:
            out = model.forward_head(model.forward_tokens(x)[0]) if every_token else model(x)
        out = torch.cat(out, dim=-1) if isinstance(out, tuple) else out  # the class and distillation heads
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()], counter.get_total_flops()

    (fast, fast_grads, fast_flops), (full, full_grads, full_flops) = run(False), run(True)
    assert fast.std() > 0.1
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert fast_flops < 0.9 * full_flops


def test_no_classes_gives_the_pre_logits_features():
    model = vitkit.create_model("vit_ti4_32", num_classes=0, representation_size=50)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 50)


def test_position_embedding_resampled_like_timm():
    timm_layers = pytest.importorskip("timm.layers")
    small = randomize(vitkit.create_model("vit_ti16", image_size=224, depth=1))
    big = vitkit.create_model("vit_ti16", image_size=384, depth=1)
    big.load_state_dict(small.state_dict())
    expected = timm_layers.resample_abs_pos_embed(small.pos_embed.detach(), new_size=(24, 24),
                                                  num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed.detach(), expected)
    torch.testing.assert_close(big.pos_embed[:, 0], small.pos_embed[:, 0])  # class token kept
    big(torch.randn(1, 3, 384, 384))


def test_position_embedding_unchanged_when_sizes_match():
    a = randomize(vitkit.create_model("vit_ti4_32"))
    b = vitkit.create_model("vit_ti4_32")
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.pos_embed, b.pos_embed)
    table = a.pos_embed.detach()
    assert torch.equal(position.resample(table, (8, 8), 1), table)


def test_dynamic_size_accepts_any_multiple_of_the_patch():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=2, dynamic_size=True))
    for h, w in [(32, 32), (16, 48), (64, 40)]:
        assert model(torch.randn(2, 3, h, w)).shape == (2, 10)
    # at the native size, dynamic and fixed models are the same function
    fixed = vitkit.ViT(model.config.replace(dynamic_size=False))
    fixed.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fixed.eval()(x), model(x))


def test_dynamic_size_resamples_like_loading_at_that_size():
    model = randomize(vitkit.create_model("vit_ti4_32", depth=1, dynamic_size=True))
    at48 = vitkit.create_model("vit_ti4_32", depth=1, image_size=48)
    at48.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(model(x), at48.eval()(x))


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(image_size=225, patch_size=16), ["225x225", "16x16", "224x224"]),
    (dict(dim=100, heads=3), ["heads=3", "dim=100"]),
    (dict(class_token=False, pool="cls"), ["class_token"]),
    (dict(depth=10**6), ["depth"]),
    (dict(distilled=True, pool="mean"), ["distilled", "pool='cls'"]),
    (dict(pool="map", dim=100, heads=3, head_dim=20), ["pool='map'", "heads=3"]),
    (dict(init_values=-1.0), ["init_values"]),
    (dict(reg_tokens=-1), ["reg_tokens"]),
])
def test_bad_configs_are_explained(kwargs, words):
    with pytest.raises(ValueError) as e:
        vitkit.ViTConfig(**kwargs)
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize(("shape", "words"), [
    ((2, 1, 32, 32), ["3-channel", "1 channels", "in_channels=1"]),
    ((3, 32, 32), ["4-D", "x[None]"]),
    ((2, 3, 30, 30), ["32x32", "30x30", "dynamic_size"]),
])
def test_bad_inputs_are_explained(shape, words):
    model = vitkit.create_model("vit_ti4_32", depth=1)
    with pytest.raises(ValueError) as e:
        model(torch.randn(*shape))
    for word in words:
        assert word in str(e.value)


def test_dynamic_size_still_needs_patch_multiples():
    model = vitkit.create_model("vit_ti4_32", depth=1, dynamic_size=True)
    with pytest.raises(ValueError, match="not divisible by the patch size 4x4"):
        model(torch.randn(1, 3, 30, 32))


def test_config_json_round_trip_and_hostile_values(tmp_path):
    config = vitkit.get_config("vit_s16", image_size=(96, 128), num_classes=3)
    config.save(tmp_path / "c.json")
    assert vitkit.ViTConfig.load(tmp_path / "c.json") == config
    for bad in ({"depth": "12"}, {"dim": 1.5}, {"depth": 10**6}, {"surprise": 1}, {"pool": 3}):
        with pytest.raises(ValueError):
            vitkit.ViTConfig.from_dict({**config.to_dict(), **bad})


def test_presets_follow_table_1():
    b16 = vitkit.get_config("ViT-B/16")
    assert (b16.dim, b16.depth, b16.heads, b16.mlp_dim, b16.patch_size) == (768, 12, 12, 3072, 16)
    h14 = vitkit.get_config("vit_h14")
    assert (h14.dim, h14.depth, h14.heads, h14.mlp_dim, h14.patch_size) == (1280, 32, 16, 5120, 14)
    with pytest.raises(ValueError, match="vit_b16"):
        vitkit.get_config("vit_q16")


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 4), head_width=st.sampled_from([4, 8]), depth=st.integers(1, 2),
    patch=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    channels=st.integers(1, 4), classes=st.integers(0, 5), batch=st.integers(1, 3),
    pool=st.sampled_from(["cls", "mean", "mean-all"]), embed=st.sampled_from(["conv", "linear-ln"]),
)
def test_logits_attention_and_token_shapes_for_any_config(heads, head_width, depth, patch, grid, channels, classes,
                                                          batch, pool, embed):
    dim = heads * head_width
    config = vitkit.ViTConfig(
        image_size=(patch[0] * grid[0], patch[1] * grid[1]), patch_size=patch, in_channels=channels,
        num_classes=classes, dim=dim, depth=depth, heads=heads, mlp_dim=2 * dim, pool=pool,
        class_token=pool != "mean", patch_embed=embed)
    model = vitkit.ViT(config).eval()
    x = torch.randn(batch, channels, *config.image_hw)
    logits, attentions = model(x, return_attention=True)
    assert logits.shape == ((batch, classes) if classes else (batch, dim))
    tokens = grid[0] * grid[1] + config.num_prefix_tokens
    assert attentions[0].shape == (batch, heads, tokens, tokens)
    assert model.forward_tokens(x)[0].shape == (batch, tokens, dim)


def test_grad_checkpointing_gives_the_same_gradients():
    config = vitkit.ViTConfig(image_size=32, patch_size=8, dim=32, depth=3, heads=4, mlp_dim=64, num_classes=5,
                              dropout=0.1, drop_path=0.2, init_values=0.5, reg_tokens=1)
    model = randomize(vitkit.ViT(config)).train()
    calls = []
    model.blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 3, 32, 32)

    def gradients(checkpointed: bool) -> list[torch.Tensor]:
        model.set_grad_checkpointing(checkpointed)
        model.zero_grad()
        calls.clear()
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in backward
        model(x).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients(False)
    assert len(calls) == 1
    checkpointed = gradients(True)
    assert len(calls) == 2  # the block ran again in backward
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def timm_reg4(patch_dropout: float = 0.0):
    """A small timm ViT with registers (DINOv2-reg layout) and the same weights in vitkit."""
    from timm.models.vision_transformer import VisionTransformer

    theirs = randomize(VisionTransformer(img_size=(32, 48), patch_size=8, embed_dim=32, depth=4, num_heads=4,
                                         num_classes=3, reg_tokens=4, no_embed_class=True, init_values=1e-5,
                                         patch_drop_rate=patch_dropout))
    ours = vitkit.ViT(vitkit.ViTConfig(image_size=(32, 48), patch_size=8, dim=32, depth=4, heads=4, mlp_dim=128,
                                       num_classes=3, reg_tokens=4, no_embed_class=True, init_values=1e-5,
                                       patch_dropout=patch_dropout))
    ours.load_state_dict(theirs.state_dict())
    return ours.eval(), theirs


@pytest.mark.parametrize("layers", [None, 2, [0, -1]])
@pytest.mark.parametrize("output", ["tokens", "nchw"])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_intermediates_match_timm(layers, output, norm):
    ours, theirs = timm_reg4()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        got = ours.forward_intermediates(x, layers=layers, output=output, norm=norm)
        want = theirs.forward_intermediates(x, indices=layers, norm=norm, return_prefix_tokens=True,
                                            output_fmt="NCHW" if output == "nchw" else "NLC",
                                            intermediates_only=True)
    assert len(got.features) == len(want) and got.attentions == []
    for features, prefix, (their_features, their_prefix) in zip(got.features, got.prefix, want, strict=True):
        assert features.shape == their_features.shape and prefix.shape == (2, 5, 32)
        assert max_rel_diff(features, their_features) < 1e-5
        assert max_rel_diff(prefix, their_prefix) < 1e-5


def test_patch_dropout_matches_timm_in_training_and_is_off_in_eval():
    ours, theirs = timm_reg4(patch_dropout=0.5)
    ours.train(), theirs.train()
    x = torch.randn(2, 3, 32, 48)
    kept = []
    ours.blocks[0].register_forward_pre_hook(lambda _, args: kept.append(args[0].shape[1]))
    with torch.no_grad():
        torch.manual_seed(3)
        got = ours(x)
        torch.manual_seed(3)
        want = theirs(x)
        assert max_rel_diff(got, want) < 1e-5 and kept == [5 + 12]  # the 5 prefix tokens and half of 24 patches
        torch.manual_seed(4)
        assert max_rel_diff(ours(x), got) > 1e-3  # another draw keeps other patches
        ours.eval(), theirs.eval()
        assert max_rel_diff(ours(x), theirs(x)) < 1e-5 and kept[-1] == 5 + 24
        ours.train()  # intermediates keep the whole grid, for dense prediction
        assert ours.forward_intermediates(x, layers=1, output="nchw").features[0].shape == (2, 32, 4, 6)


def test_intermediate_attention_only_for_chosen_blocks():
    ours, _ = timm_reg4()
    calls, asked = [], []
    ours.blocks[3].register_forward_hook(lambda *_: calls.append(1))
    ours.blocks[1].attn.register_forward_pre_hook(lambda _, args: asked.append(args[1]))
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        got = ours.forward_intermediates(x, layers=[2, 0], attention=True)
        _, every = ours(x, return_attention=True)
    assert calls == [1]  # only the full forward ran the last block: intermediates stop early
    assert asked == [False, True]  # block 1 kept the fused kernel in forward_intermediates
    assert len(got.attentions) == 2
    for mine, block in zip(got.attentions, [0, 2], strict=True):
        assert mine.shape == (2, 4, 5 + 24, 5 + 24)
        torch.testing.assert_close(mine, every[block])
    with pytest.raises(ValueError, match="block indices"):
        ours.forward_intermediates(x, layers=[4])


# The family presets against timm's models of the same name (parameter counts on the meta device).
FAMILY_PRESETS = {"deit_b16_distilled": "deit_base_distilled_patch16_224",
                  "vit_s14_reg4_dinov2": "vit_small_patch14_reg4_dinov2",
                  "vit_b16_reg4_gap": "vit_base_patch16_reg4_gap_256",
                  "vit_b16_siglip": "vit_base_patch16_siglip_224", "vit_l14_clip": "vit_large_patch14_clip_224"}


@pytest.mark.parametrize(("name", "timm_name"), FAMILY_PRESETS.items())
def test_family_presets_equal_timm(name, timm_name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours = vitkit.create_model(name)
        theirs = timm.create_model(timm_name, num_classes=ours.config.num_classes)
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
    assert ours.config.num_prefix_tokens == theirs.num_prefix_tokens
    assert ours.config.norm_eps == theirs.blocks[0].norm1.eps


