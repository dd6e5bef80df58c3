"""timm's NaFlex ViTs load into vitkit and compute timm's logits on one batch of images of several
aspect ratios (each its own grid, the position table resampled per grid, the padding masked), and
vitkit's classic ViTs run in NaFlex mode as timm's NaFlexVit runs a classic ViT's weights."""

import pytest
import timm
import torch
from timm.models import save_for_hf
from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg, checkpoint_filter_fn
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize
from peers import close
from vitkit.model.naflex import patchify

SMALL = dict(embed_dim=32, depth=2, num_heads=4, patch_size=8, pos_embed_grid_size=(4, 4))
NAMED = [
    pytest.param("naflexvit_base_patch16_gap", {}, id="gap-registers-layer-scale"),
    pytest.param("naflexvit_base_patch16_map", {}, id="map"),
    pytest.param("naflexvit_so150m2_patch16_reg1_gap", dict(embed_dim=52, num_heads=13), id="so150m2-no-qkv-bias"),
    pytest.param("naflexvit_so150m2_patch16_reg1_map", dict(embed_dim=52, num_heads=13), id="so150m2-map"),
]


def mixed_batch(channels: int = 3) -> list[torch.Tensor]:
    """Images of 1:2 to 2:1 and one square, each a whole number of 8 px patches (grids 4x6 to 2x8)."""
    return [torch.randn(channels, h, w) for h, w in ((32, 48), (48, 32), (40, 40), (16, 64), (64, 32))]


@pytest.mark.parametrize(("name", "args"), NAMED)
def test_a_naflex_vit_saved_by_timm_gives_timms_logits_on_mixed_aspect_ratios(tmp_path, name, args):
    args = {**SMALL, **args}
    theirs = randomize(timm.create_model(name, pretrained=False, num_classes=5, **args))
    save_for_hf(theirs, tmp_path, model_args=args)
    ours = vitkit.load(tmp_path)
    batch = patchify(mixed_batch(), (8, 8))
    with torch.no_grad():
        expected = theirs(batch.patches, patch_coord=batch.coords, patch_valid=batch.valid)
        close(ours(batch), expected)
        close(ours(patchify(mixed_batch_again := mixed_batch(), (8, 8), length=40)),  # more padding: the same
              theirs(*(lambda b: (b.patches, b.coords, b.valid))(patchify(mixed_batch_again, (8, 8)))))


@pytest.mark.parametrize("kwargs", [
    dict(class_token=True, global_pool="token"),  # the class token's position row goes into the token (timm's rule)
    dict(class_token=False, reg_tokens=1, no_embed_class=True, global_pool="avg", fc_norm=True),
], ids=["class-token", "registers-mean"])
def test_a_classic_vit_runs_in_naflex_mode_as_timms_naflexvit_runs_its_weights(kwargs):
    """(timm's conversion adds to the source tensors in place, hence the copy; it drops a register's position
    row when the table has prefix rows: not tested.)"""
    tiny = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4)
    classic = randomize(VisionTransformer(img_size=32, num_classes=5, **tiny, **kwargs))
    theirs = NaFlexVit(NaFlexVitCfg(**tiny, pos_embed_grid_size=(4, 4), fc_norm=kwargs.get("fc_norm", False),
                                    **{k: v for k, v in kwargs.items() if k not in ("no_embed_class", "fc_norm")}),
                       num_classes=5).eval()
    theirs.load_state_dict(checkpoint_filter_fn({k: v.clone() for k, v in classic.state_dict().items()}, theirs))
    ours = vitkit.ViT(vitkit.ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, mlp_dim=128,
                                       num_classes=5, class_token=kwargs["class_token"],
                                       pool="cls" if kwargs["global_pool"] == "token" else "mean",
                                       reg_tokens=kwargs.get("reg_tokens", 0), fc_norm=kwargs.get("fc_norm", False),
                                       no_embed_class=kwargs.get("no_embed_class", False)))
    ours.load_state_dict(classic.state_dict())
    batch = patchify(mixed_batch(), (8, 8))
    with torch.no_grad():
        close(ours.eval()(batch), theirs(batch.patches, patch_coord=batch.coords, patch_valid=batch.valid))


@pytest.mark.parametrize(("name", "words"), [("naflexvit_base_patch16_par_gap", "pos_embed_ar_preserving"),
                                             ("naflexvit_base_patch16_parfac_gap", "pos_embed")])
def test_naflex_position_tables_vitkit_does_not_compute_are_refused(tmp_path, name, words):
    theirs = timm.create_model(name, pretrained=False, num_classes=5, **SMALL)
    save_for_hf(theirs, tmp_path, model_args=SMALL)
    with pytest.raises(ValueError, match=words):
        vitkit.load(tmp_path)
