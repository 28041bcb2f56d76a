"""Discrete codes of a dataset: which pair each example retrieves in each codebook.

With frozen keys and unchanged masks an example's codes never change, so they are computed once
and serve value training, usage histograms and the unlearning of named examples.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dkvb_jax import _batching, _validation
from dkvb_jax.model import DKVB
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import _rows


@functools.partial(jax.jit, static_argnames=("model", "batch_size", "mesh"))
def _codes(model: DKVB, variables: dict, x: jax.Array, batch_size: int, mesh: Mesh | None = None):
    def local(v, xl):
        return _batching.batched_apply(
            lambda xb: model.apply(v, xb, method=DKVB.codes), xl, batch_size
        )

    if mesh is None:
        return local(variables, x)
    # Each device looks up its own rows; the lookup's row chunking then runs per device.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=P(DATA))(variables, x)


def compute_codes(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    *,
    batch_size: int = 1024,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Codes of embeddings `[n, embed_dim]`, identical with or without a mesh.

    Args:
      model: the DKVB module.
      variables: its variables (on a mesh: replicated or codebook-sharded).
      x: embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``).
      batch_size: rows per lookup call (per device on a mesh).
      mesh: split the rows over this mesh's ``'data'`` axis; None runs on one device.

    Returns:
      indices int32 `[n, codebooks, top_k]` (-1 where invalid) and valid bool, same shape
      (split over ``'data'`` along the examples on a mesh).
    """
    _rows.check_embeddings(x, model.config.embed_dim, mesh)
    _validation.check_positive_int(batch_size, "batch_size")
    n = x.shape[0]
    xs = _rows.place(x, mesh)
    indices, valid = _codes(model, variables, xs, batch_size, mesh)
    if xs.shape[0] == n:
        return indices, valid
    return indices[:n], valid[:n]
