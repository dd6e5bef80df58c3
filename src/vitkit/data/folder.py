"""Image-folder trees (one sub-folder per class), on disk or inside a .tar / .tar.gz archive.

Only paths (or, for archives, the encoded bytes) are kept in memory; pixels are decoded by the
loader's workers. Files that are clearly unusable (empty, unreadable, a symlink loop) are reported
at scan time; files that fail to decode are reported by the loader.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.data.decode import IMAGE_EXTENSIONS

SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}
# An archive's images are read into memory as their encoded bytes: a member larger than this is
# skipped (and listed), and an archive whose images add up to more is refused, so that a small
# archive cannot expand into gigabytes (a 408 KB archive can hold a 400 MiB member).
MAX_MEMBER_BYTES = 64 << 20
MAX_ARCHIVE_BYTES = 4 << 30


@dataclass
class FileTree:
    """Images of one split: `sources[i]` (a path, or bytes from an archive) has class `labels[i]`."""

    sources: list[str | bytes]
    names: list[str]  # for reports: the path, or archive:member
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def find_splits(root: Path) -> dict[str, Path | str]:
    """Map split name -> sub-folder (or archive prefix) when the tree has split folders."""
    names = _top_level_names(root)
    found = {}
    for split, aliases in SPLIT_NAMES.items():
        for alias in aliases:
            if alias in names:
                found[split] = alias
                break
    return found


def scan(root: Path, split_dir: str | None = None) -> FileTree:
    """All images under `root[/split_dir]/<class>/...`, classes sorted by name."""
    if is_archive(root):
        return _scan_archive(root, split_dir)
    base = root / split_dir if split_dir else root
    if not base.is_dir():
        raise FileNotFoundError(f"no such image folder: {base}")
    classes = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    tree = FileTree([], [], [], classes)
    for label, name in enumerate(classes):
        for path in sorted(_walk(base / name, tree.skipped)):
            tree.sources.append(path)
            tree.names.append(path)
            tree.labels.append(label)
    return tree


def _walk(folder: Path, skipped: list[tuple[str, str]]) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(folder, onerror=lambda e: skipped.append((e.filename, str(e)))):
        for file in files:
            if not file.lower().endswith(IMAGE_EXTENSIONS) or file.startswith("."):
                continue
            path = os.path.join(dirpath, file)
            problem = _unusable(path)
            if problem:
                skipped.append((path, problem))
            else:
                found.append(path)
    return found


def _unusable(path: str) -> str | None:
    try:
        size = os.stat(path).st_size  # follows symlinks: a loop or a dangling link fails here
    except OSError as e:
        return "symlink loop" if e.errno == 40 else (e.strerror or str(e))
    if size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def _unusable_member(member: tarfile.TarInfo, parts: list[str]) -> str | None:
    """Why an archive member that looks like an image cannot be one of the data set's images."""
    if any(part in ("", ".", "..") for part in parts) or member.name.startswith("/"):
        return "its path leaves the archive's folder"
    if member.issym() or member.islnk():
        return "a link, not a file (links in archives are not followed)"
    if not member.isfile():
        return "not a regular file"
    if member.size == 0:
        return "empty file (0 bytes)"
    if member.size > MAX_MEMBER_BYTES:
        return f"{member.size:,} bytes, more than an archive's image may have ({MAX_MEMBER_BYTES:,})"
    return None


def _top_level_names(root: Path) -> set[str]:
    if is_archive(root):
        with tarfile.open(root) as tar:
            return {m.name.lstrip("./").split("/")[0] for m in tar.getmembers() if m.isdir() or m.isfile()}
    return {e.name for e in os.scandir(root) if e.is_dir()}


def _scan_archive(archive: Path, split_dir: str | None) -> FileTree:
    """Read an archive's images into memory as encoded bytes (a CIFAR-10 archive is ~16 MB)."""
    by_class: dict[str, list[tuple[str, bytes]]] = {}
    skipped: list[tuple[str, str]] = []
    prefix, total = f"{split_dir}/" if split_dir else "", 0
    with tarfile.open(archive) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            parts = name[len(prefix):].split("/")
            if not name.startswith(prefix) or len(parts) < 2 or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                continue
            problem = _unusable_member(member, parts)
            if problem:
                skipped.append((f"{archive}:{member.name}", problem))
                continue
            if member.isfile():
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise ValueError(f"{archive} holds more than {MAX_ARCHIVE_BYTES >> 30} GiB of images, which an "
                                     "archive's images may not (they are read into memory): extract it into a folder")
                data = tar.extractfile(member).read()
                by_class.setdefault(parts[0], []).append((f"{archive}:{name}", data))
    classes = sorted(by_class)
    tree = FileTree([], [], [], classes, skipped)
    for label, cls in enumerate(classes):
        for name, data in sorted(by_class[cls], key=lambda item: item[0]):
            tree.sources.append(data)
            tree.names.append(name)
            tree.labels.append(label)
    return tree
