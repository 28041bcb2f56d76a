"""Multi-host set-up: `jax.distributed` initialisation, per-process data slices, global arrays.

On a pod or a multi-GPU cluster every process runs the same program. Each one reads only its own
contiguous slice of the examples (:func:`process_slice`), and the slices are assembled into one
global array split over the ``'data'`` axis (:func:`to_global`), which every data pass of
:mod:`dkvb_jax.training` takes as it is (``mesh=...``). With one process this is the ordinary
single-host path, so the same code runs on a laptop and on a pod.

Results back on the host: an array split over the devices of several processes (per-row codes,
`evaluate(...).logits`, codebook-sharded values) is not in any one process's memory, and
`np.asarray` on it raises ("Fetching value for `jax.Array` that spans non-addressable devices").
:func:`to_host` returns its full value on every process through
`jax.experimental.multihost_utils.process_allgather`; like any collective, every process must
call it, in the same order. Arrays replicated on every device (the usage histogram, scalar
counts) convert with `np.asarray` as they are, and :func:`to_host` passes them through::

    distributed.initialize()                      # before any other JAX call
    mesh = parallel.data_mesh()
    gx, valid, gy = distributed.global_batch(x, mesh, labels=y)
    result = training.evaluate(model, variables, gx, gy, mesh=mesh, valid=valid)
    logits = distributed.to_host(result.logits)[distributed.to_host(valid)]
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dkvb_jax.data.sharding import resolve_process
from dkvb_jax.parallel import mesh as mesh_lib

_ENV_COORDINATOR = "DKVB_COORDINATOR_ADDRESS"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    enabled: bool | None = None,
    **kwargs,
) -> bool:
    """Calls `jax.distributed.initialize` when multi-host execution is requested.

    It is requested by `enabled=True` (cluster auto-detection on TPU pods, SLURM, ...), by a
    `coordinator_address`, or by the ``DKVB_COORDINATOR_ADDRESS`` environment variable (with
    ``DKVB_NUM_PROCESSES`` and ``DKVB_PROCESS_ID``). Must run before any other JAX call.
    Calling it again is a no-op.

    Returns:
      True when JAX runs distributed after the call.
    """
    if jax.distributed.is_initialized():
        return True
    if coordinator_address is None and os.environ.get(_ENV_COORDINATOR):
        coordinator_address = os.environ[_ENV_COORDINATOR]
        num_processes = num_processes or int(os.environ["DKVB_NUM_PROCESSES"])
        process_id = process_id if process_id is not None else int(os.environ["DKVB_PROCESS_ID"])
    if enabled is None:
        enabled = coordinator_address is not None
    if not enabled:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )
    return True


def process_slice(
    num_examples: int,
    *,
    multiple: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """This process's contiguous share of `num_examples`, padded so all shares are equal.

    The global row count is padded to a multiple of `process_count * multiple` (default
    `multiple`: this process's device count, so the share splits evenly over local devices).

    Returns:
      int64 example indices `[share]` (padding rows point at example 0) and bool validity
      `[share]`; across all processes every example appears exactly once as a valid row.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}.")
    index, count = resolve_process(process_index, process_count)
    multiple = jax.local_device_count() if multiple is None else multiple
    share = math.ceil(num_examples / (count * multiple)) * multiple
    rows = np.arange(index * share, (index + 1) * share, dtype=np.int64)
    valid = rows < num_examples
    return np.where(valid, rows, 0), valid


def to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles each process's rows `[share, ...]` into one global array split over ``'data'``.

    Process `i`'s rows become rows `[i * share, (i + 1) * share)` of the global array (the
    layout of :func:`process_slice`), so the global array is the padded dataset in order.
    """
    local = np.asarray(local)
    sharding = mesh_lib.batch_sharding(mesh)
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def global_batch(
    x: np.ndarray, mesh: Mesh, *, labels: np.ndarray | None = None
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Reads this process's slice of `x [n, ...]` (all hosts see the same `x`, e.g. a memmap)
    and assembles global arrays.

    Returns:
      The global padded examples `[m, ...]`, their validity `[m]` and labels `[m]` (or None),
      all split over ``'data'``; pass `valid` on to the data-parallel functions.
    """
    multiple = mesh_lib.data_size(mesh) // jax.process_count()
    idx, valid = process_slice(len(x), multiple=max(multiple, 1))
    gx = to_global(np.asarray(x)[idx], mesh)
    gl = None if labels is None else to_global(np.asarray(labels)[idx], mesh)
    return gx, to_global(valid, mesh), gl


def to_host(tree):
    """NumPy copies of every array of `tree`, also of arrays split over several processes.

    Arrays this process can read whole (single-process, or replicated on every device) are
    copied directly; global arrays split over other processes' devices are gathered with
    `multihost_utils.process_allgather`, a collective: call it on every process alike.

    Returns:
      `tree` with each array leaf replaced by its full global value as an `np.ndarray`.
    """

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return np.asarray(leaf.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(one, tree)
