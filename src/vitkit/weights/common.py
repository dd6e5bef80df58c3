"""What every format's conversion shares: no weight is dropped silently, and the source's patch
grid is read, never guessed.

A converter reads the source state dict through `Source`, which remembers every key it was asked
for; `check_consumed` then refuses a file with weights that were not converted (a big_vision MAP
head loaded as mean pooling computes a different function). The grid of a position table comes
from a recorded image size; from the count alone only a square can be told.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vitkit.model.config import Size, pair
from vitkit.model.normalization import Normalization


class Source(dict):
    """A state dict that remembers which keys were read (`[key]` or `.get`), not merely tested."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        value = super().__getitem__(key)
        self.read.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (self.get would recurse)

    def set_aside(self, keys: list[str]) -> None:
        """Count weights as used that are left out on purpose (the caller says why)."""
        self.read.update(k for k in keys if k in self)

    def unread(self) -> list[str]:
        return sorted(k for k in self if k not in self.read)


def check_consumed(state: Source, source: str) -> None:
    """Every weight of the source was converted, or the load fails naming what was not."""
    left = state.unread()
    if left:
        raise ValueError(f"{source}: {len(left)} weight(s) that vitkit does not convert: {left[:8]}"
                         f"{' ...' if len(left) > 8 else ''}; a model without them would compute a "
                         "different function, so nothing was loaded")


def source_image_size(positions: int, prefix: int, patch: tuple[int, int], *, recorded: Size | None = None,
                      target: Size | None = None, prefix_rows: bool | None = None,
                      default_rows: bool | None = None) -> tuple[Size, bool]:
    """(image size, no_embed_class) of a position table with `positions` rows for `prefix` tokens.

    A recorded size decides. Else a target size whose grid has as many positions is taken as it
    is (nothing is resampled). Else only a square grid is accepted. `prefix_rows` says whether the
    table has rows for the prefix tokens, if the format tells; else a size decides, or for a
    square `default_rows` (the format's default), or the count if that is None too.
    """
    options = [True, False] if prefix_rows is None else [prefix_rows]
    options = options if prefix else [True]
    patches = {rows: positions - (prefix if rows else 0) for rows in options}
    for size in (recorded, target):
        if size is None:
            continue
        (h, w), (ph, pw) = pair(size), patch
        fits = [rows for rows in options if patches[rows] == (h // ph) * (w // pw)]
        if fits:
            return size, not fits[0]
        if size is recorded:
            raise ValueError(f"the position table has {positions} rows, which does not fit the recorded "
                             f"image size {h}x{w} with patch {ph}x{pw} and {prefix} prefix token(s)")
    if prefix and prefix_rows is None and default_rows is not None:
        options = [default_rows]
    squares = [rows for rows in options if patches[rows] > 0 and math.isqrt(patches[rows]) ** 2 == patches[rows]]
    if len(squares) != 1:
        what = "could be more than one grid" if squares else "is not a square grid"
        raise ValueError(f"the position table's {positions} rows {what} and nothing recorded the image "
                         "size; pass source_image_size=(height, width)")
    side = math.isqrt(patches[squares[0]])
    size = side * patch[0] if patch[0] == patch[1] else (side * patch[0], side * patch[1])
    return size, not squares[0]


def normalization_from(mean: Any, std: Any, scale: float = 1.0) -> Normalization:
    """A Normalization from a source's per-channel lists (one value when every channel has the
    same, so that timm's [0.5, 0.5, 0.5] reads as `half`). `scale` is what the source multiplies
    [0, 1] pixels by before normalising (Hugging Face: 255 * rescale_factor)."""
    mean = [float(m) / scale for m in ([mean] if isinstance(mean, (int, float)) else mean)]
    std = [float(s) / scale for s in ([std] if isinstance(std, (int, float)) else std)]
    if len(set(mean)) == 1 and len(set(std)) == 1:
        mean, std = mean[:1], std[:1]
    return Normalization(tuple(mean), tuple(std))
