"""Classifier heads on frozen embeddings: the models the paper's baselines are run on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LinearHead", "params_initializer"]


class LinearHead(nn.Module):
    """Linear classifier: [batch, dim] embeddings -> [batch, num_classes] logits."""

    num_classes: int

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"LinearHead.num_classes must be >= 1, got {self.num_classes}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="linear")(x)


def params_initializer(module: nn.Module, embed_dim: int) -> Callable[[jax.Array], Any]:
    """``key -> fresh variables['params']`` for ``module`` on [batch, embed_dim] inputs (for retraining)."""
    dummy = jnp.zeros((1, embed_dim), jnp.float32)
    return lambda key: module.init(key, dummy)["params"]
