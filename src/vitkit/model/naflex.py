"""Images at their own aspect ratio and size: NaFlex batches (NaViT's native resolution, FlexiViT's
flexible grids; timm's `naflexvit.py`).

Each image is a sequence of its own patches (as many as its grid has) with each patch's (row,
column) in that grid; a batch pads the sequences to the longest, and a mask says which tokens are
padding. The model then
- projects the flattened patches with its patch-embedding kernel (a convolution with stride =
  kernel is a linear map of each patch),
- adds to each image the learned position table resampled to that image's grid (as timm's NaFlex
  does: the table is resampled per grid, bicubically, then read at each patch's (row, column)),
- attends with the padding masked out as keys, and pools over the valid tokens only.
The data side (resizing to fit a token budget, patchifying, padding) is `vitkit.data.naflex`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.model.noise import uniform as noise_uniform

ViT = nn.Module  # vitkit.model.vit.ViT, which imports this module: named here for the reader


class Patches(NamedTuple):
    """A NaFlex batch: B images as patch sequences padded to the longest, N tokens."""

    patches: torch.Tensor  # (B, N, ph * pw * C), each patch flattened as (ph, pw, C) (timm's NaFlex order)
    coords: torch.Tensor  # (B, N, 2) long: the (row, column) of each patch in its image's grid
    valid: torch.Tensor  # (B, N) bool: False for padding

    def to(self, *args, **kwargs) -> Patches:
        """Moved (and the patches cast) like `Tensor.to`; coordinates and mask keep their dtypes."""
        device = kwargs.get("device", next((a for a in args if not isinstance(a, torch.dtype)), None))
        if device is None:
            return Patches(self.patches.to(*args, **kwargs), self.coords, self.valid)
        return Patches(self.patches.to(*args, **kwargs), self.coords.to(device), self.valid.to(device))

    def chunk(self, pieces: int) -> list[Patches]:
        """Split along the batch (gradient accumulation), like `Tensor.chunk`."""
        return [Patches(*parts) for parts in zip(*(t.chunk(pieces) for t in self), strict=True)]

    def grids(self) -> list[tuple[int, int]]:
        """Each image's patch grid (rows, columns), from its valid tokens' coordinates."""
        coords = self.coords.masked_fill(~self.valid[..., None], -1)
        return [(int(r) + 1, int(c) + 1) for r, c in coords.amax(dim=1).tolist()]


def check_config(c: object) -> None:
    """A model that can take NaFlex batches (a `ViTConfig`), or the reason it cannot."""
    if getattr(c, "patch_embed", None) not in ("conv", "linear-ln"):
        raise ValueError(f"patch_embed={getattr(c, 'patch_embed', 'none')!r} runs a CNN across patch borders and "
                         "cannot take patch sequences; NaFlex (a token budget) needs patch_embed 'conv' or 'linear-ln'")
    if c.window_size or c.rel_pos or c.neck_dim:
        raise ValueError("windowed attention, relative positions and SAM's neck need a whole image grid; give "
                         "this model images, not NaFlex patch sequences (no token budget)")


def check(model: ViT, batch: Patches) -> None:
    """What a NaFlex batch must be for this model: clear errors, not a shape mismatch deep inside."""
    c = model.config
    check_config(c)
    (ph, pw), (b, n) = c.patch_hw, batch.valid.shape
    if batch.patches.ndim != 3 or batch.patches.shape[:2] != (b, n) or batch.coords.shape != (b, n, 2):
        raise ValueError(f"NaFlex patches must be (B, N, {ph}*{pw}*{c.in_channels}) with coords (B, N, 2) and valid "
                         f"(B, N); got {tuple(batch.patches.shape)}, {tuple(batch.coords.shape)}, {(b, n)}")
    if batch.patches.shape[2] != ph * pw * c.in_channels:
        raise ValueError(f"patches of {batch.patches.shape[2]} values do not fit the model's {ph}x{pw} patches of "
                         f"{c.in_channels} channels ({ph * pw * c.in_channels}); patchify at the model's patch size")
    if not batch.valid.any(dim=1).all():
        raise ValueError("every image of a NaFlex batch needs at least one valid patch")


def project(model: ViT, patches: torch.Tensor) -> torch.Tensor:
    """(B, N, ph * pw * C) patches -> (B, N, dim) tokens by the model's own patch embedding."""
    embed = model.patch_embed
    if embed.kind == "linear-ln":
        return embed.norm_out(embed.proj(embed.norm_in(patches)))
    weight = embed.proj.weight  # (dim, C, ph, pw) -> (dim, ph * pw * C), the patches' order
    return F.linear(patches, weight.permute(0, 2, 3, 1).flatten(1).to(patches.dtype),
                    None if embed.proj.bias is None else embed.proj.bias.to(patches.dtype))


