"""Rows of a data pass, on one device or split over a mesh: checks, real rows, placement.

Every data pass of :mod:`dkvb_jax.training` takes `mesh=None` (one device) or a mesh with a
``'data'`` axis (:mod:`dkvb_jax.parallel.mesh`) and a row mask `valid` `[n]` (False on padding
rows, as from :func:`dkvb_jax.parallel.distributed.global_batch`). These helpers give each pass
the same checks and the same meaning of `valid` with and without a mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dkvb_jax import _validation
from dkvb_jax.errors import InputError, InputTypeError
from dkvb_jax.parallel import mesh as mesh_lib


def is_host_readable(a) -> bool:
    """False for a multi-host global array, whose rows live partly on other processes."""
    return getattr(a, "is_fully_addressable", True)


def check_embeddings(x, embed_dim: int, mesh: Mesh | None, *, name: str = "embeddings") -> None:
    """The core's input check; a multi-host global array is checked shard by shard, since each
    process can only read its own rows, and needs the mesh it is laid out on."""
    if is_host_readable(x):
        _validation.check_embeddings(x, embed_dim, name=name, allow_tokens=False)
        return
    if mesh is None:
        raise InputError(
            f"{name} is a multi-host global array: pass the mesh it is split over as mesh=."
        )
    for shard in x.addressable_shards:
        _validation.check_embeddings(shard.data, embed_dim, name=name, allow_tokens=False)


def check_valid(valid, n: int):
    """Checks the row mask `valid` is bool `[n]`; returns it (a host array unless it is a jax one).

    Raises:
      TypeError: `valid` is not boolean.
      ValueError: `valid` is not `[n]`.
    """
    if not isinstance(valid, jax.Array):
        valid = np.asarray(valid)
    if valid.dtype != bool:
        raise InputTypeError(
            f"valid must be a bool array marking the real rows (e.g. from global_batch), got "
            f"dtype {valid.dtype}."
        )
    if tuple(valid.shape) != (n,):
        raise InputError(f"valid must have shape [n={n}] (one flag per row), got {valid.shape}.")
    return valid


def real_rows(valid, mesh: Mesh | None, *arrays) -> tuple:
    """The rows of `arrays` (each `[n, ...]`) where `valid` `[n]` is True, in their order.

    Training shuffles and batches its rows, so padding rows (such as the copies of example 0
    that :func:`dkvb_jax.parallel.distributed.global_batch` appends) are removed rather than
    weighted: what follows then sees exactly the real rows, with or without a mesh. Host data is
    selected on the host; a multi-host global array by a gather that replicates the real rows on
    every device of `mesh`, after which every process holds all of them.

    Returns:
      The selected arrays `[n_valid, ...]` as host arrays, in a tuple (`arrays` unchanged when
      `valid` is None and they are host data).

    Raises:
      TypeError: `valid` is not boolean.
      ValueError: `valid` is not `[n]`, marks no row, or is None for a multi-host array.
    """
    if valid is None:
        if all(map(is_host_readable, arrays)):
            return arrays
        raise InputError(
            "a multi-host global array needs valid= (the validity from global_batch; all True "
            "if it has no padding rows), so that its rows can be gathered for shuffling."
        )
    valid = check_valid(valid, arrays[0].shape[0])
    arrays = (valid, *arrays)
    if all(map(is_host_readable, arrays)):
        keep, *host = (np.asarray(a) for a in arrays)
        count, selected = int(keep.sum()), tuple(a[keep] for a in host)
    else:
        count = int(jax.jit(jnp.sum)(valid))

        @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
        def gather(v, *a):
            rows = jnp.nonzero(v, size=count)[0]
            return tuple(b[rows] for b in a)

        selected = tuple(np.asarray(a.addressable_data(0)) for a in gather(*arrays))
    if count == 0:
        raise InputError("valid marks no row as real: there is nothing to train on.")
    return selected


def place(x, mesh: Mesh | None) -> jax.Array:
    """`x [n, ...]` on the default device, or padded and split over ``'data'`` (`[m, ...]`,
    padding rows repeat row 0 and follow the `n` real ones)."""
    if mesh is None:
        return jnp.asarray(x)
    return mesh_lib.shard_batch(x, mesh)[0]


def replicate(tree, mesh: Mesh | None):
    """`tree` unchanged without a mesh, else a full copy on every device of `mesh`."""
    return tree if mesh is None else jax.device_put(tree, mesh_lib.replicated(mesh))


def pad_to_mesh(mesh: Mesh, *arrays) -> tuple[jax.Array, ...]:
    """Pads each `[n, ...]` array to a multiple of the data-axis size with zeros (jittable).

    Padding rows must carry weight 0 in whatever follows; a global array's rows already divide.
    """
    n = arrays[0].shape[0]
    pad = -n % mesh_lib.data_size(mesh)
    if not pad:
        return arrays
    return tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays)
