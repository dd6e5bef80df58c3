"""Loading refuses what it cannot trust or convert, and says which file or weight: pickles that run
code, object arrays, truncated files, mismatched shapes, a format the file is not, and any weight
that no converter knows (never silently dropped)."""

import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
import transformers
from timm.models.vision_transformer import VisionTransformer

import vitkit
from peers import TINY, flax_npz


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(1), "evil": RunsCode()}, tmp_path / "evil.pth", pickle_module=pickle)
    with pytest.raises(ValueError, match="refusing to load"):
        vitkit.load(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_npz_with_object_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="object arrays"):
        vitkit.load(tmp_path / "obj.npz")


def test_truncated_file_names_the_file(tmp_path):
    model = vitkit.create_model("vit_ti4_32", depth=1)
    model.save_pretrained(tmp_path / "m")
    vitkit.save(model, tmp_path / "t.safetensors", format="timm")
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.safetensors"):
        vitkit.load(tmp_path / "t.safetensors")


def test_mismatched_shapes_are_named(tmp_path):
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3)
    state = theirs.state_dict()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(100, 64\)"):
        vitkit.load(tmp_path / "bad.pth", heads=4)


def test_wrong_format_named_by_the_user_is_explained(tmp_path):
    """Found by the CLI fuzzer: `convert --from jax` on timm weights used to raise a KeyError."""
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4, num_classes=3)
    torch.save(theirs.state_dict(), tmp_path / "w.pth")
    for fmt in ("jax", "hf", "torchvision", "vit-pytorch"):
        with pytest.raises(ValueError, match=f"not (in the|a) {fmt}|config.json"):
            vitkit.load(tmp_path / "w.pth", format=fmt, heads=4, image_size=32)


def with_extra_key(tmp_path, fmt):
    """A valid file of each format plus one weight that no converter knows; the load arguments."""
    if fmt == "hf":
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, image_size=32, patch_size=8, num_labels=3)
        transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
        from safetensors.torch import load_file, save_file

        state = load_file(tmp_path / "model.safetensors")
        save_file({**state, "vit.encoder.layer.0.surprise.weight": torch.ones(2)}, tmp_path / "model.safetensors")
        return tmp_path, {}, "vit.encoder.layer.0.surprise.weight"
    if fmt == "vit-pytorch":
        import vit_pytorch

        state = vit_pytorch.ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, heads=4,
                                mlp_dim=64).state_dict()
        args = {"heads": 4, "image_size": 32}
    elif fmt == "jax":
        source = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3)
        flax_npz(source, 4, tmp_path / "w.npz")
        state = dict(np.load(tmp_path / "w.npz"))
        extra = "Transformer/encoderblock_0/LayerScale_0/scale"
        np.savez(tmp_path / "w.npz", **state, **{extra: np.ones(32, np.float32)})
        return tmp_path / "w.npz", {}, extra
    elif fmt == "torchvision":
        state = torchvision.models.VisionTransformer(32, 8, 1, 4, 32, 64, num_classes=3).state_dict()
        args = {"heads": 4}
    else:
        state = VisionTransformer(img_size=32, patch_size=8, **TINY).state_dict()
        args = {"heads": 4}
    torch.save({**state, "surprise": torch.ones(2)}, tmp_path / "w.pth")
    return tmp_path / "w.pth", args, "surprise"


@pytest.mark.parametrize("fmt", ["timm", "hf", "torchvision", "jax", "vit-pytorch"])
def test_every_weight_is_converted_or_the_load_fails(tmp_path, fmt):
    path, args, extra = with_extra_key(tmp_path, fmt)
    with pytest.raises(ValueError, match=re.escape(repr(extra))):
        vitkit.load(path, **args)
