"""Block-wise encoding of large images: attention inside non-overlapping windows of tokens, as
ViTDet and the Segment Anything (SAM) image encoder do, with SAM's decomposed relative position
terms and its convolutional neck.

A windowed block costs N * window**2 attention products instead of N**2: at 1024 px with 16 px
patches (N = 4096) and 14x14 windows, about 20x fewer. A few global blocks between the windowed
ones let information cross the windows. The names and numerics follow timm's
`vision_transformer_sam.py`, whose SAM weights load into vitkit (weights/timm_sam.py).

Two rules are SAM's, kept so that its weights compute what they were trained to:
- a grid that is not a multiple of the window is padded with zero tokens (after the block's
  LayerNorm), and the padding is attended to like any token;
- the relative position tables are resampled linearly when a grid or window differs from the one
  they were made for.
Prefix tokens (class, registers) are vitkit's addition for plain ViTs run windowed: in a windowed
block each patch token sees its window and the prefix tokens; the prefix tokens see every token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def partition(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> windows (B * windows, size * size, C), zero-padded to whole windows; and
    the padded (H, W)."""
    b, h, w, c = x.shape
    ph, pw = -h % size, -w % size
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c), (hp, wp)


def unpartition(windows: torch.Tensor, size: int, grid: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """Windows (B * windows, size * size, C) -> (B, H * W, C), the padding dropped."""
    (h, w), (hp, wp) = grid, padded
    b = windows.shape[0] // (hp * wp // size // size)
    x = windows.view(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :h, :w].reshape(b, h * w, -1)


def relative_table(q_size: int, k_size: int, table: torch.Tensor) -> torch.Tensor:
    """The (q_size, k_size, C) relative position terms of one axis from a (L, C) table, resampled
    linearly when L != 2 * max(q_size, k_size) - 1 (timm's `get_rel_pos`)."""
    span = 2 * max(q_size, k_size) - 1
    table = resize_table(table, span)
    q = torch.arange(q_size, dtype=torch.float32)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, dtype=torch.float32)[None, :] * max(q_size / k_size, 1.0)
    return table[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


def resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (L, C) relative position table resampled linearly to `length` rows (SAM at another grid)."""
    if table.shape[0] == length:
        return table
    table = F.interpolate(table.reshape(1, table.shape[0], -1).permute(0, 2, 1), size=length, mode="linear")
    return table.reshape(-1, length).permute(1, 0)


def relative_bias(q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative position bias (MViTv2): the queries (B, heads, H*W, C) against a
    row table and a column table, added to the attention logits: (B, heads, H*W, H*W)."""
    (h, w), (b, heads, n, c) = grid, q.shape
    rh, rw = relative_table(h, h, table_h), relative_table(w, w, table_w)
    r_q = q.reshape(b * heads, h, w, c)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(b, heads, n, h * w)


def windowed_attention(attn: nn.Module, x: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """A windowed block's attention (`vit.Attention` with `window` set) over (B, prefix + H*W, D):
    each window of patch tokens attends within itself (and to the prefix tokens); the prefix tokens
    attend to every token. Returns the projected output, (B, prefix + H*W, D)."""
    b, _, d = x.shape
    size = attn.window
    windows, padded = partition(x[:, prefix:].reshape(b, *grid, d), size)
    count = windows.shape[0] // b
    q, k, v = attn.project(windows)  # (B * windows, heads, size * size, head_dim)
    bias = relative_bias(q, attn.rel_pos_h, attn.rel_pos_w, (size, size)) if attn.rel_pos_h is not None else None
    if not prefix:
        out = attn.attend(q, k, v, bias)[0]
        return attn.output(unpartition(heads_to_tokens(out), size, grid, padded))
    qp, kp, vp = attn.project(x[:, :prefix])  # (B, heads, prefix, head_dim)
    out = attn.attend(q, torch.cat([kp.repeat_interleave(count, 0), k], 2),
                      torch.cat([vp.repeat_interleave(count, 0), v], 2), None)[0]
    patches = unpartition(heads_to_tokens(out), size, grid, padded)
    every_k = torch.cat([kp, tokens_to_heads(unpartition(heads_to_tokens(k), size, grid, padded), attn.heads)], 2)
    every_v = torch.cat([vp, tokens_to_heads(unpartition(heads_to_tokens(v), size, grid, padded), attn.heads)], 2)
    head = attn.attend(qp, every_k, every_v, None)[0]
    return attn.output(torch.cat([heads_to_tokens(head), patches], 1))


def heads_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads * head_dim)."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def tokens_to_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * head_dim) -> (B, heads, N, head_dim)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (timm's; SAM's neck)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def neck(dim: int, out: int) -> nn.Sequential:
    """SAM's neck: a 1x1 convolution to `out` channels, LayerNorm, a 3x3 convolution, LayerNorm
    (timm's `neck.0` .. `neck.3`): the feature map SAM's mask decoder reads."""
    return nn.Sequential(nn.Conv2d(dim, out, 1, bias=False), LayerNorm2d(out, eps=1e-6),
                         nn.Conv2d(out, out, 3, padding=1, bias=False), LayerNorm2d(out, eps=1e-6))
