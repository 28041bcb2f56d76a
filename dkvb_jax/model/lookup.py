"""Nearest-key lookup among the active keys of each codebook.

The distance tensor `[batch, codebooks, keys]` is the only large intermediate of a DKVB model
(1 GiB of float32 at the paper's batch 256 x 256 codebooks x 4096 keys). `nearest_keys`
computes it in row chunks with `lax.map`, so peak memory is set by the chunk, not the batch;
each chunk runs exactly the computation the unchunked path runs on those rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Lookup(NamedTuple):
    """Result of a nearest-key lookup.

    Attributes:
      indices: int32 `[batch, codebooks, top_k]`, nearest active keys in increasing distance;
        -1 where `valid` is False.
      distances: float32 `[batch, codebooks, top_k]` squared distances; +inf where invalid.
      valid: bool `[batch, codebooks, top_k]`; False when a codebook has fewer than `top_k`
        active keys (all-masked codebooks are entirely invalid).
    """

    indices: jax.Array
    distances: jax.Array
    valid: jax.Array


def squared_distances(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """Squared Euclidean distances in matmul form.

    Args:
      queries: `[batch, codebooks, key_dim]`.
      keys: `[codebooks, keys, key_dim]`.

    Returns:
      `[batch, codebooks, keys]`; |q|^2 - 2 q.k + |k|^2, clipped at 0 against rounding.
    """
    q2 = jnp.sum(queries * queries, axis=-1)[..., None]
    k2 = jnp.sum(keys * keys, axis=-1)[None]
    qk = jnp.einsum("bcd,ckd->bck", queries, keys, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(q2 - 2.0 * qk + k2, 0.0)


def auto_chunk(num_codebooks: int, num_keys: int, memory_mb: float) -> int:
    """Rows per chunk so that one chunk of float32 distances fits in `memory_mb` MiB."""
    row_bytes = 4 * num_codebooks * num_keys
    return max(1, int(memory_mb * 2**20) // row_bytes)


def _lookup_rows(queries, keys, search_mask, top_k):
    d = squared_distances(queries, keys)
    d = jnp.where(search_mask[None], jnp.inf, d)
    if top_k == 1:
        # argmin is cheaper than a sort and, like top_k, breaks ties towards the lower index.
        idx = jnp.argmin(d, axis=-1)[..., None]
        dist = jnp.take_along_axis(d, idx, axis=-1)
    else:
        neg, idx = jax.lax.top_k(-d, top_k)
        dist = -neg
    return idx.astype(jnp.int32), dist


def nearest_keys(
    queries: jax.Array,
    keys: jax.Array,
    search_mask: jax.Array | None = None,
    *,
    top_k: int = 1,
    chunk: int | None = 0,
    memory_mb: float = 64.0,
) -> Lookup:
    """Finds the `top_k` nearest active keys of every codebook for every query.

    Args:
      queries: float `[batch, codebooks, key_dim]`.
      keys: float `[codebooks, keys, key_dim]`.
      search_mask: bool `[codebooks, keys]`, True for keys excluded from the search.
      top_k: keys returned per codebook, in increasing distance (ties: lower index first).
      chunk: rows of `queries` processed at once; `None` derives it from `memory_mb`, `0`
        computes the whole batch at once. Any chunk works: the last one is padded.
      memory_mb: budget for one chunk of distances when `chunk` is None.

    Returns:
      A :class:`Lookup` of `[batch, codebooks, top_k]` arrays.
    """
    batch, num_codebooks, key_dim = queries.shape
    if keys.ndim != 3 or keys.shape[0] != num_codebooks or keys.shape[2] != key_dim:
        raise ValueError(
            f"keys must have shape [codebooks={num_codebooks}, keys, key_dim={key_dim}] to match "
            f"queries {tuple(queries.shape)}, got {tuple(keys.shape)}."
        )
    num_keys = keys.shape[1]
    if not 1 <= top_k <= num_keys:
        raise ValueError(f"top_k must be in [1, num_keys={num_keys}], got {top_k}.")
    if search_mask is None:
        search_mask = jnp.zeros((num_codebooks, num_keys), bool)
    elif search_mask.shape != (num_codebooks, num_keys):
        raise ValueError(
            f"search_mask must have shape [codebooks, keys] = {(num_codebooks, num_keys)}, got "
            f"{tuple(search_mask.shape)}."
        )
    if chunk is None:
        chunk = auto_chunk(num_codebooks, num_keys, memory_mb)
    if chunk < 0:
        raise ValueError(f"chunk must be None, 0 or positive, got {chunk}.")

    if chunk == 0 or chunk >= batch:
        idx, dist = _lookup_rows(queries, keys, search_mask, top_k)
    else:
        # lax.map with batch_size vmaps the row function over chunks of `chunk` rows and
        # handles the ragged remainder, so the result is independent of the chunking.
        idx, dist = jax.lax.map(
            lambda q: _lookup_rows(q[None], keys, search_mask, top_k),
            queries,
            batch_size=chunk,
        )
        idx, dist = idx[:, 0], dist[:, 0]

    num_active = num_keys - jnp.sum(search_mask, axis=-1)  # [codebooks]
    valid = jnp.arange(top_k)[None, None, :] < num_active[None, :, None]
    valid = jnp.broadcast_to(valid, idx.shape)
    return Lookup(
        indices=jnp.where(valid, idx, -1),
        distances=jnp.where(valid, dist, jnp.inf),
        valid=valid,
    )


def lookup_flops(batch: int, num_codebooks: int, num_keys: int, key_dim: int) -> int:
    """Multiply-add FLOPs of the distance computation (2 per multiply-accumulate)."""
    return 2 * batch * num_codebooks * num_keys * key_dim


def num_chunks(batch: int, chunk: int) -> int:
    return 1 if chunk == 0 else math.ceil(batch / chunk)
