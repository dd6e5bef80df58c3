"""Pictures of the maps in `maps.py`: heat maps over images (Figure 6) and the model's
embedding filters, position similarities and attention distances (Figure 7)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from vitkit import atomic


def _show_image(ax, image: torch.Tensor) -> None:
    """uint8 (C, H, W), drawn with pixel edges at integer coordinates."""
    h, w = image.shape[-2:]
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", extent=(0, w, h, 0), vmin=0, vmax=255)
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), extent=(0, w, h, 0))
    ax.set(xlabel="x (pixels)", ylabel="y (pixels)", xlim=(0, w), ylim=(h, 0))


def _overlay(ax, fig, image: torch.Tensor, heat: torch.Tensor, title: str) -> None:
    """Heat map over the image: the patch grid stretched exactly over the image's extent."""
    h, w = image.shape[-2:]
    _show_image(ax, image)
    shown = ax.imshow(heat.numpy(), cmap="inferno", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of attention")
    ax.set_title(title, fontsize=10)


def explanation(image: torch.Tensor, heat: torch.Tensor, top: list[tuple[str, float]], method: str,
                note: str, path: Path) -> None:
    """Image, the map over it, and the top-3 classes (rollout / grad-rollout: one map;
    last-layer: one map per head)."""
    guesses = ", ".join(f"{name} {100 * p:.1f}%" for name, p in top)
    if heat.ndim == 2:
        fig, (ax_img, ax_map) = plt.subplots(1, 2, figsize=(9, 4.4))
        _show_image(ax_img, image)
        ax_img.set_title("input (as the model sees it)", fontsize=10)
        _overlay(ax_map, fig, image, heat, f"{method}{note}")
    else:
        heads = heat.shape[0]
        cols = min(heads, 4)
        rows = -(-heads // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < heads:
                _overlay(ax, fig, image, heat[i], f"head {i + 1}")
            else:
                ax.axis("off")
    fig.suptitle(f"top-3: {guesses}", fontsize=11)
    _save(fig, path)


def inspect_figure(components: torch.Tensor, similarity: torch.Tensor, distances: torch.Tensor,
                   image_size: tuple[int, int], path: Path) -> None:
    """Figure 7: embedding filters' principal components, position-embedding similarity, and
    mean attention distance against depth."""
    fig = plt.figure(figsize=(17, 5.6))
    left, centre, right = fig.subfigures(1, 3, width_ratios=[1, 1.15, 1.1])
    _components(left, components)
    _similarity(centre, similarity)
    ax = right.subplots()
    depth, heads = distances.shape
    for h in range(heads):
        ax.scatter(range(1, depth + 1), distances[:, h].numpy(), s=14, label=f"head {h + 1}" if heads <= 16 else None)
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)",
           ylim=(0, max(image_size)), title="Mean attention distance")
    if heads <= 16:
        ax.legend(fontsize=7, ncols=2, loc="lower right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _save(fig, path)


def _components(fig, components: torch.Tensor) -> None:
    count = components.shape[0]
    cols = min(7, count)
    rows = -(-count // cols)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        tile = components[i]
        tile = (tile - tile.min()) / (tile.max() - tile.min()).clamp_min(1e-8)
        if tile.shape[0] == 3:
            ax.imshow(tile.permute(1, 2, 0).numpy())
        else:
            ax.imshow(tile[0].numpy(), cmap="gray")
    fig.suptitle("RGB embedding filters (first principal components)", fontsize=10)


def _similarity(fig, similarity: torch.Tensor) -> None:
    _, gh, gw = similarity.shape
    axes = fig.subplots(gh, gw, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.05})
    shown = None
    for r in range(gh):
        for c in range(gw):
            ax = axes[r][c]
            shown = ax.imshow(similarity[r * gw + c].numpy(), cmap="viridis", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(str(r + 1), fontsize=7, rotation=0, labelpad=6)
            if r == gh - 1:
                ax.set_xlabel(str(c + 1), fontsize=7)
    fig.supxlabel("input patch column", fontsize=9)
    fig.supylabel("input patch row", fontsize=9)
    fig.suptitle("Position embedding similarity", fontsize=10)
    fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.02, label="cosine similarity")


def _save(fig, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight")
    plt.close(fig)
