"""Hugging Face transformers' ViTs, saved with save_pretrained, load into vitkit and compute what
transformers computes (logits, or the pooled output of a model without a head); vitkit's models
saved as Hugging Face load in transformers and back. The family: DeiT, DINOv2 (with registers),
SigLIP, CLIP, and the image tower of a two-tower SigLIP."""

import pytest
import torch
import transformers

import vitkit
from helpers import randomize
from peers import close

HF_CONFIGS = [
    pytest.param(dict(), id="default"),
    pytest.param(dict(qkv_bias=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6), id="tanh-no-bias"),
    pytest.param(dict(image_size=28, patch_size=14, num_channels=1), id="gray-p14"),
]


@pytest.mark.parametrize("overrides", HF_CONFIGS)
def test_hugging_face_vit_classifier_gives_its_logits_in_vitkit(tmp_path, overrides):
    config = transformers.ViTConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=128, image_size=32, patch_size=8, num_labels=5),
                                       **overrides})
    theirs = randomize(transformers.ViTForImageClassification(config))
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    assert ours.config.norm_eps == config.layer_norm_eps
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    with torch.no_grad():
        close(ours(x), theirs(pixel_values=x).logits)


def test_hugging_face_model_with_pooler_is_pre_logits(tmp_path):
    config = transformers.ViTConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=96, image_size=32, patch_size=16)
    theirs = randomize(transformers.ViTModel(config))
    theirs.save_pretrained(tmp_path, safe_serialization=False)  # pytorch_model.bin
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs(pixel_values=x).pooler_output)


def test_vitkit_saved_as_hugging_face_loads_in_transformers_and_back_unchanged(tmp_path):
    model = randomize(vitkit.create_model("vit_ti16", image_size=32, depth=2, num_classes=3))
    vitkit.save(model, tmp_path / "hf", format="hf", class_names=["a", "b", "c"])
    theirs = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.id2label[2] == "c"
    back = vitkit.load(tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(theirs(pixel_values=x).logits, model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value)


HF_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)


HF_FAMILY = [  # (model class, config), what the model computes that vitkit computes
    pytest.param(transformers.DeiTForImageClassificationWithTeacher,
                 transformers.DeiTConfig(**HF_SMALL, intermediate_size=64, num_labels=3), "logits", id="deit"),
    pytest.param(transformers.Dinov2Model, transformers.Dinov2Config(**HF_SMALL), "pooler_output", id="dinov2"),
    pytest.param(transformers.Dinov2WithRegistersModel,
                 transformers.Dinov2WithRegistersConfig(**HF_SMALL, num_register_tokens=4), "pooler_output",
                 id="dinov2-registers"),
    pytest.param(transformers.SiglipVisionModel, transformers.SiglipVisionConfig(**HF_SMALL, intermediate_size=64),
                 "pooler_output", id="siglip"),
    pytest.param(transformers.CLIPVisionModel,
                 transformers.CLIPVisionConfig(**HF_SMALL, intermediate_size=64, hidden_act="gelu"),
                 "pooler_output", id="clip"),
]


@pytest.mark.parametrize(("cls", "config", "output"), HF_FAMILY)
def test_each_hugging_face_family_model_gives_its_output_in_vitkit(tmp_path, cls, config, output):
    theirs = randomize(cls(config))
    with torch.no_grad():
        for name, p in theirs.named_parameters():  # small embeddings: a wrong LayerNorm eps shows
            if "patch_embedding" in name or "position_embedding" in name:
                p.mul_(1e-3)
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), getattr(theirs(pixel_values=x), output))


def test_the_image_tower_of_a_two_tower_siglip_gives_its_pooled_output(tmp_path):
    config = transformers.SiglipConfig(vision_config=dict(**HF_SMALL, intermediate_size=64),
                                       text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                        intermediate_size=64, vocab_size=50))
    theirs = randomize(transformers.SiglipModel(config))
    theirs.save_pretrained(tmp_path)
    ours = vitkit.load(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        close(ours(x), theirs.vision_model(pixel_values=x).pooler_output)