def positions(model: ViT, batch: Patches) -> torch.Tensor | None:
    """(B, N, dim): each token's position embedding, the model's table resampled to its image's
    grid (once per distinct grid) and read at the token's (row, column); zero for padding."""
    if model.pos_embed is None:
        return None
    rows = model.config.pos_prefix_rows
    out = batch.patches.new_zeros(*batch.valid.shape, model.config.dim)
    grids = batch.grids()
    for grid in sorted(set(grids)):
        images = torch.tensor([i for i, g in enumerate(grids) if g == grid], device=out.device)
        table = model.position_embedding(grid)[0, rows:].to(out.dtype)  # (rows * cols, dim)
        count, coords = grid[0] * grid[1], batch.coords[images]
        if _row_major(coords, batch.valid[images], grid):  # patchify's layout: the table as it is, no gather
            out[images, :count] = table.expand(len(images), -1, -1)  # (whose gradient is a sum: deterministic)
            continue
        index = (coords[..., 0] * grid[1] + coords[..., 1]).clamp(0, count - 1)
        out[images] = table[index] * batch.valid[images, :, None]
    return out


def _row_major(coords: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> bool:
    """Whether these images' tokens are their grid in row-major order, then padding."""
    count = grid[0] * grid[1]
    if coords.shape[1] < count or not valid[:, :count].all() or valid[:, count:].any():
        return False
    r, c = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return bool((coords[:, :count] == torch.stack([r.flatten(), c.flatten()], 1).to(coords.device)).all())


def embed(model: ViT, batch: Patches) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaFlex batch -> the first block's tokens (B, prefix + N, dim) and the (B, prefix + N)
    mask of valid tokens (the prefix tokens are always valid)."""
    check(model, batch)
    x = project(model, batch.patches)
    pos = positions(model, batch)
    if pos is not None:
        x = x + pos
    prefix = [t.expand(x.shape[0], -1, -1).to(x.dtype)
              for t in (model.cls_token, model.dist_token, model.reg_token) if t is not None]
    if prefix and model.pos_embed is not None and model.config.pos_prefix_rows:  # classic ViTs: the prefix rows
        rows = model.pos_embed[:, :model.config.pos_prefix_rows].to(x.dtype)
        prefix = [torch.cat(prefix, 1) + rows]
    x = torch.cat([*prefix, x], dim=1)
    valid = torch.cat([batch.valid.new_ones(x.shape[0], model.config.num_prefix_tokens), batch.valid], 1)
    return model.norm_pre(model.pos_drop(x)), valid


def pool(model: ViT, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The model's pooling over the valid tokens of a NaFlex batch (before fc_norm, pre-logits)."""
    c, n = model.config, model.config.num_prefix_tokens
    if c.distilled:
        return (tokens[:, 0] + tokens[:, 1]) / 2
    if c.pool == "cls":
        return tokens[:, 0]
    if c.pool == "map":
        return model.attn_pool(tokens[:, n:], valid[:, n:])
    if c.pool == "mean":
        tokens, valid = tokens[:, n:], valid[:, n:]
    weights = valid.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)


