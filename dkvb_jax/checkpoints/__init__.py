"""Durable models: orbax checkpoints of a DKVB model and its audit trail; per-epoch training
checkpoints (:mod:`dkvb_jax.checkpoints.resumable`) for resumable value training."""

from dkvb_jax.checkpoints._orbax import CheckpointError
from dkvb_jax.checkpoints.model import (
    ModelCheckpoint,
    list_steps,
    purge_steps,
    read_meta,
    restore_model,
    save_model,
)

__all__ = [
    "CheckpointError",
    "ModelCheckpoint",
    "list_steps",
    "purge_steps",
    "read_meta",
    "restore_model",
    "save_model",
]
