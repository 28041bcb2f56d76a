"""Durable models: orbax checkpoints of a DKVB model and its audit trail, resumable training."""

from dkvb_jax.checkpoints._orbax import CheckpointError
from dkvb_jax.checkpoints.model import (
    ModelCheckpoint,
    list_steps,
    purge_steps,
    read_meta,
    restore_model,
    save_model,
)
from dkvb_jax.checkpoints.resumable import fit_values

__all__ = [
    "CheckpointError",
    "ModelCheckpoint",
    "fit_values",
    "list_steps",
    "purge_steps",
    "read_meta",
    "restore_model",
    "save_model",
]
