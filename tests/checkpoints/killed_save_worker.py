"""Saves step 0, then dies (os._exit, no clean-up) in the middle of saving step 1.

Run as `python killed_save_worker.py DIRECTORY`; used by test_model_checkpoints.py.
"""

import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from dkvb_jax import checkpoints  # noqa: E402
from dkvb_jax.config import DKVBConfig  # noqa: E402
from dkvb_jax.model import DKVB  # noqa: E402

config = DKVBConfig(embed_dim=16, num_classes=3, num_codebooks=8, num_keys=16, key_dim=4)
variables = DKVB(config).init(jax.random.key(0), jnp.ones((2, 16)))
checkpoints.save_model(sys.argv[1], config, variables)


def die(*args, **kwargs):
    os._exit(3)  # like a kill: no exception handlers, no finalisation


# The metadata item is written after the arrays have started landing on disk.
for name in ("save", "async_save"):
    setattr(ocp.handlers.JsonCheckpointHandler, name, die)
checkpoints.save_model(sys.argv[1], config, variables)
