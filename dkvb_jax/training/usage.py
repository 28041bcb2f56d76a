"""Key-usage counting: how often each key of each codebook is retrieved, overall or per class."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dkvb_jax import _validation
from dkvb_jax.model import DKVB
from dkvb_jax.training.codes import compute_codes


def usage_from_codes(
    indices: jax.Array,
    valid: jax.Array,
    num_keys: int,
    labels: jax.Array | None = None,
    num_classes: int | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Histogram of codes; pure and jittable, so per-device histograms can be `psum`-ed.

    Args:
      indices: int `[n, codebooks, top_k]`.
      valid: bool `[n, codebooks, top_k]`.
      num_keys: keys per codebook.
      labels: optional int `[n]`; with `num_classes`, counts per class.
      num_classes: number of classes (required with `labels`).
      weights: optional `[n]` example weights (0 for padding rows).

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` with labels.
    """
    n, num_codebooks, _ = indices.shape
    w = valid.astype(jnp.int32)
    if weights is not None:
        w = w * weights.astype(jnp.int32)[:, None, None]
    safe = jnp.where(valid, indices, 0)
    cb = jnp.broadcast_to(jnp.arange(num_codebooks)[None, :, None], safe.shape)
    if labels is None:
        return jnp.zeros((num_codebooks, num_keys), jnp.int32).at[cb, safe].add(w)
    if num_classes is None:
        raise ValueError("usage_from_codes: pass num_classes together with labels.")
    lab = jnp.broadcast_to(labels[:, None, None], safe.shape)
    return jnp.zeros((num_classes, num_codebooks, num_keys), jnp.int32).at[lab, cb, safe].add(w)


def key_usage(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array | None = None,
    *,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> jax.Array:
    """Counts how often the inputs retrieve each key, honouring the current masks.

    Args:
      model: The DKVB module.
      variables: Its variables.
      x: embeddings `[n, embed_dim]`.
      labels: optional int `[n]`; gives a per-class histogram.
      num_classes: defaults to the model's classes.
      batch_size: rows per jitted lookup.

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` when labels are given.
    """
    num_classes = model.config.num_classes if num_classes is None else num_classes
    if labels is not None:
        _validation.check_labels(labels, num_classes, n=x.shape[0])
        labels = jnp.asarray(labels)
    indices, valid = compute_codes(model, variables, x, batch_size=batch_size)
    return jax.jit(usage_from_codes, static_argnums=(2, 4))(
        indices, valid, model.config.num_keys, labels, num_classes if labels is not None else None
    )
