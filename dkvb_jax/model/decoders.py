"""Decoders: retrieved values `[batch, codebooks, value_dim]` -> logits `[batch, classes]`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dkvb_jax.config import DKVBConfig


def vote(values: jax.Array, present: jax.Array) -> jax.Array:
    """Mean of the retrieved values over the codebooks that returned a key.

    Args:
      values: `[batch, codebooks, value_dim]`, each codebook's (top-k averaged) value.
      present: bool `[batch, codebooks]`; False for a codebook whose keys are all masked,
        which then contributes nothing (and never a NaN).

    Returns:
      `[batch, value_dim]` logits.
    """
    w = present.astype(values.dtype)
    total = jnp.einsum("bcv,bc->bv", values, w)
    return total / jnp.maximum(w.sum(axis=1), 1.0)[:, None]


class Decoder(nn.Module):
    """The configured decoder; ``vote`` has no parameters."""

    config: DKVBConfig

    @nn.compact
    def __call__(self, values: jax.Array, present: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.decoder == "vote":
            return vote(values, present)
        flat = (values * present[..., None]).reshape(values.shape[0], -1)
        if cfg.decoder == "mlp":
            flat = nn.relu(nn.Dense(cfg.mlp_hidden, name="hidden")(flat))
        return nn.Dense(cfg.num_classes, name="out")(flat)