def drop_patches(x: torch.Tensor, valid: torch.Tensor, prefix: int, rate: float,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch dropout on a NaFlex batch: each image keeps a random (1 - rate) of its own valid
    patches (at least one); the sequences shrink to the longest kept. Returns tokens and mask."""
    head, patches, mask = x[:, :prefix], x[:, prefix:], valid[:, prefix:]
    draw = noise_uniform(noise, patches.shape[1], 0) if noise is not None else \
        torch.rand(patches.shape[:2], device=x.device)
    order = draw.masked_fill(~mask, 2.0).argsort(dim=1)  # the valid patches first, in random order
    keep = (mask.sum(1) * (1 - rate)).long().clamp_min(1)
    length = int(keep.max())
    order = order[:, :length]
    kept = patches.gather(1, order[..., None].expand(-1, -1, patches.shape[2]))
    kept_mask = torch.arange(length, device=x.device)[None, :] < keep[:, None]
    return torch.cat([head, kept], 1), torch.cat([valid[:, :prefix], kept_mask], 1)


def patchify(images: list[torch.Tensor], patch: tuple[int, int], length: int | None = None) -> Patches:
    """Images (C, H, W) of any sizes, each a whole number of patches, -> a NaFlex batch padded to
    the longest sequence (or to `length`): each image's patches in row-major order, flattened as
    (ph, pw, C), with their (row, column) and a mask of the valid tokens. Images of one size are
    cut in one operation."""
    ph, pw = patch
    bad = [tuple(x.shape[-2:]) for x in images if x.shape[-2] % ph or x.shape[-1] % pw]
    if bad:
        raise ValueError(f"image sizes {bad[:3]} are not whole {ph}x{pw} patches; resize them with "
                         "vitkit.data.naflex.ToGrid (or pad to a multiple of the patch)")
    longest = max((x.shape[-2] // ph) * (x.shape[-1] // pw) for x in images)
    n = longest if length is None else length
    if n < longest:
        raise ValueError(f"length={n} is shorter than the longest image's {longest} patches")
    first, channels = images[0], images[0].shape[0]
    patches = first.new_zeros(len(images), n, ph * pw * channels)
    coords = torch.zeros(len(images), n, 2, dtype=torch.long, device=first.device)
    valid = torch.zeros(len(images), n, dtype=torch.bool, device=first.device)
    for (h, w), where in _by_size(images).items():
        rows, cols, count = h // ph, w // pw, (h // ph) * (w // pw)
        x = torch.stack([images[i] for i in where])
        patches[where, :count] = x.reshape(len(where), channels, rows, ph, cols, pw).permute(0, 2, 4, 3, 5, 1) \
            .reshape(len(where), count, -1)
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        coords[where, :count] = torch.stack([r.flatten(), c.flatten()], 1).to(coords.device)
        valid[where, :count] = True
    return Patches(patches, coords, valid)


def _by_size(images: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape[-2:]), []).append(i)
    return groups


def inputs(images: list[torch.Tensor], normalization: object, channels: int, patch: tuple[int, int]) -> Patches:
    """uint8 (or [0, 1] float) images (C, H, W) at their own grids -> a normalised NaFlex batch for the
    model (`normalization`: a `Normalization`; gray images repeated to `channels`)."""
    out: list[torch.Tensor | None] = [None] * len(images)
    for _, where in _by_size(images).items():  # one normalisation per size
        for i, x in zip(where, normalization(torch.stack([images[i] for i in where]), channels), strict=True):
            out[i] = x
    return patchify(out, patch)


class Packed(NamedTuple):
    """NaViT's packing: several images in one sequence, each attending to its own tokens only. An
    image's segment is its prefix tokens (filled in by the model) then its patches."""

    patches: torch.Tensor  # (B, N, ph * pw * C); zeros in the prefix slots and the padding
    coords: torch.Tensor  # (B, N, 2) long: each patch's (row, column) in its image's grid
    segments: torch.Tensor  # (B, N) long: which image (0 .. images - 1) each token is of; -1 for padding
    prefix: torch.Tensor  # (B, N) long: k for an image's k-th prefix token, -1 for patches and padding

    @property
    def images(self) -> int:
        return int(self.segments.max()) + 1


def pack(images: list[torch.Tensor], patch: tuple[int, int], length: int, prefix: int = 0) -> Packed:
    """Images (C, H, W) in whole patches, packed first-fit (longest first) into sequences of `length`
    tokens, each image with `prefix` slots for its prefix tokens; image i is segment i."""
    single = patchify(images, patch)
    counts = single.valid.sum(1).tolist()
    if max(counts) + prefix > length:
        raise ValueError(f"an image of {max(counts)} patches (+{prefix} prefix tokens) does not fit a packed "
                         f"sequence of {length} tokens; raise the length or lower the token budget")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(images)), key=lambda i: -counts[i]):
        b = next((b for b, room in enumerate(free) if room >= counts[i] + prefix), None)
        if b is None:
            bins.append([])
            free.append(length)
            b = len(bins) - 1
        bins[b].append(i)
        free[b] -= counts[i] + prefix
    out = Packed(single.patches.new_zeros(len(bins), length, single.patches.shape[2]),
                 single.coords.new_zeros(len(bins), length, 2), single.coords.new_full((len(bins), length), -1),
                 single.coords.new_full((len(bins), length), -1))
    for b, members in enumerate(bins):
        at = 0
        for i in members:
            out.segments[b, at:at + prefix + counts[i]] = i
            out.prefix[b, at:at + prefix] = torch.arange(prefix)
            at += prefix
            out.patches[b, at:at + counts[i]] = single.patches[i, :counts[i]]
            out.coords[b, at:at + counts[i]] = single.coords[i, :counts[i]]
            at += counts[i]
    return out


