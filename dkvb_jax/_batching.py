"""Fixed-shape batching: pad a dataset to whole batches so one compiled function serves all.

A ragged last batch would otherwise trigger a recompilation, or be dropped. Padded rows carry
weight 0 and are sliced off the results, so no example is ever dropped silently.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def pad_to_batches(x: np.ndarray | jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Pads `x [n, ...]` to `[num_batches, batch_size, ...]` with a bool weight `[num_batches, batch_size]`.

    Padding repeats row 0 (always a valid input, so no NaN can arise from it).
    """
    n = x.shape[0]
    num_batches = max(1, math.ceil(n / batch_size))
    pad = num_batches * batch_size - n
    x = jnp.asarray(x)
    if pad:
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad, *x.shape[1:]))], axis=0)
    valid = jnp.arange(num_batches * batch_size) < n
    return (
        x.reshape(num_batches, batch_size, *x.shape[1:]),
        valid.reshape(num_batches, batch_size),
    )


def batched_apply(fn, x, batch_size: int):
    """Applies `fn` (a jittable map over `[batch, ...]` arrays) in fixed-size batches.

    Args:
      fn: maps a pytree of `[batch, ...]` arrays to a pytree of `[batch, ...]` arrays.
      x: a pytree of arrays sharing the leading dimension `n`.
      batch_size: rows per call of `fn`.

    Returns `fn`'s outputs concatenated over the `n` real rows.
    """
    n = jax.tree.leaves(x)[0].shape[0]
    size = min(batch_size, max(n, 1))
    xb = jax.tree.map(lambda a: pad_to_batches(a, size)[0], x)
    out = jax.lax.map(fn, xb)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)
