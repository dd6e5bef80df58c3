"""Archives and data sets made to mislead: members whose path leaves the archive's folder, links,
a member too large to read into memory, and --strict on the held-out splits' images."""

import io
import tarfile

from PIL import Image

from vitkit.cli import main
from vitkit.data import folder, spec


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, target: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_members_that_leave_the_archive_or_are_links_or_huge_are_skipped_and_listed(tmp_path):
    archive = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for c, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            for i in range(4):
                add(tar, f"train/{c}/{i}.png", png(colour))
        add(tar, "train/../../outside/y.png", png((0, 200, 0)))
        add(tar, "train/a/link.png", kind=tarfile.SYMTYPE, target="/etc/passwd")
        add(tar, "train/b/hard.png", kind=tarfile.LNKTYPE, target="train/a/0.png")
        add(tar, "train/b/huge.png", bytes(folder.MAX_MEMBER_BYTES + 1))
    splits = spec.read(str(archive))
    assert splits.classes == ["a", "b"] and len(splits.train) == 8
    reasons = dict(splits.skipped)
    assert reasons[f"{archive}:train/../../outside/y.png"] == "its path leaves the archive's folder"
    assert reasons[f"{archive}:train/a/link.png"].startswith("a link")
    assert reasons[f"{archive}:train/b/hard.png"].startswith("a link")
    assert reasons[f"{archive}:train/b/huge.png"].startswith(f"{folder.MAX_MEMBER_BYTES + 1:,} bytes")
    out = tmp_path / "run"
    assert main(["train", str(archive), "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert "skipped files: 4" in log and "its path leaves the archive's folder" in log


def test_strict_stops_on_a_held_out_images_failure_too(tmp_path, capsys):
    """A folder with its own validation split, one of whose images is corrupt (it passes the scan:
    it is not empty): --strict stops with it, as for a training image."""
    for split, count in (("train", 6), ("val", 2)):
        for c, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(count):
                (tmp_path / "data" / split / c / f"{i}.png").write_bytes(png(colour))
    (tmp_path / "data" / "val" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["train", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "4", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "lenient")]) == 0
    assert "broken.png" in (tmp_path / "lenient" / "train.log").read_text()
    capsys.readouterr()
    assert main([*args, "--strict", "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "broken.png" in err[-1] and err[-1].endswith("(--strict)")


def test_an_archive_whose_images_add_up_to_too_much_is_refused(tmp_path, monkeypatch, capsys):
    """Members under the per-member cap that together pass the archive's total (read into memory)."""
    monkeypatch.setattr(folder, "MAX_ARCHIVE_BYTES", 2000)
    with tarfile.open(tmp_path / "many.tar", "w") as tar:
        for i in range(8):
            add(tar, f"train/{'ab'[i % 2]}/{i}.png", png((30 * i, 0, 0)) + bytes(400))
    assert main(["train", str(tmp_path / "many.tar"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds more than" in err[0] and "extract it into a folder" in err[0]
