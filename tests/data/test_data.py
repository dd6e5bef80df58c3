"""Each data format, parsed from small files written here in that exact format."""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_idx
from vitkit.data import arrays, folder
from vitkit.data import spec as data_spec
from vitkit.data.datasets import ArrayImages
from vitkit.data.decode import BadImage, read_image
from vitkit.data.loader import ArrayBatches, EpochSampler, mix_seed, train_loader


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_plain_or_gzipped_read_as_the_arrays_written(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    x, y = arrays.idx_split(tmp_path, "train")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.uint8
    assert np.array_equal(x[:, 0].numpy(), images) and np.array_equal(y.numpy(), labels)
    splits = data_spec.load(f"fashion-mnist:{tmp_path}", val_split=0.3)
    assert splits.classes[0] == "T-shirt/top" and len(splits.test) == 7


def test_idx_truncated_is_explained(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 2, 2), np.uint8), False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        arrays.read_idx(tmp_path / "x")


def test_real_fashion_mnist_header_if_present():
    from pathlib import Path

    root = Path(__file__).parents[3] / "shared" / "data" / "fashion-mnist"
    if not root.is_dir():
        pytest.skip("shared Fashion-MNIST files not present")
    x, y = arrays.idx_split(root, "test")
    assert x.shape == (10000, 1, 28, 28) and int(y.max()) == 9


