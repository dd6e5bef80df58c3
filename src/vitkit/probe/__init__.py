"""Frozen features of a model: `vitkit embed` writes them, `vitkit fewshot` fits linear maps on them
(the paper's few-shot linear evaluation, section 4.1)."""

from vitkit.probe.features import Features, extract
from vitkit.probe.fewshot import LinearMap, fit_least_squares

__all__ = ["Features", "LinearMap", "extract", "fit_least_squares"]
