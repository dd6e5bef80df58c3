"""What a ViT looks at, as tensors: attention rollout, gradient-weighted rollout, the last
layer's class-token attention, mean attention distance, position-embedding similarity and the
principal components of the patch-embedding filters (the paper's Figures 6 and 7).

All of it uses the model's own attention probabilities (`model(x, return_attention=True)`), the
same function that predicts, so the pictures show the model that classifies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.model.vit import ViT


@contextmanager
def _evaluating(model: ViT) -> Iterator[ViT]:
    """The model in eval mode (no dropout in the maps), back in the caller's mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)


def _attentions(model: ViT, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    with _evaluating(model), torch.no_grad():
        logits, attentions = model(images, return_attention=True)
    return logits, attentions


def rollout_matrices(attentions: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): average the heads, add the residual identity
    (0.5 A + 0.5 I), renormalise rows, multiply through the layers. (B, T, T), rows sum to 1."""
    result = None
    for a in attentions:
        a = a.float().mean(dim=1)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _grid(model: ViT, images: torch.Tensor) -> tuple[int, int]:
    """The patch grid of these images (the model's own, or another for images of another size)."""
    (ph, pw) = model.config.patch_hw
    return images.shape[-2] // ph, images.shape[-1] // pw


def token_map(joint: torch.Tensor, model: ViT, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The row that the head reads, over the patch grid: (B, grid_h, grid_w), sums to 1.

    With a class token that is the class token's row; with mean pooling, the mean of the patch
    tokens' rows (the 'mean token')."""
    prefix = model.config.num_prefix_tokens
    if model.config.pool == "cls":
        row = joint[:, 0, prefix:]
    elif model.config.pool == "mean":
        row = joint[:, prefix:, prefix:].mean(dim=1)
    else:
        row = joint.mean(dim=1)[:, prefix:]
    row = row / row.sum(dim=-1, keepdim=True)
    return row.reshape(-1, *(grid or model.config.grid))


def rollout(model: ViT, images: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Rollout heat map over the patch grid for each image: (B, grid_h, grid_w)."""
    _, attentions = _attentions(model, images)
    return token_map(rollout_matrices(attentions, residual), model, _grid(model, images))


def grad_rollout(model: ViT, images: torch.Tensor, target: int | torch.Tensor | None = None) -> torch.Tensor:
    """Rollout with each layer's attention weighted by its gradient for the target class
    (the predicted one by default): mean over heads of relu(grad * attention).

    The gradients are taken for the attention maps only (torch.autograd.grad), so no `.grad` is
    left on the model's parameters, and the model is left in the mode it was in."""
    with _evaluating(model), torch.enable_grad():
        x = images.detach().requires_grad_(True)  # a graph even when every weight is frozen
        logits, attentions = model(x, return_attention=True)
        if target is None:
            target = logits.argmax(dim=1)
        target = torch.as_tensor(target, device=logits.device).expand(len(images))
        grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attentions)
    joint = None
    for a, grad in zip(attentions, grads, strict=True):
        w = (grad * a).clamp_min(0).mean(dim=1).detach()
        w = w + torch.eye(w.shape[-1], device=w.device)  # the residual; also keeps empty rows valid
        w = w / w.sum(dim=-1, keepdim=True)
        joint = w if joint is None else w @ joint
    return token_map(joint, model, _grid(model, images))


def last_layer(model: ViT, images: torch.Tensor) -> torch.Tensor:
    """The last block's attention of the pooled token, per head: (B, heads, grid_h, grid_w)."""
    _, attentions = _attentions(model, images)
    a = attentions[-1].float()
    prefix, (gh, gw) = model.config.num_prefix_tokens, _grid(model, images)
    row = a[:, :, 0, prefix:] if model.config.pool == "cls" else a[:, :, prefix:, prefix:].mean(dim=2)
    row = row / row.sum(dim=-1, keepdim=True)
    return row.reshape(a.shape[0], a.shape[1], gh, gw)


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance in pixels between every pair of patch centres: (N, N)."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([ys.flatten() * patch[0], xs.flatten() * patch[1]], dim=1).float()
    return torch.cdist(centres, centres)


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int],
                            prefix: int) -> torch.Tensor:
    """For one layer's attention (B, heads, T, T): the pixel distance each head integrates over,
    averaged over query patches and images, attention renormalised over patch keys. (heads,)"""
    a = attention.float()[:, :, prefix:, prefix:]
    a = a / a.sum(dim=-1, keepdim=True)
    distance = patch_distances(grid, patch).to(a.device)
    return (a * distance).sum(dim=-1).mean(dim=(0, 2))


def attention_distance(model: ViT, images: torch.Tensor) -> torch.Tensor:
    """Mean attention distance of every head at every depth: (depth, heads), in pixels."""
    _, attentions = _attentions(model, images)
    c = model.config
    return torch.stack([mean_attention_distance(a, c.grid, c.patch_hw, c.num_prefix_tokens) for a in attentions])


def position_similarity(model: ViT) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other: (N, grid_h, grid_w)."""
    table = model.position_embedding(model.config.grid)[0, model.config.num_prefix_tokens:].detach().float()
    table = F.normalize(table, dim=-1)
    return (table @ table.T).reshape(-1, *model.config.grid)


def embedding_components(model: ViT, count: int = 28) -> torch.Tensor:
    """The first principal components of the patch-embedding filters, as (count, C, ph, pw). With
    a CNN before the projection (conv stem, ResNet), of the first convolution's filters: those are
    the ones that look at pixels."""
    c = model.config
    ph, pw = c.patch_hw
    weight = model.patch_embed.proj.weight.detach().float()
    if c.patch_embed not in ("conv", "linear-ln"):
        weight = next(m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)).weight.detach().float()
        ph, pw = weight.shape[-2:]
    if c.patch_embed != "linear-ln":
        filters = weight.flatten(1)  # (dim, C*ph*pw), channel-major
        shape = lambda v: v.reshape(-1, c.in_channels, ph, pw)  # noqa: E731
    else:  # linear-ln flattens patches as (ph, pw, C)
        filters = weight
        shape = lambda v: v.reshape(-1, ph, pw, c.in_channels).permute(0, 3, 1, 2)  # noqa: E731
    filters = filters - filters.mean(dim=0, keepdim=True)
    _, _, components = torch.linalg.svd(filters, full_matrices=False)  # rows: principal directions
    return shape(components[:count])
