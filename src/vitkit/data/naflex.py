"""Images at their own aspect ratio under a token budget (NaFlex; timm's `naflex_transforms.py`).

The rule, for an image of H x W pixels, p x p patches and a budget of N tokens: the image is
resized, up or down, by the largest factor s for which its grid of whole patches,
ceil(H * s / p) x ceil(W * s / p) (at least one patch a side), has at most N patches. Each side is
rounded up to a whole patch, so the aspect ratio is kept to within one patch, and nothing is
cropped: the model sees the whole image. An image smaller than a patch is enlarged to at least
one. An image too elongated to keep its shape, one that would be stretched or squashed more than
`MAX_DISTORTION` times to give each side one patch (1 x 4000 pixels under 64 tokens), is refused
with the reason, as an unreadable file is: crop or pad it first, or raise the budget.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

from vitkit.data.decode import BadImage

MAX_DISTORTION = 2.0  # how much more (or less) elongated than itself an image may be shown


def check_budget(max_tokens: int, patch: tuple[int, int] | None = None) -> None:
    """A token budget of at least one token per image."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1 token per image, got {max_tokens!r}")


def fit_grid(size: tuple[int, int], patch: tuple[int, int], max_tokens: int) -> tuple[int, int]:
    """The (rows, columns) of whole patches an image of `size` (H, W) gets under `max_tokens`."""
    check_budget(max_tokens)
    (h, w), (ph, pw) = size, patch
    if h < 1 or w < 1:
        raise BadImage(f"an image of {h}x{w} pixels has nothing to show")
    # The grid grows with the scale and changes only where one side fills whole patches exactly:
    # the best grid has rows = k (the columns following) or columns = k (the rows following), and
    # along either the token count grows with k, so the largest k within the budget is found by bisection.
    by_rows = _largest(max_tokens, lambda k: max(1, math.ceil(w * k * ph / (h * pw) - 1e-9)))
    by_cols = _largest(max_tokens, lambda k: max(1, math.ceil(h * k * pw / (w * ph) - 1e-9)))
    best = max((1, 1), by_rows, by_cols[::-1], key=lambda g: g[0] * g[1])
    shown = (best[1] * pw / (best[0] * ph)) / (w / h)
    if not 1 / MAX_DISTORTION <= shown <= MAX_DISTORTION:
        raise BadImage(f"an image of {h}x{w} pixels cannot keep its shape in {max_tokens} tokens of {ph}x{pw} "
                       f"pixels (it would be {best[0]}x{best[1]} patches, {max(shown, 1 / shown):.0f}x out of "
                       "shape); crop or pad it, or raise --max-tokens")
    return best


def _largest(budget: int, other: object) -> tuple[int, int]:
    """(k, other(k)) for the largest k with k * other(k) <= budget ((0, 0) if none)."""
    low, high = 0, budget
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if mid * other(mid) <= budget else (low, mid - 1)
    return (low, other(low)) if low else (0, 0)


class ToGrid:
    """uint8 (C, H, W) of any size -> uint8 (C, rows * ph, cols * pw) by `fit_grid`: the whole image,
    its aspect ratio kept to within a patch. `min_tokens` < `max_tokens` (training): each image's
    budget is drawn uniformly between them (torch's generator, seeded per image by the loader), so
    the model learns many resolutions."""

    def __init__(self, patch: tuple[int, int], max_tokens: int, min_tokens: int | None = None):
        check_budget(max_tokens)
        self.patch, self.max_tokens = (int(patch[0]), int(patch[1])), max_tokens
        self.min_tokens = max(1, min(min_tokens or max_tokens, max_tokens))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        budget = self.max_tokens
        if self.min_tokens < self.max_tokens:
            budget = int(torch.randint(self.min_tokens, self.max_tokens + 1, ()))
        rows, cols = fit_grid(tuple(image.shape[-2:]), self.patch, budget)
        size = [rows * self.patch[0], cols * self.patch[1]]
        if list(image.shape[-2:]) == size:
            return image
        return v2.functional.resize(image, size, antialias=True)


def collate(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, list[tuple[str, str]]]:
    """Like `datasets.collate`, but the images stay a list: each has its own size."""
    good = [(x, y) for x, y, _ in batch if x is not None]
    problems = [p for _, _, p in batch if p is not None]
    return [x for x, _ in good], torch.tensor([y for _, y in good], dtype=torch.long), problems
