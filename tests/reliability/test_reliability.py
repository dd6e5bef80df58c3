"""Reliability: bad files, bad numbers and failed writes lose nothing. Run alone with
`pytest tests/reliability`."""

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.cli import main
from vitkit.train import checkpoint, trainer


def make_good(root, per_class=6):
    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), tuple(min(255, v + 5 * i) for v in colour)).save(root / c / f"{i}.png")


def make_bad(folder):
    """Every kind of bad or odd file people have; returns the names that must be skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    (folder / "text.jpg").write_text("just some text")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(png, "PNG")
    data = bytearray(png.getvalue())
    data[-20] ^= 0xFF  # corrupt a byte inside the IDAT chunk: its CRC no longer matches
    (folder / "bad-crc.png").write_bytes(bytes(data))
    (folder / "loop.png").symlink_to(folder / "loop.png")
    # usable oddities: converted, not skipped
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(folder / "sixteen-bit.png")
    Image.new("CMYK", (16, 16), (0, 200, 0, 0)).save(folder / "cmyk.jpg")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.save(folder / "palette.png", transparency=0)
    Image.new("RGB", (1, 1), (200, 0, 0)).save(folder / "tiny.png")
    Image.new("RGB", (10000, 10000), (210, 10, 10)).save(folder / "huge.jpg", quality=50)
    return {"zero.jpg", "truncated.jpg", "text.jpg", "bad-crc.png", "loop.png"}


def test_bad_files_are_skipped_and_reported(tmp_path, capsys):
    make_good(tmp_path / "data")
    bad = make_bad(tmp_path / "data" / "red")
    code = main(["train", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--val-split", "0.3", "--out", str(tmp_path / "run"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    log = (tmp_path / "run" / "train.log").read_text()
    for name in bad:
        assert f"red/{name}:" in log, name
    for name in ("sixteen-bit.png", "cmyk.jpg", "palette.png", "tiny.png", "huge.jpg"):
        assert name not in log
    assert json.loads(out)["skipped_files"] == len(bad)


def test_strict_stops_at_the_first_bad_file(tmp_path, capsys):
    make_good(tmp_path / "data")
    (tmp_path / "data" / "red" / "zero.jpg").write_bytes(b"")
    code = main(["train", str(tmp_path / "data"), "--epochs", "1", "--strict", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "zero.jpg" in err and "empty file" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_skipped(tmp_path):
    make_good(tmp_path / "data")
    locked = tmp_path / "data" / "red" / "locked.png"
    Image.new("RGB", (16, 16)).save(locked)
    locked.chmod(0)
    assert main(["train", str(tmp_path / "data"), "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert "locked.png: permission denied" in (tmp_path / "run" / "train.log").read_text()


def explode_from_epoch_2(run) -> None:
    """From the second epoch on, a learning rate that sends the weights (and the loss) to inf."""
    if run.progress.epoch == 1:
        run.parts.schedule.base_lr, run.plan.recipe.clip_grad = 1e30, None


def test_nonfinite_loss_stops_with_advice_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    make_good(tmp_path / "data", per_class=20)
    common = ["train", str(tmp_path / "data"), "--batch-size", "4", "--workers", "0", "--warmup-epochs", "0",
              "--precision", "fp32"]
    monkeypatch.setattr(trainer, "STEP_HOOKS", [explode_from_epoch_2])
    code = main([*common, "--epochs", "3", "--out", str(tmp_path / "nan")])
    err = capsys.readouterr().err
    assert code == 2
    assert "at epoch 2, step" in err and "--lr" in err and "--precision fp32" in err and "--skip-nonfinite" in err
    saved = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert saved["progress"]["epoch"] == 1  # the last good checkpoint: after epoch 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    code = main([*common, "--epochs", "2", "--out", str(tmp_path / "skip"), "--skip-nonfinite", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["nonfinite_steps"] > 0


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        checkpoint.save(path, {"model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left behind


def test_hostile_config_rejected_before_allocation(tmp_path):
    from vitkit.model.config import ViTConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": "vitkit", "vit": {"depth": 10**6, "dim": 768}}))
    (run / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="depth"):
        ViTConfig.load(run / "config.json")
    assert main(["predict", str(run), str(tmp_path)]) == 2


def test_png_crc_helper_really_breaks_the_file(tmp_path):
    """Guard for the fixture above: a PNG whose chunk CRC is wrong."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    data = png.getvalue()
    length = struct.unpack(">I", data[33:37])[0]
    chunk = data[37:41 + length]
    assert struct.unpack(">I", data[41 + length:45 + length])[0] == zlib.crc32(chunk)


@pytest.mark.parametrize("command", ["convert", "export", "eval"])
def test_interrupted_commands_leave_no_partial_file(tmp_path, monkeypatch, command):
    """Ctrl-C while a command writes its output: the file is either absent or complete."""
    import matplotlib.figure
    import safetensors.torch

    import vitkit

    model = vitkit.create_model("vit_ti4_32", depth=1, num_classes=10, in_channels=1, image_size=16)
    model.save_pretrained(tmp_path / "run", {"classes": [str(i) for i in range(10)], "data": "digits"})
    torch.save({k: v for k, v in model.state_dict().items()}, tmp_path / "timm.pth")

    def interrupted(*args, **kwargs):
        target = next(a for a in [*args, *kwargs.values()] if isinstance(a, (str, os.PathLike)) and "tmp" in str(a))
        with open(target, "wb") as f:
            f.write(b"half of a file")
        raise KeyboardInterrupt

    if command == "convert":
        monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
        monkeypatch.setattr("vitkit.model.native.save_file", interrupted)
        argv = ["convert", str(tmp_path / "timm.pth"), "--out", str(tmp_path / "out"), "--heads", "3"]
        out = tmp_path / "out"
    elif command == "export":
        monkeypatch.setattr(torch.onnx, "export", lambda model, args, f, **kw: interrupted(f))
        argv = ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")]
        out = tmp_path / "m.onnx"
    else:
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, f, **kw: interrupted(f))
        argv = ["eval", str(tmp_path / "run"), "--workers", "0"]
        out = tmp_path / "run" / "confusion-test.png"
    assert main(argv) == 130
    leftovers = [p.name for p in out.parent.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    assert not out.exists() or (out.is_dir() and not any(out.iterdir()))


@pytest.mark.parametrize("shards", ["/tmp/elsewhere", "../../outside", "checkpoint-shards/../../x", "step-1-zzzzzzzz"])
def test_a_checkpoint_naming_foreign_shards_is_refused(tmp_path, capsys, shards):
    """torch.distributed.checkpoint unpickles a shard folder's .metadata: checkpoint.pt may name
    only the run's own checkpoint-shards/step-N-XXXXXXXX folder."""
    make_good(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4", "--out", str(run)]) == 0
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint.save(run / "checkpoint.pt", {**saved, "shards": shards})
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not this run's own" in err and "Traceback" not in err
