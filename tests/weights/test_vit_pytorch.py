"""vit-pytorch's state dicts (the write-up's code) load into vitkit and compute vit-pytorch's logits;
the heads, which the weights do not record, are asked for by name."""

import pytest
import torch
import vit_pytorch

import vitkit
from helpers import randomize
from peers import close


def test_vit_pytorch_state_dict_gives_its_logits_in_vitkit(tmp_path):
    theirs = randomize(vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=4, dim=48, depth=2, heads=3,
                                       mlp_dim=96, dim_head=24))
    torch.save(theirs.state_dict(), tmp_path / "vp.pt")
    ours = vitkit.load(tmp_path / "vp.pt", heads=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_vit_pytorch_missing_heads_is_named():
    theirs = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=10, dim=64, depth=1, heads=4,
                             mlp_dim=128)
    with pytest.raises(ValueError, match="heads"):
        vitkit.from_vit_pytorch(theirs.state_dict(), image_size=32, heads=None)
