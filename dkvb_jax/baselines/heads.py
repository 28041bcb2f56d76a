"""Classifier heads on frozen embeddings: the models the paper's baselines are run on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LinearHead", "MLPHead", "params_initializer"]


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


class MLPHead(nn.Module):
    """MLP classifier: ``len(hidden)`` ReLU layers, then a linear layer to ``num_classes`` logits."""

    num_classes: int
    hidden: Sequence[int] = (512,)

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"MLPHead.num_classes must be >= 1, got {self.num_classes}.")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"MLPHead.hidden sizes must be >= 1, got {tuple(self.hidden)}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
        return nn.Dense(self.num_classes, name="out")(x)


def params_initializer(module: nn.Module, embed_dim: int) -> Callable[[jax.Array], Any]:
    """``key -> fresh variables['params']`` for ``module`` on [batch, embed_dim] inputs (for retraining)."""
    dummy = jnp.zeros((1, embed_dim), jnp.float32)
    return lambda key: module.init(key, dummy)["params"]
