"""Weights by name from the Hugging Face Hub, offline: a cache laid out as huggingface_hub keeps it,
holding what timm uploads, read for a preset's pretrained tag (`vit_ti16:augreg_in21k_ft_in1k`)
and for `hf-hub:ORG/NAME`; a table entry that does not fit its preset and an unknown tag are
refused in one line."""

import pytest
import timm
import torch

import vitkit
from helpers import randomize
from peers import close, offline_hub, timm_vit_in_an_offline_hub
from vitkit.model.normalization import IMAGENET


def test_preset_tag_loads_timms_upload_from_the_offline_hub_cache(tmp_path, monkeypatch):
    """Offline: a Hugging Face Hub cache laid out as huggingface_hub keeps it, holding what timm uploads
    for the repository that the name resolves to."""
    theirs = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    offline_hub(tmp_path, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", theirs, monkeypatch)
    ours = vitkit.create_model("vit_ti16", pretrained="augreg_in21k_ft_in1k").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        close(ours(x), theirs(x))
    assert vitkit.create_model("vit_ti16", pretrained="augreg_in21k_ft_in1k", num_classes=10).head.out_features == 10
    by_name = vitkit.load("vit_ti16:augreg_in21k_ft_in1k").eval()  # what --init, convert, fewshot, ... take
    with torch.no_grad():
        close(by_name(x), theirs(x))
    with pytest.raises(ValueError, match="no pretrained weights 'nope' for vit_ti16"):
        vitkit.load("vit_ti16:nope")
    tiny = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    monkeypatch.setitem(vitkit.weights.hub.PRETRAINED, "vit_s16", {"wrong": tiny})  # a table entry in error
    with pytest.raises(ValueError, match="differ from the preset"):
        vitkit.create_model("vit_s16", pretrained="wrong")


def test_hybrid_preset_tag_loads_timms_upload_and_a_plain_vit_is_not_taken_for_it(tmp_path, monkeypatch):
    """Offline: the repository a hybrid preset's tag names, as timm uploads it, loads into the preset;
    a plain ViT of the same sizes is not taken for it."""
    theirs = randomize(timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False))
    repo = "timm/vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k"
    offline_hub(tmp_path, repo, theirs, monkeypatch)
    ours = vitkit.create_model("vit_ti32_rstem", pretrained="augreg_in21k_ft_in1k").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        close(ours(x), theirs(x))
    monkeypatch.setitem(vitkit.weights.hub.PRETRAINED, "vit_ti32", {"wrong": repo})  # a table entry in error
    with pytest.raises(ValueError, match="differ from the preset in \\['patch_embed'"):
        vitkit.create_model("vit_ti32", pretrained="wrong")


def test_unknown_pretrained_tag_lists_the_known_ones():
    with pytest.raises(ValueError, match="augreg2_in21k_ft_in1k") as e:
        vitkit.create_model("vit_b16", pretrained="in22k")
    assert "\n" not in str(e.value)


REPO = "acme/tiny-vit"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """REPO in an offline Hugging Face Hub cache: (cache folder, the timm model uploaded there)."""
    return timm_vit_in_an_offline_hub(tmp_path / "hub", REPO, monkeypatch)


def test_hf_hub_name_loads_from_the_offline_cache_with_its_normalization(hub):
    _, theirs = hub
    ours = vitkit.load(f"hf-hub:{REPO}").eval()
    assert ours.normalization == IMAGENET  # from the repository's config.json
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"hf-hub:acme/absent: .*cached"):  # offline, not in the cache
        vitkit.load("hf-hub:acme/absent")
