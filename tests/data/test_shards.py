"""WebDataset shards: `vitkit shard` writes every kind of data vitkit reads with the images' own
bytes and an index written last; `wds:` streams them in equal ranges per process and worker,
resumes within what the shuffle buffer holds, and skips (and lists) what it cannot use, never
unpickling anything a shard holds."""

import hashlib
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from helpers import write_idx
from vitkit.cli import main
from vitkit.data import sharding, shards
from vitkit.data import spec as data_spec
from vitkit.data.decode import read_image


def folder_of_images(root, per_class=5):
    """PNG and JPEG files in two classes: each file's own bytes must reach the shards unchanged."""
    for c, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            kind = "PNG" if i % 2 else "JPEG"
            Image.new("RGB", (12 + i, 10), tuple(v + 3 * i for v in colour)).save(
                root / c / f"{i}.{kind.lower().replace('jpeg', 'jpg')}", format=kind)
    return root


def samples_of(folder) -> dict[str, list[tuple[bytes, int]]]:
    """Every split's samples as (image bytes, label), read from the shards with plain tarfile."""
    index = json.loads((folder / "dataset.json").read_text())
    found = {}
    for split, meta in index["splits"].items():
        rows = []
        for shard in meta["shards"]:
            assert hashlib.sha256((folder / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
            with tarfile.open(folder / shard["name"]) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            keys = sorted({name.rsplit(".", 1)[0] for name in members})
            assert len(keys) == shard["samples"]
            for key in keys:
                image = next(v for k, v in members.items() if k.startswith(key + ".") and not k.endswith(".cls"))
                rows.append((image, int(members[key + ".cls"])))
        found[split] = rows
    return found


def test_a_folder_is_sharded_with_each_files_own_bytes(tmp_path):
    source = folder_of_images(tmp_path / "pets")
    result = sharding.write(str(source), tmp_path / "out", shard_bytes=1500, val_split=0.2, seed=3)
    written = samples_of(tmp_path / "out")
    originals = {p.read_bytes(): int(p.parent.name == "dog") for p in source.rglob("*.*")}
    shard_images = [image for rows in written.values() for image, _ in rows]
    assert sorted(shard_images) == sorted(originals)  # every file once, never re-encoded
    assert all(originals[image] == label for rows in written.values() for image, label in rows)
    assert {k: len(v) for k, v in written.items()} == {"train": 8, "val": 2} == result["splits"]
    assert result["shards"]["train"] > 1  # the size target cut it
    index = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert index["classes"] == ["cat", "dog"] and index["splits"]["val"]["per_class"] == [1, 1]


def test_arrays_are_sharded_as_lossless_png(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 3)
    sharding.write(f"mnist:{tmp_path}", tmp_path / "out", shard_bytes=10**6, val_split=0.25)
    source = data_spec.load(f"mnist:{tmp_path}", val_split=0.25)
    back = data_spec.read(f"wds:{tmp_path / 'out'}")
    assert back.name == "mnist" and back.channels == 1 and back.image_size == (28, 28)
    for split in ("train", "val", "test"):
        expected = {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(getattr(source, split).images,
                                                                          getattr(source, split).labels, strict=True)}
        got = {(tuple(x.flatten().tolist()), y) for x, y, _ in shards.ShardEval(getattr(back, split), None)}
        assert got == expected, split


def test_an_archive_is_sharded_as_its_members_bytes(tmp_path):
    source = folder_of_images(tmp_path / "pets")
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="pets")
    sharding.write(str(tmp_path / "pets.tar.gz"), tmp_path / "out", shard_bytes=10**6, val_split=0.2)
    written = sorted(image for rows in samples_of(tmp_path / "out").values() for image, _ in rows)
    assert written == sorted(p.read_bytes() for p in source.rglob("*.*"))


def test_a_killed_sharding_leaves_no_data_set_that_looks_whole(tmp_path):
    source = folder_of_images(tmp_path / "pets", per_class=8)

    def killed(count, seen=[0]):  # noqa: B006 (the count of one run)
        seen[0] += count
        if seen[0] == 9:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sharding.write(str(source), tmp_path / "out", shard_bytes=1500, progress=killed)
    assert not (tmp_path / "out" / "dataset.json").exists()
    with pytest.raises(FileNotFoundError, match=r"no dataset\.json"):
        data_spec.read(f"wds:{tmp_path / 'out'}")
    for shard in (tmp_path / "out").glob("*.tar"):  # the shards that were closed are whole
        with tarfile.open(shard) as tar:
            assert tar.getmembers()


def numbered(tmp_path, sizes: list[int], name="train") -> shards.ShardSplit:
    """Shards of the given sizes whose every image carries its own number in its pixels."""
    made, n = [], 0
    for i, size in enumerate(sizes):
        path = tmp_path / f"{name}-{i:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(size):
                buffer = io.BytesIO()
                Image.fromarray(np.array([[n // 256, n % 256]], dtype=np.uint8)).save(buffer, format="PNG")
                for suffix, data in (("png", buffer.getvalue()), ("cls", str(n % 2).encode())):
                    info = tarfile.TarInfo(f"s{n:06d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                n += 1
        made.append(shards.Shard(path, size))
    return shards.ShardSplit(name, tuple(made), ("even", "odd"), channels=1)


def flat(batches: list[list[int]]) -> list[int]:
    return [n for batch in batches for n in batch]


def numbers(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


def epoch_of(split, rank, ranks, workers, batch, steps_done=0, shuffle=50, epoch=0):
    stream = shards.ShardStream(split, None, batch, seed=7, rank=rank, ranks=ranks, workers=workers, shuffle=shuffle)
    stream.set_epoch(epoch, steps_done)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [numbers(images) for images, _, _ in loader]


def test_every_process_takes_the_same_steps_however_unevenly_the_shards_divide(tmp_path):
    split = numbered(tmp_path, [1, 37, 5, 60, 2, 19])  # 124 samples
    batch, ranks, workers = 4, 2, 3
    steps = split.steps_per_epoch(batch, ranks, workers)
    assert steps == 3 * (124 // (2 * 3 * 4))  # 5 batches a worker
    seen = []
    for rank in range(ranks):
        batches = epoch_of(split, rank, ranks, workers, batch)
        assert len(batches) == steps  # no process waits for another at the epoch's end
        seen += [n for b in batches for n in b]
    assert len(seen) == len(set(seen)) == 120  # each sample once; 124 - 120 left over, < a batch a worker


def test_the_order_changes_with_the_epoch(tmp_path):
    split = numbered(tmp_path, [10, 10, 10, 10])
    a, b = epoch_of(split, 0, 1, 1, 8, epoch=0), epoch_of(split, 0, 1, 1, 8, epoch=1)
    assert a != b and sorted(flat(a)) == sorted(flat(b))


@pytest.mark.parametrize("shuffle", [1, 16])
def test_a_resumed_epoch_yields_what_it_had_left_within_the_shuffle_buffer(tmp_path, shuffle):
    """A run stopped after 5 steps and resumed: the epoch yields as many batches as it had left;
    without a buffer exactly the samples it had left, with one at most a buffer's worth per worker
    again (and as many skipped)."""
    split = numbered(tmp_path, [23, 40, 17, 31])
    whole = epoch_of(split, 0, 1, 2, 4, shuffle=shuffle)
    before = whole[:5]
    after = epoch_of(split, 0, 1, 2, 4, steps_done=5, shuffle=shuffle)
    assert len(before) + len(after) == len(whole)
    first, second = [n for b in before for n in b], [n for b in after for n in b]
    twice = len(set(first) & set(second))
    assert twice <= 2 * (shuffle - 1)  # two workers, each with shuffle - 1 samples waiting in its buffer
    assert len(set(first) | set(second)) == len(flat(whole)) - twice
    if shuffle == 1:
        assert sorted(first + second) == sorted(flat(whole))


def test_training_on_shards_resumes_mid_epoch_to_the_same_step_count(tmp_path, capsys):
    source = folder_of_images(tmp_path / "pets", per_class=12)
    assert main(["shard", str(source), "--out", str(tmp_path / "wds"), "--shard-size", "2KB"]) == 0
    args = ["train", f"wds:{tmp_path / 'wds'}", "--epochs", "2", "--batch-size", "4", "--workers", "2"]
    from vitkit.train import trainer

    def stop(run):
        run.stop.requested = run.progress.global_step == 7
    trainer.STEP_HOOKS.append(stop)
    try:
        assert main([*args, "--out", str(tmp_path / "run")]) == 130
    finally:
        trainer.STEP_HOOKS.remove(stop)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["steps"], result["epochs"]) == (8, 2)  # 22 samples: 2 workers x 8 each, 4 steps an epoch
    assert main(["train", "--resume", str(tmp_path / "run"), "--workers", "1"]) == 2
    assert "resume it with the same (--nproc, --workers)" in capsys.readouterr().err


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_bad_samples_are_skipped_and_listed_and_nothing_is_unpickled(tmp_path):
    """A sample without a class, one whose image does not decode, and .pyd/.pth members that
    webdataset's own decoders would unpickle: the first two skipped and listed, the pickles never
    read, and the epoch still every process's equal count."""
    source = folder_of_images(tmp_path / "pets", per_class=8)
    sharding.write(str(source), tmp_path / "wds", shard_bytes=10**9, val_split=0.25)
    shard = tmp_path / "wds" / "train-000000.tar"
    marker = tmp_path / "ran"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    hostile = pickle.dumps(RunsCode(str(marker)))
    keys = sorted({m.name.rsplit(".", 1)[0] for m, _ in members})
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            key, suffix = member.name.rsplit(".", 1)
            if key == keys[0] and suffix == "cls":
                continue  # the first sample loses its class
            if key == keys[1] and suffix != "cls":
                data = b"not an image"  # the second its image
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        for suffix in ("pyd", "pth"):
            info = tarfile.TarInfo(f"{keys[2]}.{suffix}")
            info.size = len(hostile)
            tar.addfile(info, io.BytesIO(hostile))
    index = json.loads((tmp_path / "wds" / "dataset.json").read_text())
    index["splits"]["train"]["shards"][0].update(bytes=shard.stat().st_size,
                                                 sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    (tmp_path / "wds" / "dataset.json").write_text(json.dumps(index))
    out = tmp_path / "run"
    assert main(["train", f"wds:{tmp_path / 'wds'}", "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "skipped files: 2" in log and "no class in the sample" in log and "not an image file" in log
    assert not marker.exists()


@pytest.mark.parametrize("break_it", ["missing", "truncated", "count", "altered"])
def test_a_broken_shard_set_is_one_line(tmp_path, capsys, break_it):
    source = folder_of_images(tmp_path / "pets", per_class=8)
    sharding.write(str(source), tmp_path / "wds", shard_bytes=10**9, val_split=0.25)
    shard, index = tmp_path / "wds" / "train-000000.tar", tmp_path / "wds" / "dataset.json"
    if break_it == "missing":
        shard.unlink()
    elif break_it == "truncated":
        shard.write_bytes(shard.read_bytes()[:2048])
    elif break_it == "altered":  # one byte of an image's data: the same size, the same samples
        with tarfile.open(shard) as tar:
            at = next(m for m in tar.getmembers() if m.name.endswith(".png")).offset_data + 40
        data = bytearray(shard.read_bytes())
        data[at] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:  # the index promises more samples than the shard has
        meta = json.loads(index.read_text())
        meta["splits"]["train"]["shards"][0]["samples"] += 5
        del meta["splits"]["train"]["shards"][0]["bytes"]
        index.write_text(json.dumps(meta))
    code = main(["train", f"wds:{tmp_path / 'wds'}", "--epochs", "1", "--batch-size", "2", "--workers", "0",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "train-000000.tar" in err[-1], err
    assert {"missing": "is missing", "truncated": "truncated", "count": "dataset.json says",
            "altered": "its sha256 differs"}[break_it] in err[-1]


def test_a_folder_sharded_reads_back_as_the_folder(tmp_path):
    source = folder_of_images(tmp_path / "pets")
    sharding.write(str(source), tmp_path / "wds", shard_bytes=10**9, val_split=0.2)
    back = data_spec.read(f"wds:{tmp_path / 'wds'}")
    images = {tuple(x.flatten().tolist()) for split in (back.train, back.val)
              for x, _, _ in shards.ShardEval(split, None)}
    assert images == {tuple(read_image(str(p)).flatten().tolist()) for p in source.rglob("*.*")}


@pytest.mark.parametrize("command", ["embed", "fewshot", "inspect"])
def test_commands_that_read_by_index_say_so_for_shards(tmp_path, capsys, command):
    sharding.write("digits", tmp_path / "wds", shard_bytes=10**9)
    vitkit_model = tmp_path / "model"
    from vitkit.model.presets import create_model

    create_model("vit_ti4_28", depth=1, num_classes=10, in_channels=1, image_size=8).save_pretrained(vitkit_model)
    data = f"wds:{tmp_path / 'wds'}"
    args = {"embed": [str(vitkit_model), data, "--out", str(tmp_path / "e.npy")],
            "fewshot": [str(vitkit_model), "--data", data, "--shots", "1"],
            "inspect": [str(vitkit_model), "--data", data]}[command]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads images by index" in err[0]


def test_shards_are_not_sharded_again_and_take_no_token_budget(tmp_path, capsys):
    sharding.write("digits", tmp_path / "wds", shard_bytes=10**9)
    data = f"wds:{tmp_path / 'wds'}"
    assert main(["shard", data, "--out", str(tmp_path / "again")]) == 2
    assert main(["train", data, "--max-tokens", "16", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already shards" in err[0] and "--max-tokens reads images by index" in err[1]
    assert not (tmp_path / "again").exists()


def test_a_brace_pattern_trains_with_the_index_or_with_whole_shards_held_out(tmp_path):
    index = sharding.write("digits", tmp_path / "wds", shard_bytes=20_000)
    last = index["shards"]["train"] - 1
    pattern = f"wds:{tmp_path / 'wds'}/train-{{000000..{last - 2:06d}}}.tar"
    picked = data_spec.load(pattern)  # the index's own validation and test splits stay
    assert len(picked.train.shards) == last - 1
    assert (len(picked.val), len(picked.test)) == (index["splits"]["val"], index["splits"]["test"])
    (tmp_path / "wds" / "dataset.json").unlink()
    unindexed = data_spec.load(pattern, val_split=0.2, seed=3)
    kept, held = ({s.path.name for s in split.shards} for split in (unindexed.train, unindexed.val))
    assert kept.isdisjoint(held) and len(kept | held) == last - 1
    assert 0.2 <= len(unindexed.val) / (len(unindexed.val) + len(unindexed.train)) < 0.35
    assert data_spec.load(pattern, val_split=0.2, seed=3).val == unindexed.val
    with pytest.raises(ValueError, match=r"in 1 shard\(s\) cannot hold out --val-split 0.1"):
        data_spec.load(f"wds:{tmp_path / 'wds'}/train-000000.tar")


def test_a_brace_pattern_may_name_only_shards_its_index_lists(tmp_path):
    sharding.write("digits", tmp_path / "wds", shard_bytes=10**9)
    with pytest.raises(ValueError, match=r"does not list, such as trian-000000\.tar"):
        data_spec.load(f"wds:{tmp_path / 'wds'}/trian-{{000000..000001}}.tar")
