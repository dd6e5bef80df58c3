"""`vitkit.load` whatever the format: the model comes in eval mode, and loads at another image size
(positions resampled) with another class count (a new head, said in the log)."""

import torch
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize


def test_loaded_models_come_ready_to_predict(tmp_path):
    """A run's weights may carry patch dropout: `load` gives eval mode, so predictions are fixed."""
    model = randomize(vitkit.create_model("vit_ti4_32", depth=1, patch_dropout=0.5))
    model.save_pretrained(tmp_path / "m")
    vitkit.save(model, tmp_path / "t.safetensors", format="timm")
    x = torch.randn(2, 3, 32, 32)
    for loaded in (vitkit.load(tmp_path / "m"), vitkit.load(tmp_path / "t.safetensors")):
        assert not loaded.training
        torch.testing.assert_close(loaded(x), loaded(x))


def test_load_at_another_size_and_class_count_resamples_positions_and_makes_a_new_head(tmp_path, caplog):
    theirs = randomize(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3))
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    ours = vitkit.load(tmp_path / "w.pth", heads=4, image_size=64, num_classes=10)
    assert ours.pos_embed.shape == (1, 1 + 64, 64) and ours.head.out_features == 10
    assert "new head for 10 classes" in caplog.text
