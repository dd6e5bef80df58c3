"""The input normalization travels with the weights: read from what each format records (timm's
pretrained_cfg, Hugging Face's preprocessor_config.json, vitkit's config.json), each source's
known value where nothing is recorded (and said so), and written back by every saved format in
the form its own library reads."""

import json
import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers
from timm.models.vision_transformer import VisionTransformer

import vitkit
from helpers import randomize
from peers import TINY, flax_npz
from vitkit.model.normalization import HALF, IMAGENET, AssumedNormalization, Normalization


def weights_without_normalization(tmp_path, fmt):
    """A file of each format that records no normalization, and the load arguments."""
    if fmt == "vit-pytorch":
        import vit_pytorch

        state = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=4,
                                mlp_dim=64).state_dict()
        torch.save(state, tmp_path / "w.pt")
        return tmp_path / "w.pt", {"heads": 4, "image_size": 32}
    if fmt == "jax":
        flax_npz(torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3), 4, tmp_path / "w.npz")
        return tmp_path / "w.npz", {}
    if fmt == "torchvision":
        state = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3).state_dict()
    elif fmt == "hf":
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
        return tmp_path, {}
    elif fmt == "deit":
        state = timm.models.deit.VisionTransformerDistilled(img_size=32, patch_size=8, **TINY).state_dict()
    else:
        state = VisionTransformer(img_size=32, patch_size=8, **TINY).state_dict()
    torch.save(state, tmp_path / "w.pth")
    return tmp_path / "w.pth", {"heads": 4}


@pytest.mark.parametrize(("fmt", "expected"), [("timm", "half"), ("deit", "imagenet"), ("hf", "half"),
                                               ("torchvision", "imagenet"), ("jax", "half"), ("vit-pytorch", "half")])