def write_cifar10(root, n_per_batch=4):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        expected.append((data, labels))
        (root / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return expected


def test_cifar10_reads_the_same_from_a_folder_and_an_archive(tmp_path):
    expected = write_cifar10(tmp_path / "cifar-10-batches-py")
    train, test, classes = arrays.cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    assert classes[0] == "airplane" and train[0].shape == (20, 3, 32, 32)
    # row-major 3072 = 3 x 32 x 32, channels first: pixel (r, g, b) at 0, 1024, 2048
    assert train[0][0, 1, 0, 0] == expected[0][0][0, 1024]
    assert test[1].tolist() == expected[5][1]
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train2, _, _ = arrays.cifar(archive, "cifar10")
    assert torch.equal(train2[0], train[0])


def test_cifar100_reads_fine_labels_and_100_class_names(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("train", "test"):
        (tmp_path / name).write_bytes(pickle.dumps({
            b"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8),
            b"fine_labels": [0, 1, 2, 3, 99], b"coarse_labels": [0] * 5}))
    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}))
    _train, test, classes = arrays.cifar(tmp_path, "cifar100")
    assert len(classes) == 100 and test[1].tolist() == [0, 1, 2, 3, 99]


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path, capsys):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Boom(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load builtins\.print"):
        arrays.cifar(tmp_path, "cifar10")
    assert "pwned" not in capsys.readouterr().out


def test_digits_split_is_fixed_and_stratified():
    (xtr, _ytr), (xte, yte), _classes = arrays.digits()
    assert (len(xtr), len(xte)) == (1437, 360) and xtr.shape[1:] == (1, 8, 8)
    counts = torch.bincount(yte, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    (xtr2, _), _, _ = arrays.digits()
    assert torch.equal(xtr, xtr2) and int(xtr.max()) == 255


def save(img: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


@pytest.mark.parametrize(("make", "suffix"), [
    (lambda: Image.new("L", (5, 4), 128), ".png"),
    (lambda: Image.new("RGBA", (5, 4), (255, 0, 0, 0)), ".png"),
    (lambda: Image.new("CMYK", (5, 4), (0, 255, 0, 0)), ".jpg"),
    (lambda: Image.new("P", (5, 4), 3), ".gif"),
    (lambda: Image.fromarray(np.full((4, 5), 65535, np.uint16)), ".png"),
    (lambda: Image.new("RGB", (5, 4), (1, 2, 3)), ".webp"),
    (lambda: Image.new("RGB", (5, 4), (1, 2, 3)), ".bmp"),
])
def test_image_modes_are_converted(tmp_path, make, suffix):
    path = save(make(), tmp_path / f"img{suffix}")
    rgb = read_image(str(path), 3)
    gray = read_image(str(path), 1)
    assert rgb.shape == (3, 4, 5) and gray.shape == (1, 4, 5) and rgb.dtype == torch.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = save(Image.fromarray(np.full((2, 2), 32768, np.uint16)), tmp_path / "a.png")
    assert int(read_image(str(path), 1)[0, 0, 0]) == 128


def test_palette_png_with_transparency_keeps_its_colours(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    path = save(img, tmp_path / "p.png", transparency=0)
    assert read_image(str(path), 3)[:, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(("content", "reason"), [
    (b"this is text, not a JPEG", "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 20, ""),
])
def test_bad_bytes_raise_bad_image(content, reason):
    with pytest.raises(BadImage, match=reason or None):
        read_image(content, 3)


def test_truncated_jpeg_raises_bad_image(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "JPEG")
    with pytest.raises(BadImage):
        read_image(buffer.getvalue()[: len(buffer.getvalue()) // 2], 3)


def make_tree(root, classes=("cat", "dog"), per_class=3, size=16):
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(Image.new("RGB", (size, size), (80 * c, 40 * i, 100)), root / name / f"{i}.png")
    return root


def test_image_folder_scan_reports_unusable_files(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "loop.jpg").symlink_to(root / "cat" / "loop.jpg")
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    tree = folder.scan(root)
    assert tree.classes == ["cat", "dog"] and len(tree.sources) == 6
    reasons = dict(tree.skipped)
    assert reasons[str(root / "cat" / "empty.jpg")] == "empty file (0 bytes)"
    assert "loop" in reasons[str(root / "cat" / "loop.jpg")]


def test_image_folder_from_tar_gz_equals_folder(tmp_path):
    make_tree(tmp_path / "data" / "train")
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data", arcname=".")
    from_dir = data_spec.load(str(tmp_path / "data"), val_split=0.34)
    from_tar = data_spec.load(str(archive), val_split=0.34)
    assert from_dir.classes == from_tar.classes == ["cat", "dog"]
    assert len(from_dir.train) == len(from_tar.train) == 4 and len(from_dir.val) == 2
    for i in range(len(from_dir.train)):
        assert torch.equal(from_dir.train[i][0], from_tar.train[i][0])


def test_split_folders_are_used(tmp_path):
    make_tree(tmp_path / "train", per_class=4)
    make_tree(tmp_path / "val", per_class=2)
    splits = data_spec.load(str(tmp_path))
    assert (len(splits.train), len(splits.val)) == (8, 4)


@pytest.mark.parametrize(("spec", "error", "words"), [
    ("imagenet:/x", ValueError, "unknown data kind"),
    ("/no/such/folder", FileNotFoundError, "no such file"),
    ("cifar10:", ValueError, "needs a path"),
])
def test_bad_data_specs_are_one_clear_error(spec, error, words):
    with pytest.raises(error, match=words):
        data_spec.load(spec)


def test_eval_matches_classes_by_name(tmp_path):
    make_tree(tmp_path / "d", classes=("dog", "cat"))
    data, _ = data_spec.load_for_eval(str(tmp_path / "d"), "test", ["bird", "cat", "dog"], 3)
    assert sorted(set(data.labels.tolist())) == [1, 2]
    with pytest.raises(ValueError, match=r"\['cow'\].*knows"):
        make_tree(tmp_path / "e", classes=("cow",))
        data_spec.load_for_eval(str(tmp_path / "e"), "test", ["cat", "dog"], 3)


def test_train_and_test_folders_hold_out_validation_from_train(tmp_path):
    make_tree(tmp_path / "train", per_class=5)
    make_tree(tmp_path / "test", per_class=2)
    splits = data_spec.load(str(tmp_path), val_split=0.2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)


@pytest.mark.parametrize(("world", "skip"), [(1, 0), (2, 0), (2, 3)])
def test_array_batches_are_the_data_loaders_batches(world, skip):
    """In-memory images are gathered a batch at a time; each rank must get its slice of the epoch's
    permutation (made here by hand), as the DataLoader path gives it, also when a resumed epoch
    skips its done batches."""
    images = torch.randint(0, 256, (103, 3, 4, 4), dtype=torch.uint8)
    data = ArrayImages(images, torch.randint(0, 10, (103,)))
    for rank in range(world):
        loader, sampler = train_loader(data, None, 12, seed=7, workers=0, rank=rank, world=world)
        ours = ArrayBatches(data, EpochSampler(103, 12, 7, rank, world), torch.device("cpu"))
        for epoch in (0, 1):
            for s in (sampler, ours.sampler):
                s.set_epoch(epoch, skip)
            order = torch.randperm(103, generator=torch.Generator().manual_seed(mix_seed(7, epoch)))
            by_hand = [order[b * 12 + rank * 12 // world:][:12 // world] for b in range(skip, 103 // 12)]
            got, expected = list(ours), list(loader)
            assert len(got) == len(ours) == len(by_hand) == len(expected)
            for (x, y, _), index, (x_loader, y_loader, _) in zip(got, by_hand, expected, strict=True):
                assert torch.equal(x, images[index]) and torch.equal(y, data.labels[index])
                assert torch.equal(x, x_loader) and torch.equal(y, y_loader)


def test_array_batches_leave_the_gpu_to_the_model_when_the_images_are_large(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 103 * 48 - 1, 10**9))
    data = ArrayImages(torch.zeros(103, 3, 4, 4, dtype=torch.uint8), torch.zeros(103, dtype=torch.long))
    ours = ArrayBatches(data, EpochSampler(103, 12, 7), torch.device("cuda"))
    assert ours.device.type == ours.images.device.type == "cpu"
