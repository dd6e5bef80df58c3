"""torchvision's VisionTransformer state dicts load into vitkit and compute torchvision's logits."""

import pytest
import torch
import torchvision

import vitkit
from helpers import randomize
from peers import close


@pytest.mark.parametrize("representation", [None, 48])
def test_torchvision_vit_gives_its_logits_in_vitkit(tmp_path, representation):
    theirs = randomize(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=5,
        representation_size=representation))
    torch.save(theirs.state_dict(), tmp_path / "vit.pth")
    ours = vitkit.load(tmp_path / "vit.pth", heads=4).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(x))


def test_torchvision_paper_size_needs_no_heads(tmp_path):
    theirs = randomize(torchvision.models.vit_b_32(image_size=64, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "b32.pth")
    ours = vitkit.load(tmp_path / "b32.pth").eval()
    assert ours.config.heads == 12
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close(ours(x), theirs(x))
