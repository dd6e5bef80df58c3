"""NaFlex batches in the model: a batch of images of several shapes, padded, gives each image what
it gets alone at its own size (the padding changes nothing), for every pooling; patch dropout keeps
each image's share of its own patches; and what the model cannot take is refused with the reason.
timm's NaFlexVit is the oracle for the numerics (tests/weights/test_timm_naflex.py)."""

import pytest
import torch

import vitkit
from helpers import max_rel_diff, randomize
from vitkit.model.naflex import Patches, drop_patches, pack, patchify

BASE = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=64, num_classes=5, dynamic_size=True)
SIZES = ((32, 48), (48, 32), (40, 40), (16, 64), (8, 8))


@pytest.mark.parametrize("overrides", [dict(), dict(pool="mean", class_token=False, fc_norm=True),
                                       dict(pool="map", reg_tokens=2, no_embed_class=True),
                                       dict(pool="mean-all"), dict(distilled=True),
                                       dict(patch_embed="linear-ln", pos_embed="sincos2d", qk_norm=True)])
def test_a_padded_batch_gives_each_image_what_it_gets_alone(overrides):
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE).replace(**overrides)))
    images = [torch.randn(3, h, w) for h, w in SIZES]
    with torch.no_grad():
        batched = model(patchify(images, (8, 8), length=30))
        alone = torch.cat([model(x[None]) for x in images])
    assert max_rel_diff(batched, alone) < 1e-5


def test_explicit_attention_and_sdpa_agree_under_the_padding_mask():
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE, reg_tokens=1)))
    batch = patchify([torch.randn(3, h, w) for h, w in SIZES], (8, 8))
    with torch.no_grad():
        fast = model(batch)
        slow, attentions = model(batch, return_attention=True)
    assert max_rel_diff(fast, slow) < 1e-5
    padding = torch.cat([torch.zeros(len(SIZES), 2, dtype=torch.bool), ~batch.valid], 1)  # after class and register
    assert padding.any() and attentions[0].permute(0, 3, 1, 2)[padding].abs().max() == 0  # no probability on it


def test_patch_dropout_keeps_each_images_share_of_its_own_patches():
    valid = torch.zeros(3, 20, dtype=torch.bool)
    for i, n in enumerate((20, 10, 1)):
        valid[i, :n] = True
    x = torch.randn(3, 22, 8)
    x[:, 2:][~valid] = float("nan")  # padding: never kept as a valid token
    kept, mask = drop_patches(x, torch.cat([torch.ones(3, 2, dtype=torch.bool), valid], 1), 2, 0.5)
    assert mask[:, 2:].sum(1).tolist() == [10, 5, 1] and kept.shape == (3, 12, 8)
    assert not kept[:, 2:][mask[:, 2:]].isnan().any()
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE, patch_dropout=0.5))).train()
    model(patchify([torch.randn(3, h, w) for h, w in SIZES], (8, 8))).sum().backward()  # trains
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("overrides", "batch", "words"), [
    (dict(patch_embed="conv-stem", patch_size=8), None, "cannot take patch sequences"),
    (dict(window_size=2), None, "need a whole image grid"),
    ({}, Patches(torch.randn(1, 4, 10), torch.zeros(1, 4, 2, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)),
     "do not fit the model's 8x8 patches"),
    ({}, Patches(torch.randn(1, 4, 192), torch.zeros(1, 4, 2, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool)),
     "at least one valid patch"),
])
def test_what_the_model_cannot_take_is_explained(overrides, batch, words):
    model = vitkit.ViT(vitkit.ViTConfig(**BASE).replace(**overrides))
    batch = batch or patchify([torch.randn(3, 32, 48)], (8, 8))
    with pytest.raises(ValueError, match=words):
        model(batch)


def test_patchify_needs_whole_patches():
    with pytest.raises(ValueError, match="not whole 8x8 patches"):
        patchify([torch.randn(3, 30, 32)], (8, 8))


def test_tokens_in_any_order_get_their_positions_from_their_coordinates():
    """Positions follow each token's (row, column), not its place: shuffled sequences, the same logits."""
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE, pool="mean", class_token=False)))
    batch = patchify([torch.randn(3, h, w) for h, w in SIZES], (8, 8))
    order = torch.stack([torch.randperm(batch.valid.shape[1]) for _ in SIZES])
    shuffled = Patches(*(t.gather(1, order.view(*order.shape, *[1] * (t.ndim - 2)).expand_as(t)) for t in batch))
    with torch.no_grad():
        assert max_rel_diff(model(shuffled), model(batch)) < 1e-5


@pytest.mark.parametrize("overrides", [dict(), dict(pool="mean", class_token=False, fc_norm=True),
                                       dict(pool="map", reg_tokens=2, no_embed_class=True), dict(pool="mean-all")])
def test_packed_images_give_what_each_gets_alone(overrides):
    """NaViT's packing: two or more images a sequence, each attending to its own tokens only."""
    model = randomize(vitkit.ViT(vitkit.ViTConfig(**BASE).replace(**overrides)))
    images = [torch.randn(3, h, w) for h, w in (*SIZES, (16, 16))]
    packed = pack(images, (8, 8), 64, model.config.num_prefix_tokens)
    assert packed.segments.shape[0] < len(images)  # several images share a sequence
    with torch.no_grad():
        alone = torch.cat([model(x[None]) for x in images])
        assert max_rel_diff(model.forward_packed(packed), alone) < 1e-5


def test_packing_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match="does not fit a packed sequence of 16 tokens"):
        pack([torch.randn(3, 32, 48)], (8, 8), 16)
    with pytest.raises(ValueError, match="not packed"):
        vitkit.ViT(vitkit.ViTConfig(**BASE, distilled=True)).forward_packed(pack([torch.randn(3, 8, 8)], (8, 8), 8, 2))


def test_forward_intermediates_takes_images_only():
    model = vitkit.ViT(vitkit.ViTConfig(**BASE))
    with pytest.raises(ValueError, match="not NaFlex patches"):
        model.forward_intermediates(patchify([torch.randn(3, 32, 48)], (8, 8)))