def embed_packed(model: ViT, packed: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed batch -> the first block's tokens and the (B, N, N) mask: a token attends to the
    tokens of its own image (padding to padding, so that no row is empty)."""
    c = model.config
    check_config(c)
    if c.distilled:
        raise ValueError("a distilled (DeiT) model's two heads are not packed; give it padded NaFlex batches")
    is_patch = (packed.segments >= 0) & (packed.prefix < 0)
    x = project(model, packed.patches)
    grids = Patches(packed.patches, packed.coords, is_patch)
    per_image = _image_grids(packed, is_patch)
    if model.pos_embed is not None:
        for grid in sorted(set(per_image)):
            table = model.position_embedding(grid)[0, c.pos_prefix_rows:].to(x.dtype)
            tokens = is_patch & torch.isin(packed.segments, torch.tensor(
                [i for i, g in enumerate(per_image) if g == grid], device=x.device))
            index = (grids.coords[..., 0] * grid[1] + grids.coords[..., 1]).clamp(0, grid[0] * grid[1] - 1)
            x = x + table[index] * tokens[..., None]
    heads = [t.reshape(-1, c.dim) for t in (model.cls_token, model.dist_token, model.reg_token) if t is not None]
    if heads:
        table = torch.cat(heads).to(x.dtype)
        if model.pos_embed is not None and c.pos_prefix_rows:
            table = table + model.pos_embed[0, :c.pos_prefix_rows].to(x.dtype)
        x = torch.where((packed.prefix >= 0)[..., None], table[packed.prefix.clamp_min(0)], x)
    mask = packed.segments[:, :, None] == packed.segments[:, None, :]
    return model.norm_pre(model.pos_drop(x)), mask


def _image_grids(packed: Packed, is_patch: torch.Tensor) -> list[tuple[int, int]]:
    """Each image's grid, from its patches' coordinates."""
    seg = packed.segments[is_patch]
    rows = torch.zeros(packed.images, dtype=torch.long, device=seg.device).scatter_reduce(
        0, seg, packed.coords[..., 0][is_patch], "amax")
    cols = torch.zeros(packed.images, dtype=torch.long, device=seg.device).scatter_reduce(
        0, seg, packed.coords[..., 1][is_patch], "amax")
    return [(int(r) + 1, int(k) + 1) for r, k in zip(rows.tolist(), cols.tolist(), strict=True)]


def pool_packed(model: ViT, tokens: torch.Tensor, packed: Packed) -> torch.Tensor:
    """The model's pooling of each packed image over its own tokens: (images, dim)."""
    c, n, d = model.config, packed.images, tokens.shape[-1]
    flat, seg, pre = tokens.reshape(-1, d), packed.segments.reshape(-1), packed.prefix.reshape(-1)
    if c.pool == "cls":
        return torch.stack([flat[(seg == i) & (pre == 0)][0] for i in range(n)])
    chosen = (seg >= 0) & ((pre < 0) | (c.pool == "mean-all"))
    if c.pool == "map":
        rows = torch.tensor([int((packed.segments == i).any(1).nonzero()[0]) for i in range(n)], device=seg.device)
        mine = (packed.segments[rows] == torch.arange(n, device=seg.device)[:, None]) & (packed.prefix[rows] < 0)
        return model.attn_pool(tokens[rows], mine)
    sums = flat.new_zeros(n, d).index_add(0, seg[chosen], flat[chosen])
    return sums / torch.bincount(seg[chosen], minlength=n).clamp_min(1)[:, None].to(flat.dtype)
