"""Images under a token budget: the grid rule is timm's NaFlex rule (its get_image_size_for_seq as
the oracle), never more tokens than the budget, the aspect ratio kept to within a patch, nothing
cropped; images too elongated to keep their shape, and budgets below one token, are refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.data.naflex_transforms import get_image_size_for_seq

from vitkit.data.decode import BadImage
from vitkit.data.naflex import ToGrid, fit_grid


@settings(max_examples=300, deadline=None)
@given(h=st.integers(32, 3000), w=st.integers(32, 3000), patch=st.sampled_from([2, 4, 8, 14, 16, 32]),
       budget=st.integers(1, 2048))
def test_the_grid_is_timms_within_the_budget_and_keeps_the_shape(h, w, patch, budget):
    """(From 32 px a side: timm caps its search at 100x enlargement, vitkit does not.)"""
    try:
        rows, cols = fit_grid((h, w), (patch, patch), budget)
    except BadImage as e:
        assert "cannot keep its shape" in str(e) and max(h / w, w / h) > 2
        return
    _, (th, tw) = get_image_size_for_seq((h, w), patch, budget)
    assert (rows, cols) == (th // patch, tw // patch)
    assert rows * cols <= budget
    if rows > 1 and cols > 1:  # each side rounded up to a whole patch at most: the shape kept within a patch
        assert (rows - 1) / cols <= h / w <= rows / (cols - 1)


def test_small_and_elongated_images_and_bad_budgets():
    assert fit_grid((3, 3), (16, 16), 64) == (8, 8)  # smaller than a patch: enlarged, never dropped
    with pytest.raises(BadImage, match="1x4000 pixels cannot keep its shape in 64 tokens"):
        fit_grid((1, 4000), (16, 16), 64)
    assert fit_grid((1, 4000), (16, 16), 8000)[0] == 1  # with the budget for it, it is seen whole
    for budget in (0, -3, 2.5):
        with pytest.raises(ValueError, match="at least 1 token per image"):
            fit_grid((32, 32), (4, 4), budget)


def test_to_grid_resizes_the_whole_image_and_draws_budgets_per_image():
    image = torch.randint(0, 256, (3, 30, 60), dtype=torch.uint8)
    assert ToGrid((4, 4), 64)(image).shape == (3, 20, 40)  # 5x10 patches (6x12 would be 72 tokens)
    draws = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = ToGrid((4, 4), 64, min_tokens=16)(image)
        assert 16 // 2 <= (out.shape[1] // 4) * (out.shape[2] // 4) <= 64
        draws.add(out.shape)
    assert len(draws) > 3