def test_each_source_gets_its_known_normalization_and_says_so(tmp_path, fmt, expected):
    """From Python too: a warning (not a log line only the command shows) says what was assumed."""
    path, args = weights_without_normalization(tmp_path, fmt)
    with pytest.warns(AssumedNormalization) as said:
        model = vitkit.load(path, **args)
    assert model.normalization == Normalization.parse(expected)
    assert len(said) == 1 and f"assuming {expected}" in str(said[0].message) and "normalize=" in str(said[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedNormalization)  # the caller's choice needs no word
        assert vitkit.load(path, **args, normalize="0.2,0.3").normalization == Normalization((0.2,), (0.3,))


def small_timm_dir(tmp_path, config_json):
    theirs = VisionTransformer(img_size=32, patch_size=8, **TINY)
    from safetensors.torch import save_file

    tmp_path.mkdir()
    save_file(theirs.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_args": {"num_heads": 4}, **config_json}))
    return tmp_path


def test_timm_normalization_from_config_json_then_timm_registry(tmp_path):
    cfg = {"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedNormalization)  # recorded: nothing to say
        model = vitkit.load(small_timm_dir(tmp_path / "a", cfg))
    assert model.normalization == Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    model = vitkit.load(small_timm_dir(tmp_path / "half", {"pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    assert model.normalization == HALF and model.normalization.describe() == "half"
    # no mean/std in config.json: the architecture's own pretrained_cfg from timm's registry
    registered = timm.models.get_pretrained_cfg("deit_tiny_patch16_224")
    with pytest.warns(AssumedNormalization, match="timm's registry"):
        model = vitkit.load(small_timm_dir(tmp_path / "b", {"architecture": "deit_tiny_patch16_224"}))
    assert model.normalization == Normalization.parse({"mean": registered.mean, "std": registered.std}) == IMAGENET
    model = vitkit.load(small_timm_dir(tmp_path / "c", {"architecture": "vit_base_patch16_clip_224",
                                                        "pretrained_cfg": {"tag": "openai"}}))
    clip = timm.models.get_pretrained_cfg("vit_base_patch16_clip_224.openai")
    assert model.normalization == Normalization(clip.mean, clip.std)


def test_hugging_face_preprocessor_config_gives_what_its_image_processor_computes(tmp_path):
    weights_without_normalization(tmp_path, "hf")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    for kwargs in (dict(image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.2, 0.1]),
                   dict(image_mean=[0.5] * 3, image_std=[0.25] * 3, rescale_factor=1 / 127.5),
                   dict(do_normalize=False, rescale_factor=1 / 127.5),
                   dict(do_rescale=False, image_mean=[100] * 3, image_std=[50] * 3)):
        processor = transformers.ViTImageProcessor(do_resize=False, **kwargs)
        processor.save_pretrained(tmp_path)
        model = vitkit.load(tmp_path)
        want = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
        torch.testing.assert_close(model.normalization(pixels, 3), want, rtol=1e-5, atol=1e-5)
    deit = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                   image_size=32, patch_size=8, num_labels=3)
    transformers.DeiTForImageClassificationWithTeacher(deit).save_pretrained(tmp_path / "deit")
    assert vitkit.load(tmp_path / "deit").normalization == IMAGENET  # facebook/deit-*'s published value


@pytest.mark.parametrize("fmt", ["hf", "timm", "vitkit"])
def test_saved_weights_carry_the_normalization(tmp_path, fmt):
    model = randomize(vitkit.create_model("vit_ti16", image_size=32, depth=1, num_classes=3))
    model.normalization = Normalization((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    vitkit.save(model, tmp_path / fmt, format=fmt)
    assert vitkit.load(tmp_path / fmt).normalization == model.normalization
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = model.normalization(torch.from_numpy(image).permute(2, 0, 1)[None], 3)
    if fmt == "hf":  # what Hugging Face's own processor makes of the file
        processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / fmt)
        got = torch.from_numpy(processor(images=image, return_tensors="np")["pixel_values"])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if fmt == "timm":  # and timm's data config
        kwargs = json.loads((tmp_path / fmt / "config.json").read_text())
        theirs = VisionTransformer(**kwargs["model_args"])
        theirs.pretrained_cfg = kwargs["pretrained_cfg"]
        data = timm.data.resolve_data_config({}, model=theirs)
        assert (tuple(data["mean"]), tuple(data["std"])) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))


def test_vitkit_directory_without_a_recorded_normalization_says_what_it_assumes(tmp_path):
    from vitkit.model.native import save_weights

    model = vitkit.create_model("vit_ti4_32", depth=1)
    save_weights(model.state_dict(), model.config, tmp_path)  # as vitkit wrote runs before it recorded one
    with pytest.warns(AssumedNormalization, match="does not record its input normalization.*assuming half"):
        assert vitkit.load(tmp_path).normalization == HALF


def test_a_bare_deit_state_dict_from_python_warns_what_it_assumed(tmp_path):
    """A timm DeiT state dict (ImageNet statistics, as DeiT trains) loaded from Python: said, not silent."""
    torch.save(timm.models.deit.VisionTransformerDistilled(img_size=32, patch_size=8, **TINY).state_dict(),
               tmp_path / "deit.pth")
    with pytest.warns(AssumedNormalization, match="assuming imagenet"):
        assert vitkit.load(tmp_path / "deit.pth", heads=4).normalization == IMAGENET


def test_every_model_vitkit_builds_saves_its_normalization(tmp_path):
    """create_model(...).save_pretrained() records vitkit's own normalization; loading it back is quiet."""
    vitkit.create_model("vit_ti4_32", depth=1).save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["normalize"] == HALF.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedNormalization)
        assert vitkit.load(tmp_path / "new").normalization == HALF


def test_a_transposed_position_grid_is_resampled_not_copied():
    """A 12x16 grid's table loaded into a 16x12 model has as many rows: the state dict says which
    grid it is for, so the table is resampled (as from any other grid), never copied row by row."""
    from vitkit.model import position

    wide = randomize(vitkit.create_model("vit_ti16", image_size=(192, 256), depth=1))
    tall = vitkit.create_model("vit_ti16", image_size=(256, 192), depth=1)
    tall.load_state_dict(wide.state_dict())
    expected = position.resample(wide.pos_embed.detach(), (16, 12), 1, old_grid=(12, 16))
    torch.testing.assert_close(tall.pos_embed.detach(), expected)
    assert not torch.equal(tall.pos_embed, wide.pos_embed)
    with pytest.warns(UserWarning, match="no recorded grid: taken to be this model's 16x12 grid"):
        tall.load_state_dict(dict(wide.state_dict()))  # a plain dict (a safetensors file's) cannot say
