"""Splitters: how an embedding `[embed_dim]` becomes one query per codebook `[codebooks, key_dim]`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_projection(
    rng: jax.Array, embed_dim: int, num_codebooks: int, key_dim: int
) -> jax.Array:
    """C fixed Gaussian projections `[embed_dim, codebooks, key_dim]` with unit-norm columns."""
    w = jax.random.normal(rng, (embed_dim, num_codebooks, key_dim), jnp.float32)
    return w / jnp.linalg.norm(w, axis=0, keepdims=True)


def project(x: jax.Array, projection: jax.Array) -> jax.Array:
    """Queries `[batch, codebooks, key_dim]` from embeddings `[batch, embed_dim]`."""
    return jnp.einsum("bD,Dcd->bcd", x, projection, precision=jax.lax.Precision.HIGHEST)


def chunk(x: jax.Array, num_codebooks: int, key_dim: int) -> jax.Array:
    """Slices embeddings `[batch, codebooks * key_dim]` into `[batch, codebooks, key_dim]`."""
    return x.reshape(x.shape[0], num_codebooks, key_dim)
