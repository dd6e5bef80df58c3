"""`vitkit embed --maps`: the feature maps a detection or segmentation head reads, checked against
timm's Segment Anything encoder (forward_intermediates through its neck) on the same images."""

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from timm.models import save_for_hf
from timm.models.vision_transformer_sam import VisionTransformerSAM

from helpers import randomize
from vitkit.cli import main


def test_embed_maps_of_a_sam_encoder_are_timms(tmp_path, capsys):
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, window_size=3,
                global_attn_indexes=(1,), use_rel_pos=True, neck_chans=16)
    theirs = randomize(VisionTransformerSAM(**args, num_classes=0))
    theirs.pretrained_cfg = {"architecture": "samvit_custom", "input_size": [3, 32, 32], "mean": [0.5] * 3,
                             "std": [0.5] * 3}
    save_for_hf(theirs, tmp_path / "sam", model_args=args)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for i, name in enumerate(("a", "b")):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray(pixels[i]).save(tmp_path / "images" / name / "0.png")
    out = tmp_path / "maps.safetensors"
    assert main(["embed", str(tmp_path / "sam"), str(tmp_path / "images"), "--layer", "2", "--layer-norm", "--maps",
                 "--out", str(out), "--workers", "0"]) == 0
    with safe_open(out, "pt") as f:
        maps = f.get_tensor("tokens")
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        expected = theirs.forward_intermediates(x, indices=[2], norm=True, intermediates_only=True)[0]
    assert maps.shape == (2, 16, 4, 4)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)
    assert main(["embed", str(tmp_path / "sam"), str(tmp_path / "images"), "--maps", "--out", str(out)]) == 2
    assert "--maps applies to the tokens of --layer N" in capsys.readouterr().err
