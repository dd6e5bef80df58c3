"""What the model sees: attention maps and the paper's Figure 6 and 7 analyses."""

from vitkit.explain.maps import (
    attention_distance,
    embedding_components,
    grad_rollout,
    last_layer,
    position_similarity,
    rollout,
)

__all__ = ["attention_distance", "embedding_components", "grad_rollout", "last_layer", "position_similarity",
           "rollout"]
