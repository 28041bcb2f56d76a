"""Evaluation of a labelled (or unlabelled) set: logits, correct count and accuracy.

One implementation for one device and for a mesh: the rows are padded to whole steps, split
over ``'data'`` (a one-device mesh without one), and padding rows are masked out of the counts,
so nothing is dropped and the counts are identical on any mesh.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dkvb_jax import _validation
from dkvb_jax.model import DKVB
from dkvb_jax.model.lookup import auto_chunk
from dkvb_jax.parallel import mesh as mesh_lib
from dkvb_jax.parallel.mesh import DATA
from dkvb_jax.training import _rows


class EvalResult(NamedTuple):
    """Evaluation of a labelled (or unlabelled) set.

    Attributes:
      logits: float `[n, classes]`, one row per input, none dropped.
      correct: number of correct top-1 predictions (0 without labels).
      count: number of examples `n`.
      accuracy: `correct / count`, or NaN without labels.
    """

    logits: jax.Array
    correct: int
    count: int
    accuracy: float


@functools.partial(jax.jit, static_argnames=("model", "mesh", "per_device"))
def _evaluate_sharded(model: DKVB, mesh: Mesh, per_device: int, variables, x, y, w):
    size = mesh_lib.data_size(mesh)
    steps = x.shape[0] // (size * per_device)
    split = NamedSharding(mesh, P(None, DATA))
    rows = NamedSharding(mesh, P(DATA))

    def to_steps(a):
        # Device d holds rows [d * m / size, (d + 1) * m / size): step through each device's own
        # rows, so no example moves between devices.
        a = a.reshape(size, steps, per_device, *a.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(a, split)

    def body(batch):
        xb, yb, wb = (a.reshape(size * per_device, *a.shape[2:]) for a in batch)
        xb = jax.lax.with_sharding_constraint(xb, rows)
        logits = jax.lax.with_sharding_constraint(model.apply(variables, xb), rows)
        return logits.reshape(size, per_device, -1), jnp.sum((logits.argmax(-1) == yb) & wb)

    logits, correct = jax.lax.map(body, tuple(map(to_steps, (x, y, w))))
    logits = logits.swapaxes(0, 1).reshape(x.shape[0], -1)
    return jax.lax.with_sharding_constraint(logits, rows), correct.sum(), w.sum()


def evaluate(
    model: DKVB,
    variables: dict,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array | None = None,
    *,
    mesh: Mesh | None = None,
    valid: np.ndarray | jax.Array | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Logits and accuracy of embeddings `[n, embed_dim]`, on one device or over a mesh.

    Each step evaluates up to `batch_size` rows per device; the data is padded to whole steps
    and padding rows (and rows where `valid` is False) are masked out of the accuracy.

    On a mesh the variables may be replicated or codebook-sharded
    (:func:`dkvb_jax.parallel.place_variables` on a ``data x codebook`` mesh); XLA then
    partitions the lookup over codebooks too.

    Args:
      model: the DKVB module.
      variables: its variables.
      x: embeddings `[n, embed_dim]` (host arrays, or global arrays split over ``'data'``).
      y: optional int labels `[n]`; without them the accuracy is NaN.
      mesh: split the rows over this mesh's ``'data'`` axis; None runs on one device.
      valid: optional bool `[n]` marking real rows; the others are not counted.
      batch_size: rows per step and device.

    Returns:
      An :class:`EvalResult`; `logits` has one row per input row (padding rows of a multi-host
      global array included, to be masked with `valid`).
    """
    cfg = model.config
    _rows.check_embeddings(x, cfg.embed_dim, mesh)
    _validation.check_positive_int(batch_size, "batch_size")
    # One device is the one-device mesh: the same stepping, padding and masking.
    mesh = mesh_lib.data_mesh(1) if mesh is None else mesh
    if valid is not None:
        valid = _rows.check_valid(valid, x.shape[0])
    n = x.shape[0]
    if y is not None and _rows.is_host_readable(y):
        _validation.check_labels(y, cfg.num_classes, n=n)
    size = mesh_lib.data_size(mesh)
    host = _rows.is_host_readable(x)
    # Host data is padded to whole steps of `batch_size` rows per device; a global array
    # keeps its layout and is stepped in the largest per-device batch dividing its share.
    xs, w = mesh_lib.shard_batch(x, mesh, multiple=size * batch_size if host else None, valid=valid)
    labels = np.zeros((n,), np.int32) if y is None else y
    ys, _ = mesh_lib.shard_batch(labels, mesh, multiple=size * batch_size if host else None)
    share = xs.shape[0] // size
    per_device = max(d for d in range(1, min(batch_size, share) + 1) if share % d == 0)
    # One step is one lookup chunk: the core's row chunking (`lax.map` over the rows) would run
    # over the sharded batch axis and make XLA gather the whole step onto every device. So the
    # step is capped at the lookup memory budget (per device, after codebook sharding) and the
    # lookup itself runs unchunked.
    if cfg.lookup_chunk is None:
        cap = auto_chunk(
            cfg.num_codebooks // mesh_lib.codebook_size(mesh), cfg.num_keys, cfg.lookup_memory_mb
        )
    else:
        cap = cfg.lookup_chunk or per_device
    per_device = max(d for d in range(1, min(per_device, cap) + 1) if share % d == 0)
    unchunked = DKVB(cfg.replace(lookup_chunk=0))
    logits, correct, count = _evaluate_sharded(unchunked, mesh, per_device, variables, xs, ys, w)
    if host and xs.shape[0] != n:
        logits = logits[:n]
    correct = int(correct) if y is not None else 0
    count = int(count)
    return EvalResult(
        logits=logits,
        correct=correct,
        count=count,
        accuracy=correct / count if y is not None and count else float("nan"),
    )
