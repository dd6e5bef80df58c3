"""Turn any image file people actually have into a uint8 (channels, height, width) tensor.

Grayscale, RGBA, palette (with transparency), CMYK and 16-bit images are converted; anything PIL
cannot read raises `BadImage` with the reason, so callers can skip and report it.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# vitkit's own decompression-bomb guard. A 10000x10000 photo is a legitimate input, which PIL's
# default guard (Image.MAX_IMAGE_PIXELS, 89 Mpx: a warning, an error above 179 Mpx) would flag. PIL
# keeps that limit in a process-wide global that belongs to the host program, so vitkit never sets
# it for good: it checks each image's size itself, from the header, before decoding any pixels.
MAX_PIXELS = 400_000_000
_PIL_LIMIT = threading.Lock()


class BadImage(Exception):
    """A file that cannot be used as an image; the message says why."""


def read_image(source: str | Path | bytes, channels: int = 3, max_side: int | None = None,
               max_pixels: int | None = None) -> torch.Tensor:
    """Decode `source` (a path or the file's bytes) to uint8 (channels, H, W).

    `max_side` lets JPEG decoding shrink huge images on the fly (PIL's draft mode), which makes a
    10000 px photo cost about what a 1000 px one does when the model only needs 224 px anyway.
    `max_pixels` (default MAX_PIXELS) refuses larger images from their header, before decoding.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency, EXIF and PIL's own bomb warnings
            stream = io.BytesIO(source) if isinstance(source, bytes) else source
            with _open(stream) as img:
                if img.width * img.height > limit:  # only the header has been read so far
                    raise BadImage(f"{img.width}x{img.height} pixels is more than vitkit decodes ({limit:,} "
                                   "pixels): a decompression bomb?")
                if max_side and img.format == "JPEG":
                    img.draft("RGB" if channels == 3 else "L", (max_side, max_side))
                img.load()
                return pil_to_tensor(_convert(img, channels))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(_reason(e)) from None


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image's header alone, no pixel decoded (whatever it claims: the
    caller judges it); BadImage if there is none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(io.BytesIO(data), limit=None) as img:
                return img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(_reason(e)) from None


@contextmanager
def _open(stream, limit: int | None = MAX_PIXELS) -> Iterator[Image.Image]:
    """`Image.open` with PIL's global bomb limit lifted to vitkit's (`limit`; None: none, for reading
    a header alone) for the header parse only, then restored: vitkit's limit applies to vitkit's
    decoding, the host's to everything else."""
    with _PIL_LIMIT:
        host_limit = Image.MAX_IMAGE_PIXELS
        if host_limit is not None:
            Image.MAX_IMAGE_PIXELS = None if limit is None else max(host_limit, limit // 2)  # PIL raises above 2x
        try:
            img = Image.open(stream)
        finally:
            Image.MAX_IMAGE_PIXELS = host_limit
    with img:
        yield img


def _convert(img: Image.Image, channels: int) -> Image.Image:
    mode = "L" if channels == 1 else "RGB"
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit or float grayscale
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "F" or array.max() > 1.0 else 1.0
        img = Image.fromarray(np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("P", "PA", "LA", "RGBA", "La") or "transparency" in img.info:
        img = img.convert("RGBA")  # resolve palette and transparency before dropping alpha
    if channels not in (1, 3):
        raise BadImage(f"cannot make {channels}-channel images from files; use 1 or 3 channels")
    return img.convert(mode)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "cannot identify image file" in text:
        return "not an image file (unrecognised format)"
    if "truncated" in text.lower() or "broken data stream" in text.lower():
        return f"truncated or corrupt image data ({text})"
    return text
