"""Key-usage counting: how often each key of each codebook is retrieved, overall or per class."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dkvb_jax import _validation
from dkvb_jax.model import DKVB
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import _rows
from dkvb_jax.training.codes import compute_codes


def _histogram(indices, valid, num_keys, labels, num_classes, weights):
    num_codebooks = indices.shape[1]
    w = valid.astype(jnp.int32)
    if weights is not None:
        w = w * weights.astype(jnp.int32)[:, None, None]
    safe = jnp.where(valid, indices, 0)
    cb = jnp.broadcast_to(jnp.arange(num_codebooks)[None, :, None], safe.shape)
    if labels is None:
        return jnp.zeros((num_codebooks, num_keys), jnp.int32).at[cb, safe].add(w)
    lab = jnp.broadcast_to(labels[:, None, None], safe.shape)
    return jnp.zeros((num_classes, num_codebooks, num_keys), jnp.int32).at[lab, cb, safe].add(w)


# Jitted, so that eager calls compile the shard_map once per shape instead of running it op by op.
@functools.partial(jax.jit, static_argnames=("num_keys", "num_classes", "mesh"))
def _sharded_histogram(indices, valid, num_keys, labels, num_classes, weights, mesh):
    if weights is None:
        weights = jnp.ones(indices.shape[:1], jnp.int32)
    # Padding rows get valid False and weight 0; a placeholder stands in for absent labels.
    lab = jnp.zeros(indices.shape[:1], jnp.int32) if labels is None else labels
    indices, valid, weights, lab = _rows.pad_to_mesh(mesh, indices, valid, weights, lab)

    def local(i, v, w, lb):
        hist = _histogram(i, v, num_keys, None if labels is None else lb, num_classes, w)
        # Integer counts: the cross-device sum is exact, so it equals the one-device histogram.
        return jax.lax.psum(hist, DATA)

    return jax.shard_map(local, mesh=mesh, in_specs=P(DATA), out_specs=P())(
        indices, valid, weights, lab
    )


def usage_from_codes(
    indices: jax.Array,
    valid: jax.Array,
    num_keys: int,
    labels: jax.Array | None = None,
    num_classes: int | None = None,
    weights: jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Histogram of codes; pure and jittable, so per-device histograms can be `psum`-ed.

    Args:
      indices: int `[n, codebooks, top_k]`.
      valid: bool `[n, codebooks, top_k]` (the codes' own validity, from
        :func:`dkvb_jax.training.compute_codes`).
      num_keys: keys per codebook.
      labels: optional int `[n]`; with `num_classes`, counts per class.
      num_classes: number of classes (required with `labels`).
      weights: optional int or bool `[n]` example weights (0 or False for padding rows).
      mesh: count each device's rows of the ``'data'`` axis and sum the counts over it (exact:
        the counts are integers); None counts on one device.

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` with labels (replicated on a
      mesh).
    """
    if labels is not None and num_classes is None:
        raise ValueError("usage_from_codes: pass num_classes together with labels.")
    if mesh is None:
        return _histogram(indices, valid, num_keys, labels, num_classes, weights)
    return _sharded_histogram(indices, valid, num_keys, labels, num_classes, weights, mesh)


_usage_jit = jax.jit(usage_from_codes, static_argnames=("num_keys", "num_classes", "mesh"))


def key_usage(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array | None = None,
    *,
    num_classes: int | None = None,
    batch_size: int = 1024,
    mesh: Mesh | None = None,
    valid: np.ndarray | jax.Array | None = None,
) -> jax.Array:
    """Counts how often the inputs retrieve each key, honouring the current masks.

    The counts are identical with and without a mesh.

    Args:
      model: The DKVB module.
      variables: Its variables.
      x: embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``).
      labels: optional int `[n]`; gives a per-class histogram.
      num_classes: defaults to the model's classes.
      batch_size: rows per jitted lookup (per device on a mesh).
      mesh: split the rows over this mesh's ``'data'`` axis; None runs on one device.
      valid: optional bool `[n]` marking real rows (e.g. from
        :func:`dkvb_jax.parallel.distributed.global_batch`); the others are not counted.

    Returns:
      int32 `[codebooks, keys]`, or `[classes, codebooks, keys]` when labels are given.
    """
    num_classes = model.config.num_classes if num_classes is None else num_classes
    n = x.shape[0]
    if labels is not None:
        if _rows.is_host_readable(labels):
            _validation.check_labels(labels, num_classes, n=n)
            labels = jnp.asarray(labels)
    if valid is not None:
        valid = _rows.check_valid(valid, n)
    indices, codes_valid = compute_codes(model, variables, x, batch_size=batch_size, mesh=mesh)
    return _usage_jit(
        indices,
        codes_valid,
        num_keys=model.config.num_keys,
        labels=labels,
        num_classes=num_classes if labels is not None else None,
        weights=valid,
        mesh=mesh,
    )
