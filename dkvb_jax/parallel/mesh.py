"""Device meshes and shardings for data-parallel (and codebook-parallel) DKVB passes.

Two layouts:

- a 1-D ``data`` mesh: examples are split over devices, every variable is replicated. This is the
  right layout whenever the codebooks fit on one device.
- a 2-D ``data x codebook`` mesh: examples are split over ``data`` and the per-codebook variables
  (keys, values, masks, projection) over ``codebook``. At ImageNet scale (256 codebooks x 4096
  keys x (14 + 1000) floats, about 4 GB) this divides the memory of the codebooks by the size of
  the ``codebook`` axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
CODEBOOK = "codebook"

# Variable leaves whose leading axis is the codebook axis, and the projection whose second is.
_CODEBOOK_LEADING = {
    ("params", "values"),
    ("frozen", "keys"),
    ("mask", "search"),
    ("mask", "readout"),
}
_CODEBOOK_SECOND = {("frozen", "projection")}


def _devices(num_devices: int | None, devices) -> list:
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        return devices
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int or None, got {num_devices!r}.")
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices={num_devices} exceeds the {len(devices)} available devices. On CPU, "
            "force more with jax.config.update('jax_num_cpu_devices', n) before JAX starts."
        )
    return devices[:num_devices]


def data_mesh(num_devices: int | None = None, *, devices=None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over the first `num_devices` devices (default: all)."""
    return Mesh(np.asarray(_devices(num_devices, devices)), (DATA,))


def data_codebook_mesh(data: int, codebook: int, *, devices=None) -> Mesh:
    """A 2-D mesh ``('data', 'codebook')`` of shape `[data, codebook]`."""
    for name, value in (("data", data), ("codebook", codebook)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"data_codebook_mesh: {name} must be a positive int, got {value!r}.")
    devs = _devices(data * codebook, devices)
    return Mesh(np.asarray(devs).reshape(data, codebook), (DATA, CODEBOOK))


def data_size(mesh: Mesh) -> int:
    """Number of devices along the ``'data'`` axis."""
    if DATA not in mesh.axis_names:
        raise ValueError(f"mesh must have a '{DATA}' axis, got axes {mesh.axis_names}.")
    return mesh.shape[DATA]


def codebook_size(mesh: Mesh) -> int:
    """Number of devices along the ``'codebook'`` axis (1 when the mesh has none)."""
    return mesh.shape[CODEBOOK] if CODEBOOK in mesh.axis_names else 1


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Sharding that splits axis `batch_axis` over ``'data'`` (replicated over ``'codebook'``)."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def variables_shardings(variables: dict, mesh: Mesh, *, shard_codebooks: bool | None = None):
    """Shardings for a DKVB variables pytree.

    Args:
      variables: the model's variables (``params``, ``frozen``, ``mask`` collections).
      mesh: a mesh from :func:`data_mesh` or :func:`data_codebook_mesh`.
      shard_codebooks: split the per-codebook leaves over ``'codebook'``; defaults to True
        exactly when the mesh has a ``'codebook'`` axis of size > 1.

    Returns:
      A pytree of :class:`NamedSharding` with the structure of `variables`. Decoder and learned
      splitter weights are always replicated.
    """
    size = codebook_size(mesh)
    if shard_codebooks is None:
        shard_codebooks = size > 1
    if shard_codebooks and CODEBOOK not in mesh.axis_names:
        raise ValueError(
            f"shard_codebooks=True needs a mesh with a '{CODEBOOK}' axis (data_codebook_mesh), "
            f"got axes {mesh.axis_names}."
        )

    def spec(path, leaf):
        key = _path_key(path)[-2:]
        if shard_codebooks and key in _CODEBOOK_LEADING | _CODEBOOK_SECOND:
            axis = 1 if key in _CODEBOOK_SECOND else 0
            if leaf.shape[axis] % size:
                raise ValueError(
                    f"cannot shard {'/'.join(key)} of shape {tuple(leaf.shape)} over {size} "
                    f"'{CODEBOOK}' devices: num_codebooks={leaf.shape[axis]} must be divisible "
                    "by the codebook axis size. Pick a mesh whose codebook axis divides it."
                )
            return NamedSharding(mesh, P(*([None] * axis), CODEBOOK))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(spec, variables)


def place_variables(variables: dict, mesh: Mesh, *, shard_codebooks: bool | None = None) -> dict:
    """Puts `variables` on `mesh`: replicated, or codebook-sharded (see :func:`variables_shardings`)."""
    return jax.device_put(
        variables, variables_shardings(variables, mesh, shard_codebooks=shard_codebooks)
    )


def pad_rows(x: np.ndarray | jax.Array, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads `x [n, ...]` to a multiple of `multiple` rows, repeating row 0 (always a valid input).

    Returns:
      The padded host array `[m, ...]` and a bool `[m]` that is False on padding rows.
    """
    x = np.asarray(x)
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot shard an empty batch (0 rows).")
    m = max(1, math.ceil(n / multiple)) * multiple
    if m > n:
        x = np.concatenate([x, np.broadcast_to(x[:1], (m - n, *x.shape[1:]))], axis=0)
    return x, np.arange(m) < n


def shard_batch(
    x: np.ndarray | jax.Array,
    mesh: Mesh,
    *,
    multiple: int | None = None,
    valid: np.ndarray | jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Pads `x [n, ...]` to a multiple of the data-axis size and splits it over ``'data'``.

    Args:
      x: host or device array with the examples on axis 0, or a global array already split
        over ``'data'`` by :func:`dkvb_jax.parallel.distributed.to_global` (used as it is).
      mesh: the device mesh.
      multiple: pad to a multiple of this instead (must be divisible by the data-axis size).
      valid: optional bool `[n]`; rows where it is False count as padding.

    Returns:
      The sharded array `[m, ...]` and its validity bool `[m]` (same sharding); padding rows
      must be masked out of any statistic.
    """
    size = data_size(mesh)
    multiple = size if multiple is None else multiple
    if multiple % size:
        raise ValueError(f"multiple={multiple} must be divisible by the data-axis size {size}.")
    sharding = batch_sharding(mesh)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # A multi-host global array: its rows are already laid out over the data axis.
        if x.shape[0] % size:
            raise ValueError(
                f"global array rows {x.shape[0]} must be divisible by the data-axis size {size}."
            )
        if valid is None:
            valid = jax.jit(lambda: jnp.ones((x.shape[0],), bool), out_shardings=sharding)()
        return x, valid
    padded, pad_valid = pad_rows(x, multiple)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (np.shape(x)[0],):
            raise ValueError(f"valid must have shape [n={np.shape(x)[0]}], got {valid.shape}.")
        pad_valid[: len(valid)] &= valid
    return jax.device_put(padded, sharding), jax.device_put(pad_valid, sharding)
