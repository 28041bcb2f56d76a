"""Device meshes and shardings, and multi-host input assembly (:mod:`.distributed`).

The data passes themselves live with their algorithms and take `mesh=` (keyword-only; None runs
on one device): :func:`dkvb_jax.training.compute_codes`, :func:`~dkvb_jax.training.key_usage`,
:func:`~dkvb_jax.training.usage_from_codes`, :func:`~dkvb_jax.training.evaluate`,
:func:`~dkvb_jax.training.fit_keys` and :func:`~dkvb_jax.training.train_values`.
"""

from dkvb_jax.parallel.mesh import (
    CODEBOOK,
    DATA,
    batch_sharding,
    codebook_size,
    data_codebook_mesh,
    data_mesh,
    data_size,
    pad_rows,
    place_variables,
    replicated,
    shard_batch,
    variables_shardings,
)

__all__ = [
    "CODEBOOK",
    "DATA",
    "batch_sharding",
    "codebook_size",
    "data_codebook_mesh",
    "data_mesh",
    "data_size",
    "pad_rows",
    "place_variables",
    "replicated",
    "shard_batch",
    "variables_shardings",
]
