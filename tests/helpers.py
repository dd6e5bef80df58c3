"""Small shared test helpers."""

import gzip
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values: zero-initialised heads would hide any mismatch."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the largest magnitude in b."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def hub_cache(root, repo: str, write) -> Path:
    """A Hugging Face Hub cache under `root`, laid out as huggingface_hub keeps it, holding one
    snapshot of `repo` ("ORG/NAME") whose files `write(folder)` puts there. Point
    huggingface_hub.constants.HF_HUB_CACHE at `root` and set HF_HUB_OFFLINE to read it offline."""
    storage = Path(root) / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text("0" * 40)
    snapshot = storage / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    write(snapshot)
    return snapshot


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file (MNIST's format: a magic number, the shape, then the bytes), gzipped or not."""
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_folder(root: Path, classes=("red", "green", "blue"), per_class=6, size=16, corrupt=True) -> Path:
    """An image folder, one subfolder per class of coloured PNGs (each a little wider than the last);
    with `corrupt`, a file that is no JPEG and an empty PNG among them."""
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "gray": (128,) * 3}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = colours.get(c, (i * 30, 90, 150))
            Image.new("RGB", (size + i, size), tuple(min(255, v + 3 * i) for v in base)).save(root / c / f"{i}.png")
    if corrupt:
        (root / classes[0] / "broken.jpg").write_bytes(b"not a jpeg at all")
        (root / classes[1] / "empty.png").write_bytes(b"")
    return root


def run_cli(capsys, *args) -> tuple[int, dict | str, str]:
    """`vitkit ARGS` in this process: the exit code, stdout (parsed when it is JSON) and stderr."""
    from vitkit.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    try:
        return code, json.loads(out), err
    except json.JSONDecodeError:
        return code, out, err


def assert_same_run(a, b, tol=1e-5, skip_key_bias_of_inner_dim=None):
    """The same weights and metrics. `skip_key_bias_of_inner_dim`: leave out the attention keys' bias,
    whose gradient is zero up to rounding (softmax ignores a shift shared by a row's logits), so
    that AdamW turns two processes' different rounding into steps of the learning rate's size."""
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for key in wa:
        diff = (wa[key] - wb[key]).abs()
        if skip_key_bias_of_inner_dim and key.endswith("attn.qkv.bias"):  # [queries, keys, values]
            diff = torch.cat([diff[:skip_key_bias_of_inner_dim], diff[2 * skip_key_bias_of_inner_dim:]])
        assert diff.max().item() < tol, key
    ma = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_top1"] for m in ma] == [m["val_top1"] for m in mb]
    for key in ("train_loss", "val_loss"):  # the same loss: evaluation sharded with no image lost or repeated
        assert [round(m[key], 5) for m in ma] == [round(m[key], 5) for m in mb]


def png(colour, size=(10, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def fruit(count: int, image="img", label="fine", bad_row=None):
    """Rows of a Hugging Face dataset (images as PNG bytes, labels alternating) and its features."""
    import datasets

    rows = {image: [{"bytes": b"not an image" if i == bad_row else png((200, 9 * i, 30)), "path": None}
                    for i in range(count)], label: [i % 2 for i in range(count)]}
    return rows, datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=["apple", "pear"])})
