"""vitkit's decompression-bomb guard is its own: PIL's process-wide limit stays the host's, large
photos still decode, and an image beyond vitkit's limit is refused from its header."""

import io
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image

from vitkit.data import decode
from vitkit.data.decode import BadImage, read_image


def png(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit grayscale PNG of zeros, built without holding its pixels in memory. `rows` < height
    writes only that many rows: enough for a header-only check, not a decodable image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0, then the row's pixels
    body = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_importing_vitkit_leaves_pils_limit_alone():
    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
            "import vitkit, vitkit.cli, vitkit.data.decode, vitkit.infer, vitkit.explain.report; "
            "assert Image.MAX_IMAGE_PIXELS == before, (before, Image.MAX_IMAGE_PIXELS); print(before)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 1024 * 1024 * 1024 // 4 // 3  # PIL's own default


def test_a_large_photo_decodes_and_the_hosts_limit_is_restored(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000_000)  # a host stricter than PIL's default
    image = read_image(png(10_000, 9_000), channels=1)  # 90 Mpx: over PIL's default, under vitkit's
    assert tuple(image.shape) == (1, 9_000, 10_000)
    assert Image.MAX_IMAGE_PIXELS == 40_000_000
    with pytest.raises(Image.DecompressionBombError):  # the host's own Image.open still uses its limit
        Image.open(io.BytesIO(png(10_000, 9_000, rows=1)))


@pytest.mark.parametrize("host_limit", [Image.MAX_IMAGE_PIXELS, None], ids=["pil-default", "host-disabled"])
def test_a_decompression_bomb_is_refused_from_its_header(monkeypatch, host_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", host_limit)
    bomb = png(30_000, 20_000, rows=1)  # 600 Mpx claimed; a real one would inflate to 600 MB
    with pytest.raises(BadImage, match="decompression bomb"):
        read_image(bomb, channels=1)
    assert host_limit == Image.MAX_IMAGE_PIXELS


def test_vitkits_limit_is_a_setting_of_its_own(monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 100 * 100 - 1)
    with pytest.raises(BadImage, match="100x100 pixels is more than vitkit decodes"):
        read_image(png(100, 100), channels=1)
    assert read_image(png(99, 100), channels=1).shape == (1, 100, 99)
